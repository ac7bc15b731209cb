"""Hot path: ``Publisher.emit()`` against ``Counter.labels().inc()`` and ``Histogram.labels().observe()``.

Per-call costs are measured in one run, over several repetitions (best and median): the calling
thread's CPU time for the emit loop (``time.thread_time``), and the whole process's CPU time
(``time.process_time``) from the first emit until the flusher has written every event to a real Redis
— emit, encode and send, amortised over the events. ``emit()`` is measured in its dict form
(``emit(type, {fields})``) and as a declared positional emitter (``Publisher.declare``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.aggregator.metrics import CONTAINER_BUCKETS
from shared.events.publisher import Publisher

logger = logging.getLogger(__name__)

POOL, STATUS = "pool-a", "success"


@dataclass
class Runs:
    """Seconds per call, one value per repetition; ``paired``: ``Counter.labels().inc()`` per call
    timed right before each repetition (the machine's load changes over a benchmark's minutes, so
    each ratio is taken against its neighbour)."""

    runs: list[float]
    paired: list[float] | None = None

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def ratios(self) -> list[float] | None:
        return None if self.paired is None else [r / b for r, b in zip(self.runs, self.paired, strict=True)]


@dataclass
class HotPathResult:
    n: int
    reps: int
    loop: Runs
    counter_inc: Runs
    counter_child_inc: Runs
    histogram_observe: Runs
    emit_idle: Runs  # dict form, flusher asleep
    declared_idle: Runs  # declared positional emitter, flusher asleep
    emit_steady: Runs  # dict form, flusher running
    declared_steady: Runs
    emit_wall: Runs
    producer_cpu: Runs  # dict form, steady state, the whole process until Redis has every event
    producer_cpu_declared: Runs
    events_per_entry: float
    burst_emit: Runs
    burst_producer_cpu: Runs

    def ratio(self, r: Runs) -> float:
        """``r`` against ``Counter.labels().inc()``: the median of the ratios to the baseline timed next
        to each repetition, or medians over the run for rows measured without one."""
        ratios = r.ratios()
        return statistics.median(ratios) if ratios else r.median / self.counter_inc.median

    @property
    def emit_ratio(self) -> float:
        return self.ratio(self.emit_steady)

    @property
    def producer_ratio(self) -> float:
        return self.ratio(self.producer_cpu)


def _time_loop(
    fn: Callable[[int], None], n: int, reps: int, clock: Callable[[], float] = time.thread_time
) -> Runs:
    runs = []
    for _ in range(reps):
        t0 = clock()
        fn(n)
        runs.append((clock() - t0) / n)
    return Runs(runs)


_REGISTRY = CollectorRegistry()
_COUNTER = Counter("bench_paired_total", "Paired baseline", ["pool_id", "status"], registry=_REGISTRY)


def counter_inc(n: int) -> float:
    """Seconds per ``Counter.labels(a, b).inc()``, thread CPU, over ``n`` calls: each repetition's
    neighbour baseline."""
    labels = _COUNTER.labels
    t0 = time.thread_time()
    for _ in range(n):
        labels(POOL, STATUS).inc()
    return (time.thread_time() - t0) / n


def measure_baselines(n: int, reps: int) -> dict[str, Runs]:
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


def _loop(pub: Publisher, declared: bool) -> Callable[[int], None]:
    """``k`` events, building the call's arguments each time as a caller does."""
    if declared:
        acquired = pub.declare("container.acquired", "pool_id", "status", "duration_s", "affinity")

        def positional(k: int) -> None:
            for _ in range(k):
                acquired(POOL, STATUS, 0.3, "hit")

        return positional
    emit = pub.emit

    def with_dict(k: int) -> None:
        for _ in range(k):
            emit(
                "container.acquired",
                {"pool_id": POOL, "status": STATUS, "duration_s": 0.3, "affinity": "hit"},
            )

    return with_dict


