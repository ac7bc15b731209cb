"""Hot path: ``Publisher.emit()`` against ``Counter.labels().inc()`` and ``Histogram.labels().observe()``.

Per-call costs are measured in one run, as the best of several repetitions: the calling thread's CPU
time for the emit loop (``time.thread_time``), and the whole process's CPU time (``time.process_time``)
from the first emit until the flusher has written every event to a real Redis — emit, encode and send,
amortised over the events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.aggregator.metrics import CONTAINER_BUCKETS
from shared.events.publisher import Publisher

logger = logging.getLogger(__name__)

POOL, STATUS = "pool-a", "success"


@dataclass
class HotPathResult:
    """Seconds per call (best of the repetitions)."""

    n: int
    reps: int
    loop: float
    counter_inc: float
    counter_child_inc: float
    histogram_observe: float
    emit_idle_thread_cpu: float
    emit_thread_cpu: float  # steady state
    emit_wall: float
    producer_cpu_per_event: float
    events_per_entry: float
    burst_emit_thread_cpu: float
    burst_producer_cpu_per_event: float

    @property
    def emit_ratio(self) -> float:
        return self.emit_thread_cpu / self.counter_inc

    @property
    def producer_ratio(self) -> float:
        return self.producer_cpu_per_event / self.counter_inc


def _time_loop(fn, n: int, reps: int, clock=time.thread_time) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        fn(n)
        best = min(best, (clock() - t0) / n)
    return best


def measure_baselines(n: int, reps: int) -> dict[str, float]:
    registry = CollectorRegistry()
    counter = Counter("bench_acquires_total", "Acquires", ["pool_id", "status"], registry=registry)
    hist = Histogram(
        "bench_acquire_duration_seconds",
        "Acquire time",
        ["pool_id", "status"],
        buckets=CONTAINER_BUCKETS,
        registry=registry,
    )
    child = counter.labels(POOL, STATUS)

    def loop(k: int) -> None:
        for _ in range(k):
            pass

    def inc(k: int) -> None:
        labels = counter.labels
        for _ in range(k):
            labels(POOL, STATUS).inc()

    def child_inc(k: int) -> None:
        for _ in range(k):
            child.inc()

    def observe(k: int) -> None:
        labels = hist.labels
        for _ in range(k):
            labels(POOL, STATUS).observe(0.3)

    return {
        "loop": _time_loop(loop, n, reps),
        "counter_inc": _time_loop(inc, n, reps),
        "counter_child_inc": _time_loop(child_inc, n, reps),
        "histogram_observe": _time_loop(observe, n, reps),
    }


def measure_emit(
    redis_url: str, n: int, reps: int, chunk: int | None = None, pause_s: float = 0.001
) -> dict[str, float]:
    """Emit ``n`` events per repetition into a publisher connected to a real Redis; its flusher runs.

    ``chunk=None`` is a burst: all ``n`` back to back, faster than the flusher drains, so a backlog
    builds up (and the garbage collector walks it). With ``chunk`` the loop pauses ``pause_s`` after
    every ``chunk`` events — a high but sustainable rate, the steady state. Thread CPU covers only the
    emit loops; process CPU covers everything from the first emit until Redis has every event.
    """
    pub = Publisher(
        redis_url, "bench", buffer_size=n + 10_000, heartbeat_interval_s=3600, stream_maxlen=10 * n
    )
    admin = redis.Redis.from_url(redis_url, protocol=2)
    best_thread, best_wall, best_total = float("inf"), float("inf"), float("inf")
    entries = []
    step = chunk or n
    try:
        for i in range(reps + 1):  # the first repetition warms up and is not counted
            admin.delete(pub.stream)
            emit = pub.emit
            sent_entries = pub.sent_entries
            thread_cpu = wall = 0.0
            p0 = time.process_time()
            for _ in range(n // step):
                w0, t0 = time.perf_counter(), time.thread_time()
                for _ in range(step):
                    emit(
                        "container.acquired",
                        {"pool_id": POOL, "status": STATUS, "duration_s": 0.3, "affinity": "hit"},
                    )
                thread_cpu += time.thread_time() - t0
                wall += time.perf_counter() - w0
                if chunk:
                    time.sleep(pause_s)
            if not pub.flush(120):
                raise RuntimeError("benchmark publisher did not flush within 120 s")
            p1 = time.process_time()
            if i == 0:
                continue
            done = n // step * step
            best_thread = min(best_thread, thread_cpu / done)
            best_wall = min(best_wall, wall / done)
            best_total = min(best_total, (p1 - p0) / done)
            entries.append((pub.sent_entries - sent_entries) / done)
        dropped = pub.dropped
    finally:
        pub.close(10)
        admin.delete(pub.stream)
        admin.close()
    return {
        "thread_cpu": best_thread,
        "wall": best_wall,
        "producer_cpu": best_total,
        "entries_per_event": sum(entries) / len(entries),
        "dropped": dropped,
    }


def measure_emit_uncontended(redis_url: str, n: int, reps: int, chunk: int = 2_000) -> float:
    """emit() alone: the flusher sleeps while a chunk is emitted and is flushed (untimed) between chunks.

    Keeps the buffer small, as in steady state, so the figure is not inflated by a large backlog.
    """
    pub = Publisher(
        redis_url,
        "bench-idle",
        buffer_size=chunk + 10_000,
        heartbeat_interval_s=3600,
        stream_maxlen=10 * n,
        flush_interval_s=3600,
    )
    admin = redis.Redis.from_url(redis_url, protocol=2)
    best = float("inf")
    try:
        for i in range(reps + 1):
            admin.delete(pub.stream)
            emit = pub.emit
            spent = 0.0
            for _ in range(n // chunk):
                t0 = time.thread_time()
                for _ in range(chunk):
                    emit(
                        "container.acquired",
                        {"pool_id": POOL, "status": STATUS, "duration_s": 0.3, "affinity": "hit"},
                    )
                spent += time.thread_time() - t0
                if not pub.flush(60):
                    raise RuntimeError("benchmark publisher did not flush within 60 s")
            if i:
                best = min(best, spent / (n // chunk * chunk))
        if pub.dropped:
            raise RuntimeError("the benchmark publisher dropped events")
    finally:
        pub.close(10)
        admin.delete(pub.stream)
        admin.close()
    return best


def run(redis_url: str, n: int = 200_000, reps: int = 5) -> HotPathResult:
    baselines = measure_baselines(n, reps)
    steady = measure_emit(redis_url, n, reps, chunk=500)
    burst = measure_emit(redis_url, n, reps)
    if steady["dropped"] or burst["dropped"]:
        raise RuntimeError("the benchmark publisher dropped events; results would flatter emit()")
    idle = measure_emit_uncontended(redis_url, n, reps)
    return HotPathResult(
        n=n,
        reps=reps,
        **baselines,
        emit_idle_thread_cpu=idle,
        emit_thread_cpu=steady["thread_cpu"],
        emit_wall=steady["wall"],
        producer_cpu_per_event=steady["producer_cpu"],
        events_per_entry=1 / steady["entries_per_event"],
        burst_emit_thread_cpu=burst["thread_cpu"],
        burst_producer_cpu_per_event=burst["producer_cpu"],
    )
