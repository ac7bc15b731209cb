"""The publisher's flusher and batch formats against a real Redis and aggregator: woken by the first
event (no tick), batches of version 2 and 1 counted alike, positional (declared) emitters."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest
import redis

from shared.events.codec import decode_batch
from shared.events.publisher import Publisher
from tests.aggregator.harness import aggregator, wait_applied
from tests.support.expo import value
from tests.support.wait import wait_until

P = "boilerhouse_"
STREAM = "boilerhouse:events:{0}"


def entries(client: redis.Redis) -> list[dict[str, Any]]:
    return [msgpack.unpackb(f[b"b"]) for _, f in client.xrange(STREAM)]


def sleepy(redis_url: str, name: str, **kw: Any) -> Publisher:
    """A publisher whose flusher never wakes by itself: only emit() (or flush/close) can wake it."""
    return Publisher(redis_url, name, heartbeat_interval_s=10**6, flush_interval_s=10**6, **kw)


def test_the_first_event_wakes_the_flusher(redis_url: str, redis_client: redis.Redis) -> None:
    pub = sleepy(redis_url, "woken", linger_s=0.001)
    try:
        wait_until(lambda: len(entries(redis_client)) == 1, "source.started sent without flush()")
        for round_ in range(3):  # the flusher goes back to sleep between rounds, and is woken again
            pub.emit("affinity.evicted", {"pool_id": f"p{round_}"})
            wait_until(lambda r=round_: len(entries(redis_client)) == 2 + r, f"round {round_} sent")
    finally:
        pub.close(2)


def test_threads_emitting_in_bursts_never_leave_events_behind(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Many threads wake one sleeping flusher: a lost wake-up would leave events unsent (this flusher
    has no periodic wake to hide it)."""
    pub = sleepy(redis_url, "bursty", linger_s=0.0005)
    threads, bursts, per_burst = 4, 30, 7
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for _ in range(bursts):
            for _ in range(per_burst):
                pub.emit("affinity.evicted", {"pool_id": "p"})
            wait_until(lambda: not pub.buffered(), "burst sent", within_s=30, poll_s=0.001)

    try:
        workers = [threading.Thread(target=worker) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        total = 1 + threads * bursts * per_burst
        wait_until(lambda: pub.sent_events == total, "every event sent")
        seqs = [ev["seq"] for _, f in redis_client.xrange(STREAM) for ev in decode_batch(f[b"b"]).events]
        assert seqs == list(range(1, total + 1))
    finally:
        pub.close(2)


@pytest.mark.parametrize("version", [1, 2])
def test_both_batch_versions_are_counted_exactly(
    redis_url: str, redis_client: redis.Redis, version: int
) -> None:
    pub = Publisher(
        redis_url, f"v{version}", heartbeat_interval_s=10**6, schema_version=version, batch_size=40
    )
    try:
        for i in range(100):
            pub.emit(
                "container.acquired",
                {"pool_id": "p", "status": "success", "duration_s": i / 100, "affinity": "hit"},
            )
        assert pub.flush(10)
        written = entries(redis_client)
        assert {e["v"] for e in written} == {version} and len(written) >= 3
        if version == 2:
            assert [e["seq"] for e in written] == [
                1 + sum(len(w["events"]) for w in written[:i]) for i in range(len(written))
            ]
            assert all("seq" not in ev for e in written for ev in e["events"])
        else:
            assert all("seq" not in e for e in written)
        for _, fields in redis_client.xrange(STREAM):  # a retried XADD of every entry: all duplicates
            redis_client.xadd(STREAM, fields)
        with aggregator(redis_url) as agg:
            s = wait_applied(agg.url, 101)
            s = agg.samples()
        assert value(s, f"{P}affinity_hits_total", pool_id="p") == 100
        assert value(s, f"{P}aggregator_duplicates_total") == 101
        assert value(s, f"{P}container_acquire_duration_seconds_count", pool_id="p", status="success") == 100
        assert not any(n == f"{P}events_lost_total" for n, _ in s)
    finally:
        pub.close(2)


def test_declared_emitters_send_the_events_the_dict_form_sends(
    redis_url: str, redis_client: redis.Redis
) -> None:
    pub = Publisher(redis_url, "declared", heartbeat_interval_s=10**6)
    acquired = pub.declare("container.acquired", "pool_id", "status", "duration_s", "affinity")
    finished = pub.declare(
        "sync.finished",
        "workload_id",
        "direction",
        "mode",
        "status",
        "duration_s",
        "bytes",
        "files",
        "error_type",
    )
    evicted = pub.declare("affinity.evicted", "pool_id")
    try:
        acquired("web", "success", 0.25, "hit")
        pub.emit(
            "container.acquired",
            {"pool_id": "web", "status": "success", "duration_s": 0.25, "affinity": "hit"},
        )
        acquired(pool_id="web", status="timeout", duration_s=3, affinity="miss")
        finished("w", "upload", "sync", "failure", 2.0, 10, 1, None)
        evicted("web")
        with pytest.raises(TypeError):
            acquired("web", "success", 0.25)  # a wrong call fails like any Python call
        assert pub.flush(10)
        events = [ev for _, f in redis_client.xrange(STREAM) for ev in decode_batch(f[b"b"]).events][1:]
        assert [{k: v for k, v in ev.items() if k not in ("ts", "seq")} for ev in events] == [
            {
                "pool_id": "web",
                "status": "success",
                "duration_s": 0.25,
                "affinity": "hit",
                "type": "container.acquired",
            },
            {
                "pool_id": "web",
                "status": "success",
                "duration_s": 0.25,
                "affinity": "hit",
                "type": "container.acquired",
            },
            {
                "pool_id": "web",
                "status": "timeout",
                "duration_s": 3,
                "affinity": "miss",
                "type": "container.acquired",
            },
            {
                "workload_id": "w",
                "direction": "upload",
                "mode": "sync",
                "status": "failure",
                "duration_s": 2.0,
                "bytes": 10,
                "files": 1,
                "error_type": None,
                "type": "sync.finished",
            },
            {"pool_id": "web", "type": "affinity.evicted"},
        ]
        with aggregator(redis_url) as agg:
            s = wait_applied(agg.url, 6)
        assert value(s, f"{P}affinity_hits_total", pool_id="web") == 2
        assert value(s, f"{P}sync_errors_total", workload_id="w", error_type="rclone_error") == 1
        assert value(s, f"{P}aggregator_dead_letters_total", reason="invalid_field") is None
    finally:
        pub.close(2)


def test_declaring_checks_the_type_and_fields_against_the_schema(redis_url: str) -> None:
    pub = Publisher(redis_url, "checked", heartbeat_interval_s=10**6)
    try:
        with pytest.raises(ValueError, match="unknown event type"):
            pub.declare("container.exploded", "pool_id")
        with pytest.raises(ValueError, match="not distinct fields"):
            pub.declare("affinity.evicted", "pool")
        with pytest.raises(ValueError, match="not distinct fields"):
            pub.declare("affinity.evicted", "pool_id", "pool_id")
        with pytest.raises(ValueError, match="required fields"):
            pub.declare("container.acquired", "pool_id", "status")
        with pytest.raises(ValueError, match="schema_version"):
            Publisher(redis_url, "future", schema_version=3)
    finally:
        pub.close(2)