def measure_emit(
    redis_url: str,
    n: int,
    reps: int,
    chunk: int | None = None,
    pause_s: float = 0.001,
    declared: bool = False,
) -> dict[str, Any]:
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
    thread_runs, wall_runs, total_runs, paired = [], [], [], []
    entries = []
    step = chunk or n
    loop = _loop(pub, declared)
    try:
        for i in range(reps + 1):  # the first repetition warms up and is not counted
            admin.delete(pub.stream)
            base = counter_inc(n)
            sent_entries = pub.sent_entries
            thread_cpu = wall = 0.0
            p0 = time.process_time()
            for _ in range(n // step):
                w0, t0 = time.perf_counter(), time.thread_time()
                loop(step)
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
            thread_runs.append(thread_cpu / done)
            wall_runs.append(wall / done)
            total_runs.append((p1 - p0) / done)
            paired.append(base)
            entries.append((pub.sent_entries - sent_entries) / done)
        dropped = pub.dropped
    finally:
        pub.close(10)
        admin.delete(pub.stream)
        admin.close()
    return {
        "thread_cpu": Runs(thread_runs, paired),
        "wall": Runs(wall_runs, paired),
        "producer_cpu": Runs(total_runs, paired),
        "entries_per_event": sum(entries) / len(entries),
        "dropped": dropped,
    }


def measure_emit_uncontended(
    redis_url: str, n: int, reps: int, chunk: int = 2_000, declared: bool = False
) -> Runs:
    """emit() alone: the flusher, woken by the first event, lingers (an hour) until flush() calls it,
    so it sleeps while a chunk is emitted; each chunk is flushed (untimed) before the next.

    Keeps the buffer small, as in steady state, so the figure is not inflated by a large backlog.
    """
    pub = Publisher(
        redis_url,
        "bench-idle",
        buffer_size=chunk + 10_000,
        heartbeat_interval_s=3600,
        stream_maxlen=10 * n,
        linger_s=3600,
        flush_interval_s=3600,
    )
    admin = redis.Redis.from_url(redis_url, protocol=2)
    runs, paired = [], []
    loop = _loop(pub, declared)
    try:
        for i in range(reps + 1):
            admin.delete(pub.stream)
            base = counter_inc(n)
            spent = 0.0
            for _ in range(n // chunk):
                t0 = time.thread_time()
                loop(chunk)
                spent += time.thread_time() - t0
                if not pub.flush(60):
                    raise RuntimeError("benchmark publisher did not flush within 60 s")
            if i:
                runs.append(spent / (n // chunk * chunk))
                paired.append(base)
        if pub.dropped:
            raise RuntimeError("the benchmark publisher dropped events")
    finally:
        pub.close(10)
        admin.delete(pub.stream)
        admin.close()
    return Runs(runs, paired)


def run(redis_url: str, n: int = 200_000, reps: int = 5) -> HotPathResult:
    baselines = measure_baselines(n, reps)
    steady = measure_emit(redis_url, n, reps, chunk=500)
    steady_declared = measure_emit(redis_url, n, reps, chunk=500, declared=True)
    burst = measure_emit(redis_url, n, reps)
    if steady["dropped"] or burst["dropped"] or steady_declared["dropped"]:
        raise RuntimeError("the benchmark publisher dropped events; results would flatter emit()")
    return HotPathResult(
        n=n,
        reps=reps,
        **baselines,
        emit_idle=measure_emit_uncontended(redis_url, n, reps),
        declared_idle=measure_emit_uncontended(redis_url, n, reps, declared=True),
        emit_steady=steady["thread_cpu"],
        declared_steady=steady_declared["thread_cpu"],
        emit_wall=steady["wall"],
        producer_cpu=steady["producer_cpu"],
        producer_cpu_declared=steady_declared["producer_cpu"],
        events_per_entry=1 / steady["entries_per_event"],
        burst_emit=burst["thread_cpu"],
        burst_producer_cpu=burst["producer_cpu"],
    )
