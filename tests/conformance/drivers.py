"""Language drivers: each publishes a case's emit steps with its own publisher (Python in-process, TypeScript via node)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import redis

from shared.events.publisher import Publisher
from tests.conformance.cases import REPO, Case, entry_fields

TS_DIR = REPO / "clients" / "typescript"
TS_DRIVER = TS_DIR / "dist" / "conformance" / "driver.js"

#: How long a flush or a clean close may take before the driver fails the case.
FLUSH_TIMEOUT_S = 10.0


class Driver(Protocol):
    name: str

    def run(self, case: Case, redis_url: str, workdir: Path) -> None:
        """Carry out the case's steps against ``redis_url``; raise AssertionError on failure."""


class PythonDriver:
    """The reference publisher (shared/events/publisher.py), in this process."""

    name = "python"

    def run(self, case: Case, redis_url: str, workdir: Path) -> None:
        pubs: dict[str, Publisher] = {}
        done: set[str] = set()

        def pub(name: str) -> Publisher:
            if name not in pubs:
                o = case.sources[name]
                kwargs: dict[str, Any] = {
                    k: o[k] for k in ("partitions", "buffer_size", "batch_size", "flush_interval_s") if k in o
                }
                pubs[name] = Publisher(
                    redis_url,
                    o["service"],
                    version=o["version"],
                    heartbeat_interval_s=o["heartbeat_interval_s"],
                    **kwargs,
                )
            return pubs[name]

        def abandon(name: str) -> None:
            p = pub(name)
            assert p.flush(FLUSH_TIMEOUT_S), f"source {name}: flush timed out"
            # Stop like a crashed process after its last write: no source.stopped.
            p._stop.set()
            p._wake()
            p._thread.join(FLUSH_TIMEOUT_S)
            p._writer.close()
            done.add(name)

        try:
            for step in case.steps:
                if "emit" in step:
                    p = pub(step.get("source", "main"))
                    for _ in range(step.get("repeat", 1)):
                        p.emit(step["emit"], dict(step.get("fields", {})))  # the publisher owns the dict
                elif "flush" in step:
                    assert pub(step["flush"]).flush(FLUSH_TIMEOUT_S), (
                        f"source {step['flush']}: flush timed out"
                    )
                elif "close" in step:
                    p = pub(step["close"])
                    p.close(FLUSH_TIMEOUT_S)
                    assert p.buffered() == 0, f"source {step['close']}: close left events unwritten"
                    done.add(step["close"])
                elif "abandon" in step:
                    abandon(step["abandon"])
                elif "sleep_s" in step:
                    time.sleep(step["sleep_s"])
            for name in pubs:
                if name not in done:
                    abandon(name)
        finally:
            for p in pubs.values():
                p._stop.set()
                p._wake()


class TypeScriptDriver:
    """clients/typescript's Publisher, run by ``node dist/conformance/driver.js`` (build it first)."""

    name = "typescript"

    def run(self, case: Case, redis_url: str, workdir: Path) -> None:
        node = shutil.which("node")
        assert node, "node is not installed (scripts/install-system-deps.sh installs it)"
        assert TS_DRIVER.exists(), f"{TS_DRIVER} missing: run `npm ci && npm run build` in {TS_DIR}"
        result = subprocess.run(
            [node, str(TS_DRIVER), "--redis-url", redis_url, str(case.path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "NODE_OPTIONS": ""},
        )
        (workdir / "typescript-driver.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, (
            f"TypeScript driver exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )


class RawWriter:
    """Raw cases: the harness itself XADDs exactly the entries the case gives."""

    name = "raw"

    def run(self, case: Case, redis_url: str, workdir: Path) -> None:
        client = redis.Redis.from_url(redis_url, protocol=2)
        try:
            for step in case.steps:
                if "sleep_s" in step:
                    time.sleep(step["sleep_s"])
                    continue
                xadd = step["xadd"]
                fields = entry_fields(xadd)
                for _ in range(xadd.get("times", 1)):
                    client.xadd(xadd.get("stream", "boilerhouse:events:{0}"), fields)  # type: ignore[arg-type]
        finally:
            client.close()


DRIVERS: dict[str, Driver] = {d.name: d for d in (PythonDriver(), TypeScriptDriver(), RawWriter())}

_build_lock = threading.Lock()
_built = False


def build_typescript() -> None:
    """``npm ci`` when node_modules is missing or older than the lockfile, then ``npm run build``."""
    global _built  # noqa: PLW0603
    with _build_lock:
        if _built:
            return
        npm = shutil.which("npm")
        assert npm, "npm is not installed (scripts/install-system-deps.sh installs it)"
        stamp = TS_DIR / "node_modules" / ".installed-stamp"  # the Makefile's too
        lock = TS_DIR / "package-lock.json"
        if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
            _npm([npm, "ci", "--no-audit", "--no-fund"])
            stamp.touch()
        _npm([npm, "run", "--silent", "build"])
        _built = True


def _npm(cmd: list[str]) -> None:
    result = subprocess.run(cmd, cwd=TS_DIR, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd[1:])} failed:\n{result.stdout}\n{result.stderr}"
