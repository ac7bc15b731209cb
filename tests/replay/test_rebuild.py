"""Offline rebuild (``aggregator --rebuild``): a fresh checkpoint in the consumer's format, with progress."""

from __future__ import annotations

import io
from pathlib import Path

import msgpack
import redis
from prometheus_client import CollectorRegistry, generate_latest

from services.aggregator.checkpoint import CHECKPOINT_VERSION, mapping_fingerprint
from services.aggregator.consumer import Consumer
from services.aggregator.exposition import StateCollector
from services.aggregator.rebuild import rebuild
from services.aggregator.settings import AggregatorSettings
from services.embedded import free_port
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import checkpoint_key, stream_key
from tests.support.expo import parse, value
from tests.support.procs import boilerhouse, wait_http

from .history import API, BASE_S, HISTORY, acquired

AT = BASE_S + 200.0


def _render(consumer: Consumer) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(consumer.snapshot, clock=lambda: AT))
    return generate_latest(registry).decode()


def _caught_up(client: redis.Redis, settings: AggregatorSettings) -> Consumer:
    consumer = Consumer(client, settings)
    consumer.setup()
    while consumer.poll_once():
        pass
    return consumer


def _group(client: redis.Redis, name: str) -> dict[str, object]:
    return next(g for g in client.xinfo_groups(stream_key(0)) if g["name"] == name.encode())


def test_rebuild_writes_the_checkpoint_the_consumer_restores(
    history: int, redis_url: str, redis_client: redis.Redis
) -> None:
    settings = AggregatorSettings(redis_url=redis_url, block_ms=10)
    # a stale checkpoint from an old mapping: the live consumer would refuse it
    redis_client.set(checkpoint_key(0, "aggregator"), msgpack.packb({"v": 1, "mapping": [], "state": {}}))
    err = io.StringIO()
    [result] = rebuild(redis_client, settings, stream=err, progress_delay_s=0)
    assert (result.partition, result.entries, result.events, result.position) == (
        0,
        15,
        29,
        "1764201700000-0",
    )
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("rebuild partition 0: [##                            ]   6.7% 1/15 entries, ")
    assert lines[-1].startswith(
        "rebuild partition 0: [##############################] 100.0% 15/15 entries, "
    )

    meta = msgpack.unpackb(redis_client.hget(checkpoint_key(0, "aggregator"), "meta"), raw=False)
    mapping = msgpack.unpackb(redis_client.hget(checkpoint_key(0, "aggregator"), "mapping"), raw=False)
    assert (meta["v"], mapping) == (CHECKPOINT_VERSION, mapping_fingerprint())
    assert meta["positions"] == {"0": "1764201700000-0"}
    assert meta["fields"] == redis_client.hlen(
        checkpoint_key(0, "aggregator")
    )  # complete: the stale one is gone
    group = _group(redis_client, "aggregator")
    assert (group["last-delivered-id"], group["lag"], group["pending"]) == (b"1764201700000-0", 0, 0)

    restored = Consumer(redis_client, settings)
    restored.setup()
    assert restored.poll_once() == 0  # nothing left to read: the checkpoint covers the stream
    fresh = _caught_up(redis_client, settings.with_(group="fresh"))
    assert fresh.applied_entries == len(HISTORY)
    assert _render(restored) == _render(fresh)

    # new events after the rebuild are folded by the live consumer on top of the checkpoint
    redis_client.xadd(
        stream_key(0),
        {ENTRY_FIELD: encode_batch(API, [{**acquired(24, "failure", 2.5, "miss"), "ts": BASE_S + 110.0}])},
        id=f"{(BASE_S + 110) * 1000}-0",
    )
    assert restored.poll_once() == 1
    assert fresh.poll_once() == 1
    assert _render(restored) == _render(fresh)
    assert (
        value(
            parse(_render(restored)),
            "boilerhouse_container_acquire_duration_seconds_count",
            pool_id="web",
            status="failure",
        )
        == 1
    )


def test_rebuild_of_a_trimmed_stream_counts_the_trimmed_history_as_a_live_consumer_does(
    history: int, redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xtrim(stream_key(0), minid=f"{(BASE_S + 30) * 1000}-0", approximate=False)
    settings = AggregatorSettings(redis_url=redis_url, block_ms=10)
    rebuild(redis_client, settings, show_progress=False)
    restored = Consumer(redis_client, settings)
    restored.setup()
    fresh = _caught_up(redis_client, settings.with_(group="fresh"))
    assert restored.snapshot().counters["events_lost_total"] == {("trimmed",): 12}
    assert _render(restored) == _render(fresh)


def test_rebuild_of_an_empty_bus(redis_url: str, redis_client: redis.Redis) -> None:
    [result] = rebuild(redis_client, AggregatorSettings(redis_url=redis_url), show_progress=False)
    assert (result.entries, result.position) == (0, None)
    assert _group(redis_client, "aggregator")["last-delivered-id"] == b"0-0"


def test_aggregator_rebuild_command_serves_the_rebuilt_state(
    history: int, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    proc = boilerhouse(
        ["aggregator", "--rebuild", "--port", str(port)],
        tmp_path,
        "aggregator",
        env={"BOILERHOUSE_REDIS_URL": redis_url},
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
        samples = parse(wait_http(f"http://127.0.0.1:{port}/metrics", proc=proc).text)
    finally:
        proc.stop()
    assert "rebuild: partition 0: 15 entries, 29 events folded in " in proc.output()
    assert "checkpoint at 1764201700000-0" in proc.output()
    assert (
        value(
            samples, "boilerhouse_container_acquire_duration_seconds_count", pool_id="web", status="timeout"
        )
        == 2
    )
    assert value(samples, "boilerhouse_aggregator_dead_letters_total", reason="undecodable") == 1
