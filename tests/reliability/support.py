"""Helpers for the reliability tests: aggregator and producer processes, catching up, comparing expositions."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import redis

from services.embedded import EmbeddedRedis, free_port
from shared.events.streams import checkpoint_key, stream_key
from tests.support.expo import Samples, parse
from tests.support.procs import Proc, boilerhouse, wait_http
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
PREFIX = "boilerhouse_"
STREAM = stream_key(0)

#: Self-metrics that depend on the aggregator process or the moment of the scrape, not on the events.
RUNTIME_METRICS = frozenset(
    PREFIX + n
    for n in (
        "aggregator_consumer_lag_entries",
        "aggregator_pending_entries",
        "aggregator_checkpoint_age_seconds",
        "aggregator_checkpoints_total",
        "aggregator_checkpoint_bytes_total",
        "aggregator_newest_event_age_seconds",
        "aggregator_stalled_seconds",
    )
)
#: prometheus_client's process/GC/platform collectors.
RUNTIME_PREFIXES = ("process_", "python_")

#: Settings that make gauges independent of wall time (sources never expire during a test).
STABLE_ENV = {
    "BOILERHOUSE_SOURCE_TTL_S": "1000000000",
    "BOILERHOUSE_SOURCE_FORGET_S": "1000000000",
    "PYTHONPATH": str(REPO),
}


class Aggregator:
    """``boilerhouse aggregator`` as a child process on a free port (stopped or killed by pid)."""

    def __init__(
        self, workdir: Path, redis_url: str, name: str = "aggregator", env: dict[str, str] | None = None
    ) -> None:
        self.workdir, self.redis_url, self.name = workdir, redis_url, name
        self.env = {**STABLE_ENV, "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.2", **(env or {})}
        self.port = free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Aggregator:
        self.proc = boilerhouse(
            ["aggregator", "--redis-url", self.redis_url, "--port", str(self.port)],
            self.workdir,
            self.name,
            self.env,
        )
        self.starts += 1
        if wait:
            wait_http(self.url + "/readyz", timeout=30, proc=self.proc)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.popen.poll() is None

    def samples(self) -> Samples:
        if self.proc is not None:  # started without waiting: it may still be binding its port
            wait_http(self.url + "/readyz", timeout=30, proc=self.proc)
        r = httpx.get(self.url + "/metrics", timeout=30)
        r.raise_for_status()
        return parse(r.text)

    def output(self) -> str:
        return (self.workdir / f"{self.name}.log").read_text(errors="replace")


def producer(workdir: Path, redis_url: str, name: str, *args: str) -> tuple[Proc, Path]:
    """Start ``tests/reliability/producer.py``; returns the process and the path of its JSON report."""
    report = workdir / f"{name}.json"
    cmd = [
        sys.executable,
        "-m",
        "tests.reliability.producer",
        "--redis-url",
        redis_url,
        "--report",
        str(report),
        *args,
    ]
    return Proc(cmd, workdir, name, {"PYTHONPATH": str(REPO)}), report


def wait_exit(proc: Proc, timeout: float) -> None:
    try:
        code = proc.popen.wait(timeout=timeout)
    except Exception as exc:
        raise AssertionError(f"{proc.name} still running after {timeout}s:\n{proc.output()[-3000:]}") from exc
    assert code == 0, f"{proc.name} exited with {code}:\n{proc.output()[-3000:]}"


def read_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def group_info(client: redis.Redis, group: str, stream: str = STREAM) -> dict[str, Any]:
    for g in client.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return dict(g)
    raise AssertionError(f"no consumer group {group!r} on {stream}")


def wait_caught_up(client: redis.Redis, group: str, timeout: float = 60.0, stream: str = STREAM) -> None:
    """Until ``group`` has been delivered the stream's last entry and acknowledged everything."""

    def where() -> dict[str, Any]:
        try:
            last = client.xinfo_stream(stream)["last-generated-id"]
            return {**group_info(client, group, stream), "stream last": last}
        except (AssertionError, redis.ResponseError) as exc:  # stream or group not (yet again) there
            return {"error": str(exc)}

    wait_for(
        where,
        f"group {group} caught up",
        within_s=timeout,
        accept=lambda i: i.get("last-delivered-id") == i.get("stream last") and i.get("pending") == 0,
    )


def comparable(samples: Samples) -> Samples:
    """Samples that depend only on the events folded (runtime self-metrics removed)."""
    return {
        k: v
        for k, v in samples.items()
        if k[0] not in RUNTIME_METRICS and not k[0].startswith(RUNTIME_PREFIXES)
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n == name:
            out[dict(ls)[label]] = out.get(dict(ls)[label], 0) + v
    return out


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a live process (VmHWM from /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def diff(a: Samples, b: Samples, limit: int = 20) -> str:
    keys = sorted(set(a) | set(b), key=lambda k: (k[0], sorted(k[1])))
    lines = [f"{k[0]}{dict(k[1])}: {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)]
    return f"{len(lines)} samples differ:\n" + "\n".join(lines[:limit])


def private_redis(workdir: Path, aof: bool = True) -> EmbeddedRedis:
    """A redis-server of the test's own (to kill and restart); AOF with fsync on every write."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./scripts/install-system-deps.sh")
    extra = ("--appendfsync", "always") if aof else ()
    return EmbeddedRedis(workdir=workdir, binary=binary, allow_fake=False, appendonly=aof, extra_args=extra)


def checkpoint_meta(
    client: redis.Redis, group: str = "aggregator", partition: int = 0
) -> dict[str, Any] | None:
    """The ``meta`` field of a partition's checkpoint hash (format, position, save time), or None."""
    raw = client.hget(checkpoint_key(partition, group), "meta")
    return None if raw is None else dict(msgpack.unpackb(raw, raw=False, strict_map_key=False))


def checkpoint_sources(client: redis.Redis, group: str = "aggregator", partition: int = 0) -> set[str]:
    """The sources a partition's checkpoint remembers (its ``s…`` fields)."""
    return {k[1:].decode() for k in client.hkeys(checkpoint_key(partition, group)) if k[:1] == b"s"}
