"""Run ``boilerhouse`` subcommands (or any command) as real processes; stop them by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from services.embedded import free_port, stop_pid

BOILERHOUSE = [sys.executable, "-m", "services.cli"]


class Proc:
    """A child process with a pidfile and its output in a log file."""

    def __init__(
        self, args: Sequence[str], workdir: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.pidfile = workdir / f"{name}.pid"
        full_env = {**os.environ, **(env or {})}
        with open(self.log, "ab") as log:
            self.popen = subprocess.Popen(
                list(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
            )
        self.pidfile.write_text(str(self.popen.pid))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        stop_pid(int(self.pidfile.read_text()), timeout=timeout, sig=sig)
        return self.popen.wait(timeout=5)

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL, timeout=5)


def boilerhouse(args: Sequence[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([*BOILERHOUSE, *args], workdir, name, env)


def wait_http(url: str, timeout: float = 20.0, proc: Proc | None = None, status: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == status:
                return r
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    extra = f"\n{proc.output()[-3000:]}" if proc else ""
    raise AssertionError(f"{url} not answering {status} after {timeout}s (last: {last!r}){extra}")


class ThreadServer:
    """An ASGI app served by a real uvicorn in a background thread on a free port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
