"""End-to-end CPU per event: producers + Redis + aggregator, every process counted, against doing the
same in-process with prometheus_client.

*Ours*: two producer processes (``benchmarks.e2e_producer``) publish claims (``container.acquired``)
through the real Publisher; a real ``boilerhouse aggregator`` process folds them (histogram, affinity
counter, self-metrics), checkpoints and acknowledges. Counted: each producer's CPU from its first emit
until Redis has every event (its own startup is not), Redis's CPU (its own accounting) and the
aggregator process's CPU (all threads, ``/proc``) from before the first event until the stream is
folded and acknowledged.

*In-process*: the same facts applied where they happen, ``Histogram.labels(pool, status).observe(d)``
and ``Counter.labels(pool).inc()`` per claim (hit or miss counter), in the calling thread.
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

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.aggregator.metrics import CONTAINER_BUCKETS
from shared.events.streams import stream_key

from .procs import ROOT, AggregatorProcess, cpu_s, redis_cpu_s, wait_folded

PRODUCERS = 2
POOLS = [f"pool-{i}" for i in range(5)]


def in_process(n: int, reps: int) -> list[float]:
    """CPU seconds per claim, applied in-process with prometheus_client."""
    registry = CollectorRegistry()
    hist = Histogram(
        "acquire_seconds", "a", ["pool_id", "status"], buckets=CONTAINER_BUCKETS, registry=registry
    )
    hits = Counter("hits_total", "h", ["pool_id"], registry=registry)
    misses = Counter("misses_total", "m", ["pool_id"], registry=registry)
    runs = []
    for _ in range(reps):
        t0 = time.process_time()
        for i in range(n):
            pool = POOLS[i % 5]
            hist.labels(pool, "success").observe((i % 37) / 10)
            (hits if i % 3 else misses).labels(pool).inc()
        runs.append((time.process_time() - t0) / n)
    return runs


@dataclass
class Split:
    """CPU seconds per event, by process."""

    producers: float
    redis: float
    aggregator: float

    @property
    def total(self) -> float:
        return self.producers + self.redis + self.aggregator


@dataclass
class EndToEnd:
    events: int
    baseline: list[float]
    runs: dict[str, list[Split]] = field(default_factory=dict)

    def median_total(self, form: str) -> float:
        return statistics.median(s.total for s in self.runs[form])

    def best_total(self, form: str) -> float:
        return min(s.total for s in self.runs[form])

    def median_split(self, form: str) -> Split:
        runs = self.runs[form]
        return Split(
            statistics.median(s.producers for s in runs),
            statistics.median(s.redis for s in runs),
            statistics.median(s.aggregator for s in runs),
        )

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline)

    def ratio(self, form: str) -> float:
        """Median over the repetitions of the run's total against the in-process baseline timed
        right before it (the machine's load changes over a benchmark's minutes)."""
        return statistics.median(s.total / b for s, b in zip(self.runs[form], self.baseline, strict=True))


def one_run(
    client: redis.Redis, url: str, agg: AggregatorProcess, group: str, n: int, form: str, tmp: Path
) -> Split:
    per = n // PRODUCERS
    outs = [tmp / f"e2e-{i}.json" for i in range(PRODUCERS)]
    a0, r0 = cpu_s(agg.pid), redis_cpu_s(client)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.e2e_producer", url, str(per), form, str(out)], cwd=ROOT
        )
        for out in outs
    ]
    for p in procs:
        if p.wait(timeout=300) != 0:
            raise RuntimeError("e2e producer failed")
    wait_folded(client, stream_key(0), group)
    a1, r1 = cpu_s(agg.pid), redis_cpu_s(client)
    produced = sum(json.loads(out.read_text())["cpu_s"] for out in outs)
    events = per * PRODUCERS
    # Redis also served the producers' start-up, close and the benchmark's own polling: counted in.
    return Split(produced / events, (r1 - r0) / events, (a1 - a0) / events)


def run(
    redis_url: str, n: int = 400_000, reps: int = 5, forms: tuple[str, ...] = ("dict", "declared")
) -> EndToEnd:
    result = EndToEnd(n, [])
    client = redis.Redis.from_url(redis_url, protocol=2)
    client.flushall()
    group = "e2e"
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            AggregatorProcess(redis_url, Path(tmp), {"BOILERHOUSE_CONSUMER_GROUP": group}) as agg,
        ):
            for _ in range(reps):  # alternate the forms: the machine's load hits both alike
                result.baseline += in_process(n // 4, 1)
                for form in forms:
                    result.runs.setdefault(form, []).append(
                        one_run(client, redis_url, agg, group, n, form, Path(tmp))
                    )
    finally:
        client.flushall()
        client.close()
    return result
