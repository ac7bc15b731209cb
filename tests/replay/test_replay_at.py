"""``boilerhouse replay --at T``: the /metrics exposition as it was at T, checked against a live fold."""

from __future__ import annotations

import json
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, generate_latest

from services.aggregator.consumer import Consumer
from services.aggregator.exposition import StateCollector
from services.aggregator.settings import AggregatorSettings
from shared.events.streams import stream_key
from tests.support.expo import parse, value

from .conftest import Run
from .history import BASE_S, HISTORY, SYNC, load

INSTANTS = [0, 1, 9, 10, 30, 44, 45, 55, 60, 70, 80, 90, 100, 131]


def _live_exposition(consumer: Consumer, settings: AggregatorSettings, at_s: float) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StateCollector(consumer.snapshot, settings.metrics_prefix, settings.source_ttl_s, clock=lambda: at_s)
    )
    return generate_latest(registry).decode()


def test_replay_at_equals_the_live_aggregator_at_every_instant(
    history: int, run: Run, redis_url: str, redis_client: redis.Redis
) -> None:
    """A real Consumer fed the history up to T (under another key prefix) renders what replay --at T prints."""
    settings = AggregatorSettings(redis_url=redis_url, key_prefix="live", block_ms=10)
    consumer = Consumer(redis_client, settings)
    consumer.setup()
    previous = None
    for t in INSTANTS:
        load(redis_client, prefix="live", after_s=previous, until_s=t)
        previous = t
        while consumer.poll_once():
            pass
        code, out, err = run("replay", "--at", str(BASE_S + t))
        assert (code, err) == (0, "")
        assert out == _live_exposition(consumer, settings, BASE_S + t), f"at offset {t}s"
    assert consumer.applied_entries == len(HISTORY)


def test_replay_at_the_exhaustion(history: int, run: Run) -> None:
    code, out, _ = run("replay", "--at", "2025-11-27T00:01:00Z")
    assert code == 0
    s = parse(out)
    assert value(s, "boilerhouse_pool_available", pool_id="web", workload_id="echo") == 0
    assert value(s, "boilerhouse_pool_borrowed", pool_id="web", workload_id="echo") == 3
    assert (
        value(s, "boilerhouse_container_acquire_duration_seconds_count", pool_id="web", status="success") == 3
    )
    assert (
        value(s, "boilerhouse_container_acquire_duration_seconds_count", pool_id="web", status="timeout") == 2
    )
    assert (
        value(
            s,
            "boilerhouse_container_acquire_duration_seconds_bucket",
            pool_id="web",
            status="timeout",
            le="20.0",
        )
        == 0
    )
    assert (
        value(
            s,
            "boilerhouse_http_requests_total",
            method="POST",
            path="/api/v1/tenants/{tenant_id}/claim",
            status="503",
        )
        == 2
    )
    assert value(s, "boilerhouse_aggregator_dead_letters_total", reason="invalid_field") == 1
    assert value(s, "boilerhouse_aggregator_dead_letters_total", reason="undecodable") is None  # at 00:01:20
    # the sync worker was last heard of at 00:00:25, more than the 30 s source TTL before: no sync gauges
    assert value(s, "boilerhouse_sync_concurrent_operations", workload_id="echo") is None
    assert value(s, "boilerhouse_aggregator_live_sources") == 1
    assert value(s, "boilerhouse_info", version="1.4.2") == 1


def test_replay_at_a_stream_id_includes_that_entry_only(history: int, run: Run) -> None:
    _, before, _ = run("replay", "--at", "1764201629999-0")
    _, at, _ = run("replay", "--at", "1764201630000-0")
    assert value(parse(before), "boilerhouse_pool_available", pool_id="web", workload_id="echo") == 1
    assert value(parse(at), "boilerhouse_pool_available", pool_id="web", workload_id="echo") == 0


def test_replay_before_the_first_entry_has_no_event_metrics(history: int, run: Run) -> None:
    _, out, _ = run("replay", "--at", str(BASE_S - 60))
    s = parse(out)
    assert value(s, "boilerhouse_aggregator_live_sources") == 0
    assert not [k for k in s if k[0].startswith("boilerhouse_pool_")]


