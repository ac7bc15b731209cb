"""Aggregator throughput from a real Redis stream: our design against the naive one, in the same run,
and the two halves of the difference on their own.

*Ours*: events batched 500 per stream entry (version 2 batches, as the Publisher writes them); the
real ``Consumer`` reads them with XREADGROUP, decodes, validates, dedupes and folds them into
plain-data state, checkpoints and acknowledges.

*Naive*: one event per stream entry (msgpack of the event map), read with XREADGROUP and applied by
updating prometheus_client metric objects (``Counter.labels(...).inc()``, ``Histogram.labels(...)
.observe()``, ``Gauge.labels(...).set()``) per event, then XACK. Same event mix, same Redis.

*Batching alone*: the naive design reading our batched entries (500 events each, same decoder).
*Fold alone*: our Consumer reading one event per entry (1000 entries per XREADGROUP, as the naive one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.aggregator.consumer import Consumer
from services.aggregator.metrics import METRICS, Group
from services.aggregator.settings import AggregatorSettings
from shared.events.codec import ENTRY_FIELD, decode_batch, encode_batch

from .workload import enveloped, make_events

SOURCES = 8
BATCH = 500


@dataclass
class Run:
    events: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s


@dataclass
class ThroughputResult:
    ours: list[Run]
    naive: list[Run]
    batching_alone: list[Run]
    fold_alone: list[Run]

    @staticmethod
    def best(runs: list[Run]) -> Run:
        return max(runs, key=lambda r: r.rate)

    @property
    def best_ours(self) -> Run:
        return max(self.ours, key=lambda r: r.rate)

    @property
    def best_naive(self) -> Run:
        return max(self.naive, key=lambda r: r.rate)

    @property
    def ratio(self) -> float:
        return self.best_ours.rate / self.best_naive.rate


def preload_batched(client: redis.Redis, stream: str, n: int, batch: int = BATCH) -> None:
    """``n`` events from ``SOURCES`` sources, ``batch`` per entry (version 2, as the Publisher writes
    them), interleaved like live producers."""
    per_src = n // SOURCES
    sources = [
        (f"bench-{i}:host:{1000 + i}:cafe", enveloped(make_events(per_src, seed=i))) for i in range(SOURCES)
    ]
    for _, events in sources:
        for ev in events:
            del ev["seq"]  # numbered by the batch header
    pipe = client.pipeline(transaction=False)
    for start in range(0, per_src, batch):
        for src, events in sources:
            pipe.xadd(stream, {ENTRY_FIELD: encode_batch(src, events[start : start + batch], start + 1)})
        if len(pipe) >= 256:
            pipe.execute()
    pipe.execute()


def run_ours(client: redis.Redis, redis_url: str, n: int, group: str, read_count: int = 200) -> Run:
    settings = AggregatorSettings(redis_url=redis_url, group=group, block_ms=10, read_count=read_count)
    consumer = Consumer(client, settings)
    consumer.setup()
    applied = consumer.parts[0].state.counters["aggregator_events_applied_total"]
    w0, c0 = time.perf_counter(), time.process_time()
    while sum(applied.values()) < n:
        if not consumer.poll_once() and time.perf_counter() - w0 > 300:
            raise RuntimeError("benchmark consumer stalled")
        applied = consumer.parts[0].state.counters["aggregator_events_applied_total"]
    consumer.checkpoint_all(force=True)
    w1, c1 = time.perf_counter(), time.process_time()
    dead = consumer.parts[0].state.counters["aggregator_dead_letters_total"]
    if dead or sum(applied.values()) != n:
        raise RuntimeError(f"benchmark data was not applied cleanly: {dead}, {sum(applied.values())} != {n}")
    return Run(n, w1 - w0, c1 - c0)


# ---- the naive design -----------------------------------------------------------------------------


#: (metric, field) of the pool gauges, from the mapping (the naive design applies the same rule).
POOL_GAUGES = [
    (m.name, d.value)
    for m in METRICS
    for d in m.drives
    if d.event == "pool.state" and m.labels == ("pool_id", "workload_id")
]


class NaiveMetrics:
    """The seed's metrics as prometheus_client objects, updated once per event."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.m: dict[str, Any] = {}
        for d in METRICS:
            if not d.events or d.group in (Group.PIPELINE, Group.SYSTEM):
                continue
            name = "boilerhouse_" + d.name
            if d.kind == "counter":
                self.m[d.name] = Counter(name, d.help, d.labels, registry=self.registry)
            elif d.kind == "histogram":
                self.m[d.name] = Histogram(name, d.help, d.labels, buckets=d.buckets, registry=self.registry)
            else:
                self.m[d.name] = Gauge(name, d.help, d.labels, registry=self.registry)
        self.applied = Counter(
            "boilerhouse_aggregator_events_applied_total", "applied", ["type"], registry=self.registry
        )

    def apply(self, ev: dict[str, Any]) -> None:
        m, t = self.m, ev["type"]
        if t == "http.request":
            labels = (ev["method"], ev["path"], str(ev["status"]))
            m["http_request_duration_seconds"].labels(*labels).observe(ev["duration_s"])
            m["http_requests_total"].labels(*labels).inc()
        elif t == "container.acquired":
            m["container_acquire_duration_seconds"].labels(ev["pool_id"], ev["status"]).observe(
                ev["duration_s"]
            )
            name = "affinity_hits_total" if ev["affinity"] == "hit" else "affinity_misses_total"
            m[name].labels(ev["pool_id"]).inc()
        elif t == "container.released":
            m["container_release_duration_seconds"].labels(ev["pool_id"], ev["status"]).observe(
                ev["duration_s"]
            )
        elif t == "container.created":
            m["container_create_duration_seconds"].labels(ev["pool_id"], ev["workload_id"]).observe(
                ev["duration_s"]
            )
            m["container_operations_total"].labels(ev["pool_id"], "create", ev["status"]).inc()
        elif t == "container.destroyed":
            m["container_destroy_duration_seconds"].labels(ev["pool_id"]).observe(ev["duration_s"])
            m["container_operations_total"].labels(ev["pool_id"], "destroy", ev["status"]).inc()
        elif t == "container.wiped":
            m["container_wipe_duration_seconds"].labels(ev["pool_id"]).observe(ev["duration_s"])
            m["container_operations_total"].labels(ev["pool_id"], "wipe", ev["status"]).inc()
        elif t == "sync.finished":
            w, d = ev["workload_id"], ev["direction"]
            m["sync_operations_total"].labels(w, d, ev["status"]).inc()
            m["sync_duration_seconds"].labels(w, d, ev["mode"]).observe(ev["duration_s"])
            m["sync_bytes_transferred_total"].labels(w, d).inc(ev["bytes"])
            m["sync_files_transferred_total"].labels(w, d).inc(ev["files"])
            if ev["status"] != "success":
                m["sync_errors_total"].labels(w, ev.get("error_type") or "rclone_error").inc()
        elif t == "pool.state":
            key = (ev["pool_id"], ev["workload_id"])
            for name, field in POOL_GAUGES:
                m[name].labels(*key).set(ev[field])
            m["affinity_reservations"].labels(ev["pool_id"]).set(ev["affinity_reservations"])
        elif t == "sync.state":
            w = ev["workload_id"]
            m["sync_concurrent_operations"].labels(w).set(ev["running"])
            m["sync_queue_length"].labels(w).set(ev["queued"])
            m["sync_periodic_jobs_active"].labels(w).set(ev["periodic_jobs"])
        self.applied.labels(t).inc()


