"""Freshness: how long after ``emit()`` an event is visible to a scrape, measured with markers.

Two producer processes (``benchmarks.freshness_producer``) emit at a steady rate; every
``MARKER_EVERY``-th event is a marker (``sync.resynced`` with a workload id of its own) whose emit time
the producer records. The real :class:`Consumer` (its own thread, default settings) folds the stream;
after each fold it notes the wall time at which new markers became visible (the fold's lock released:
a scrape from then on shows them). Delay = visible - emitted, same host, same clock.

Configurations: the publisher's default linger (5 ms), and a 50 ms linger, which holds events as the
old fixed 50 ms flush tick did (the first event of a batch waits the full 50 ms, the last none).

Also: an idle publisher's flusher CPU (thread CPU clock), now and with the old 50 ms wake-up cadence.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from services.aggregator.consumer import Consumer
from services.aggregator.settings import AggregatorSettings
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.publisher import Publisher
from shared.events.streams import stream_key

from .procs import ROOT

PRODUCERS = 2
MARKER_EVERY = 100


class _Watched(Consumer):
    """The real consumer, noting when marker series appear (right after the fold that made them)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.visible: dict[str, float] = {}
        self._seen = 0

    def _apply_entries(self, got: Any) -> int:
        n = super()._apply_entries(got)
        now = time.time()
        table = self.parts[0].state.counters["sync_bisync_resync_total"]
        if len(table) > self._seen:
            for (workload,) in list(table)[self._seen :]:
                self.visible[workload] = now
            self._seen = len(table)
        return n


@dataclass
class FreshRun:
    delays: list[float]  # emitted -> visible
    in_redis: list[float]  # emitted -> accepted by Redis (the entry id's time, millisecond resolution)
    events: int
    seconds: float
    producer_cpu_s: float

    def pct(self, p: float) -> float:
        d = sorted(self.delays)
        return d[min(len(d) - 1, int(p * len(d)))]


@dataclass
class FreshResult:
    linger_s: float
    rate: int
    runs: list[FreshRun] = field(default_factory=list)

    def median_of(self, p: float) -> float:
        return statistics.median(r.pct(p) for r in self.runs)

    def median_in_redis(self, p: float) -> float:
        return statistics.median(
            sorted(r.in_redis)[min(len(r.in_redis) - 1, int(p * len(r.in_redis)))] for r in self.runs
        )

    def best_of(self, p: float) -> float:
        return min(r.pct(p) for r in self.runs)

    @property
    def producer_cpu_per_event(self) -> float:
        return statistics.median(r.producer_cpu_s / r.events for r in self.runs)


def one_run(redis_url: str, rate: int, seconds: float, linger_s: float, workdir: Path) -> FreshRun:
    client = redis.Redis.from_url(redis_url, protocol=2)
    client.flushall()  # the previous run's stream, group and checkpoint
    consumer = _Watched(client, AggregatorSettings(redis_url=redis_url, group="fresh"))
    consumer.start()
    try:
        while not consumer.ready.is_set():
            time.sleep(0.01)
        outs = [workdir / f"producer-{i}.json" for i in range(PRODUCERS)]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.freshness_producer",
                    redis_url,
                    str(rate // PRODUCERS),
                    str(seconds),
                    str(linger_s),
                    str(MARKER_EVERY),
                    str(out),
                    f"fresh{i}",
                ],
                cwd=ROOT,
            )
            for i, out in enumerate(outs)
        ]
        for p in procs:
            if p.wait(timeout=seconds + 60) != 0:
                raise RuntimeError("freshness producer failed")
        reports = [json.loads(out.read_text()) for out in outs]
        markers = {name: t for r in reports for name, t in r["markers"]}
        deadline = time.monotonic() + 30
        while len(consumer.visible) < len(markers) and time.monotonic() < deadline:
            time.sleep(0.01)
        missing = set(markers) - set(consumer.visible)
        if missing:
            raise RuntimeError(f"{len(missing)} markers never became visible")
        accepted = _accepted(client, set(markers))
    finally:
        consumer.stop()
        client.close()
    return FreshRun(
        delays=[consumer.visible[name] - t for name, t in markers.items()],
        in_redis=[accepted[name] - t for name, t in markers.items()],
        events=sum(r["events"] for r in reports),
        seconds=seconds,
        producer_cpu_s=sum(r["cpu_s"] for r in reports),
    )


def _accepted(client: redis.Redis, names: set[str]) -> dict[str, float]:
    """When Redis accepted the entry holding each marker (its id's milliseconds)."""
    out: dict[str, float] = {}
    for entry_id, fields in client.xrange(stream_key(0)):
        ms = int(entry_id.split(b"-")[0])
        for ev in decode_batch(fields[ENTRY_FIELD]).events:
            name = ev.get("workload_id") if ev.get("type") == "sync.resynced" else None
            if name in names:
                out[name] = ms / 1000
    return out


def run(
    redis_url: str,
    rate: int = 50_000,
    seconds: float = 4.0,
    reps: int = 5,
    lingers: tuple[float, ...] = (0.005, 0.05),
) -> list[FreshResult]:
    results = [FreshResult(linger, rate) for linger in lingers]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):  # alternate the configurations: the machine's load hits both alike
            for r in results:
                r.runs.append(one_run(redis_url, rate, seconds, r.linger_s, Path(tmp)))
    return results


# ---- idle cost --------------------------------------------------------------------------------------


@dataclass
class IdleResult:
    """Flusher thread CPU seconds per second of idleness, per repetition."""

    now: list[float]
    old_cadence: list[float]


def _flusher_cpu(pub: Publisher) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(pub._thread.ident or 0))


def idle(redis_url: str, seconds: float = 2.0, reps: int = 5) -> IdleResult:
    """Two idle publishers side by side: the default, and one waking every 50 ms as the old tick did."""
    now = Publisher(redis_url, "idle-now", heartbeat_interval_s=5.0)
    old = Publisher(redis_url, "idle-old", heartbeat_interval_s=5.0, linger_s=0.0, flush_interval_s=0.05)
    result = IdleResult([], [])
    try:
        now.flush(5)
        old.flush(5)
        for _ in range(reps):
            a0, b0 = _flusher_cpu(now), _flusher_cpu(old)
            time.sleep(seconds)
            result.now.append((_flusher_cpu(now) - a0) / seconds)
            result.old_cadence.append((_flusher_cpu(old) - b0) / seconds)
    finally:
        now.close(2)
        old.close(2)
    return result


__all__ = ["FreshResult", "IdleResult", "idle", "run"]