def test_counters_start_at_the_oldest_retained_entry(
    history: int, run: Run, redis_url: str, redis_client: redis.Redis
) -> None:
    """After trimming, counters count from the first retained entry, and the trimmed history of sources
    that were already running shows up as events_lost_total{reason="trimmed"}, as the live aggregator
    counts it."""
    redis_client.xtrim(stream_key(0), minid=f"{(BASE_S + 30) * 1000}-0", approximate=False)
    _, out, _ = run("replay", "--at", "2025-11-27T00:02:00Z")
    s = parse(out)
    # acquisitions at 00:00:30 and 00:01:40 remain; 00:00:10 and 00:00:20 were trimmed
    assert (
        value(s, "boilerhouse_container_acquire_duration_seconds_count", pool_id="web", status="success") == 2
    )
    # api: first retained seq is 9 (8 trimmed); sync-worker: first retained seq is 5 (4 trimmed)
    assert value(s, "boilerhouse_events_lost_total", reason="trimmed") == 12
    assert value(s, "boilerhouse_events_lost_total", reason="seq_gap") is None
    # gauges are snapshots: right as soon as one is retained
    assert value(s, "boilerhouse_pool_available", pool_id="web", workload_id="echo") == 0
    # source.started of the api was trimmed: its version is unknown, so no boilerhouse_info series
    assert not [k for k in s if k[0] == "boilerhouse_info"]
    # a live aggregator started on the trimmed stream counts the same loss, with the same reason
    consumer = Consumer(redis_client, AggregatorSettings(redis_url=redis_url, block_ms=10))
    consumer.setup()
    while consumer.poll_once():
        pass
    assert consumer.snapshot().counters["events_lost_total"] == {("trimmed",): 12}


def test_replay_at_openmetrics_format_and_file(history: int, run: Run, tmp_path: Path) -> None:
    _, text, _ = run("replay", "--at", "2025-11-27T00:01:00Z", "--format", "openmetrics")
    assert text.endswith("# EOF\n")
    assert 'boilerhouse_pool_available{pool_id="web",workload_id="echo"} 0.0\n' in text
    target = tmp_path / "at.om"
    code, _, _ = run("replay", "--at", "2025-11-27T00:01:00Z", "--openmetrics", str(target))
    assert code == 0
    written = target.read_text()
    assert 'boilerhouse_pool_available{pool_id="web",workload_id="echo"} 0.0 1764201660.0\n' in written
    assert written.endswith("# EOF\n")


def test_two_partitions_replay_like_a_live_aggregator_of_both(
    run: Run, redis_url: str, redis_client: redis.Redis
) -> None:
    """The sync worker writes to partition 1: replay merges the partitions as the aggregator does."""
    load(redis_client, partitions={SYNC: 1})
    load(redis_client, prefix="live", partitions={SYNC: 1})
    settings = AggregatorSettings(redis_url=redis_url, key_prefix="live", partitions=2, block_ms=10)
    consumer = Consumer(redis_client, settings)
    consumer.setup()
    while consumer.poll_once():
        pass
    code, out, _ = run("replay", "--partitions", "2", "--at", str(BASE_S + 131))
    assert code == 0
    assert out == _live_exposition(consumer, settings, BASE_S + 131)
    code, one_partition, _ = run("replay", "--at", str(BASE_S + 131))
    assert (
        value(
            parse(one_partition),
            "boilerhouse_sync_operations_total",
            workload_id="echo",
            direction="download",
            status="success",
        )
        is None
    )
    assert (
        value(
            parse(out),
            "boilerhouse_sync_operations_total",
            workload_id="echo",
            direction="download",
            status="success",
        )
        == 1
    )
    # events of both partitions come out in stream-id order
    code, out, _ = run("events", "range", "--partitions", "2", "--to", "2025-11-27T00:00:25Z", "--json")
    assert [(e["id"], e["partition"], e["type"]) for e in map(json.loads, out.splitlines())] == [
        ("1764201600000-0", 0, "source.started"),
        ("1764201600000-0", 0, "pool.state"),
        ("1764201601000-0", 1, "source.started"),
        ("1764201601000-0", 1, "sync.state"),
        ("1764201610000-0", 0, "container.acquired"),
        ("1764201610000-0", 0, "pool.state"),
        ("1764201610000-0", 0, "http.request"),
        ("1764201620000-0", 0, "container.acquired"),
        ("1764201620000-0", 0, "pool.state"),
        ("1764201620000-0", 0, "http.request"),
        ("1764201625000-0", 1, "sync.finished"),
        ("1764201625000-0", 1, "sync.state"),
    ]
    code, out, _ = run("events", "tail", "--partitions", "2", "-n", "2", "--source", "sync", "--json")
    assert [(e["partition"], e["type"]) for e in map(json.loads, out.splitlines())] == [
        (1, "sync.finished"),
        (1, "source.stopped"),
    ]