def preload_naive(client: redis.Redis, stream: str, n: int) -> None:
    events = enveloped(make_events(n, seed=99))
    pipe = client.pipeline(transaction=False)
    for ev in events:
        pipe.xadd(stream, {b"e": msgpack.packb(ev, use_bin_type=True)})
        if len(pipe) >= 1000:
            pipe.execute()
    pipe.execute()


def run_naive(client: redis.Redis, stream: str, n: int, group: str) -> Run:
    client.xgroup_create(stream, group, id="0", mkstream=True)
    metrics = NaiveMetrics()
    decode = msgspec.msgpack.Decoder().decode  # the same decoder as ours: compare designs, not libraries
    done = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while done < n:
        reply = client.xreadgroup(group, "naive", {stream: ">"}, count=1000, block=10)
        for _, entries in reply or []:
            ids = []
            for entry_id, fields in entries:
                metrics.apply(decode(fields[b"e"]))
                ids.append(entry_id)
            client.xack(stream, group, *ids)
            done += len(ids)
    w1, c1 = time.perf_counter(), time.process_time()
    return Run(n, w1 - w0, c1 - c0)


def run_batched_naive(client: redis.Redis, stream: str, n: int, group: str) -> Run:
    """The naive design's prometheus_client objects, fed our batched entries (same decoder)."""
    client.xgroup_create(stream, group, id="0", mkstream=True)
    metrics = NaiveMetrics()
    done = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while done < n:
        reply = client.xreadgroup(group, "naive", {stream: ">"}, count=200, block=10)
        for _, entries in reply or []:
            ids = []
            for entry_id, fields in entries:
                for ev in decode_batch(fields[ENTRY_FIELD]).events:
                    metrics.apply(ev)
                    done += 1
                ids.append(entry_id)
            client.xack(stream, group, *ids)
    w1, c1 = time.perf_counter(), time.process_time()
    return Run(n, w1 - w0, c1 - c0)


def run(redis_url: str, n_ours: int = 1_000_000, n_naive: int = 200_000, reps: int = 3) -> ThroughputResult:
    client = redis.Redis.from_url(redis_url, protocol=2)
    result = ThroughputResult([], [], [], [])
    try:
        stream = "boilerhouse:events:{0}"
        naive_stream = "naive:events"
        for i in range(reps):
            client.flushall()
            preload_batched(client, stream, n_ours)
            result.ours.append(run_ours(client, redis_url, n_ours, f"bench-{i}"))
            client.flushall()
            preload_naive(client, naive_stream, n_naive)
            result.naive.append(run_naive(client, naive_stream, n_naive, f"naive-{i}"))
            client.flushall()
            preload_batched(client, stream, n_naive)
            result.batching_alone.append(run_batched_naive(client, stream, n_naive, f"batched-{i}"))
            client.flushall()
            preload_batched(client, stream, n_naive, batch=1)
            result.fold_alone.append(run_ours(client, redis_url, n_naive, f"single-{i}", read_count=1000))
        client.flushall()
    finally:
        client.close()
    return result
