"""Run ``boilerhouse`` subcommands (or any command) as real processes; stop them by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from services.embedded import free_port, stop_pid

from .wait import wait_for, wait_until

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
    """Until ``url`` answers ``status``; fails at once (with its log) if ``proc`` exits meanwhile."""

    def probe() -> httpx.Response | Exception:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.HTTPError as exc:
            return exc

    def show(last: httpx.Response | Exception) -> str:
        seen = f"HTTP {last.status_code}" if isinstance(last, httpx.Response) else repr(last)
        return seen + (f"\n{proc.output()[-3000:]}" if proc else "")

    got = wait_for(
        probe,
        f"{url} answers {status}",
        within_s=timeout,
        poll_s=0.05,
        show=show,
        accept=lambda r: isinstance(r, httpx.Response) and r.status_code == status,
    )
    assert isinstance(got, httpx.Response)
    return got


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

        def started() -> bool:
            assert self.thread.is_alive(), "uvicorn's thread ended before it started serving"
            return bool(self.server.started)

        wait_until(started, "uvicorn serves", within_s=20, poll_s=0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
