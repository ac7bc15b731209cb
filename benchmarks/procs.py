"""Processes the benchmarks measure: a real ``boilerhouse aggregator``, Redis's CPU, memory from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from services.embedded import free_port, stop_pid
from shared.events.replies import find_group

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (resolution: one clock tick)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def memory(pid: int, key: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """Start ``VmHWM`` again from the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds Redis has used (its own accounting, microsecond resolution)."""
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def wait_folded(client: redis.Redis, stream: str, group: str, timeout: float = 300.0) -> None:
    """Until the group has read and acknowledged (so checkpointed) every entry of ``stream``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            g = find_group(client.xinfo_groups(stream), group)
        except redis.ResponseError:
            g = None
        if g is not None and g.lag == 0 and g.pending == 0:
            return
        time.sleep(0.02)
    raise RuntimeError(f"group {group} did not fold {stream} within {timeout}s")


class AggregatorProcess:
    """``boilerhouse aggregator`` as a child process on a free port; stopped by pid."""

    def __init__(self, redis_url: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"aggregator-{self.port}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    "aggregator",
                    "--redis-url",
                    redis_url,
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def __enter__(self) -> AggregatorProcess:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"aggregator exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("aggregator not ready within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.popen.poll() is None:
            stop_pid(self.pid, timeout=15)
        self.popen.wait(timeout=5)
