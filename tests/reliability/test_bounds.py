"""Bounded memory and writes: checkpoint bytes grow with what changed, and a soak where sources come and
go past the forget horizon keeps the aggregator's memory flat.

Real redis-server; the soak runs the real ``boilerhouse aggregator`` process for a few minutes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from services.aggregator.consumer import Consumer
from services.aggregator.exposition import StateCollector
from services.aggregator.settings import AggregatorSettings
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import checkpoint_key
from tests.reliability.support import PREFIX, STREAM, Aggregator, total, wait_caught_up
from tests.support.expo import parse

SOURCES = 20_000


def _started(src: str, seq: int = 1) -> dict[str, Any]:
    return {"type": "source.started", "seq": seq, "ts": time.time(), "service": src.split(":", maxsplit=1)[0],
            "version": "1.0", "host": "h", "pid": 1, "start_time_s": 1.0}  # fmt: skip


def _health(seq: int) -> dict[str, Any]:
    return {"type": "container.health_check_failed", "seq": seq, "ts": time.time(), "pool_id": "p"}


def _drain(consumer: Consumer) -> None:
    while consumer.poll_once():
        pass
    consumer.checkpoint_all(force=True)


def _render(consumer: Consumer) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(consumer.snapshot, source_ttl_s=1e9, clock=lambda: 0.0))
    return generate_latest(registry).decode()


@pytest.mark.timeout(180)
def test_checkpoint_bytes_grow_with_what_changed_not_with_what_exists(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Before: every checkpoint rewrote the whole state (45 MB of AOF per 20 s at 300k known sources)."""
    settings = AggregatorSettings(redis_url=redis_url, block_ms=10, checkpoint_interval_s=3600)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(SOURCES):
        pipe.xadd(STREAM, {ENTRY_FIELD: encode_batch(f"job:h:{i}:00", [_started(f"job:h:{i}:00")])})
    pipe.execute()
    consumer = Consumer(redis_client, settings)
    consumer.setup()
    _drain(consumer)
    part = consumer.parts[0]
    first = part.checkpoint_bytes
    assert redis_client.hlen(checkpoint_key(0, "aggregator")) > SOURCES  # a field per source, and more
    # One live source keeps working: 2 events per checkpoint, 10 checkpoints.
    for n in range(10):
        redis_client.xadd(
            STREAM, {ENTRY_FIELD: encode_batch("api:h:1:00", [_health(2 * n + 1), _health(2 * n + 2)])}
        )
        _drain(consumer)
    per_checkpoint = (part.checkpoint_bytes - first) / 10
    assert per_checkpoint < 2_000, per_checkpoint  # the changed series, the source and meta: not 20k sources
    assert per_checkpoint < first / 500, (per_checkpoint, first)
    # The incremental hash restores exactly the state a fresh fold of the stream gives.
    restored = Consumer(redis_client, settings)
    restored.setup()
    fresh = Consumer(redis_client, settings.with_(group="fresh"))
    fresh.setup()
    _drain(fresh)
    assert _render(restored) == _render(fresh)
    samples = parse(_render(consumer))
    assert total(samples, PREFIX + "container_health_check_failures_total") == 20
    # The self-metrics report what was written: 11 checkpoints, their bytes.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(consumer.snapshot, partitions=consumer.readings))
    own = parse(generate_latest(registry).decode())
    assert total(own, PREFIX + "aggregator_checkpoints_total") == 11
    assert total(own, PREFIX + "aggregator_checkpoint_bytes_total") == part.checkpoint_bytes


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_soak_sources_coming_and_going_keep_memory_and_the_checkpoint_flat(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Three minutes of short-lived sources (each a few entries, a third of them never stopping), with a
    10 s forget horizon: every source is eventually forgotten, and memory, the checkpoint's size and the
    per-source structures stop growing once the horizon is reached."""
    duration_s = float(os.environ.get("BOILERHOUSE_SOAK_S", "180"))
    agg = Aggregator(
        tmp_path,
        redis_url,
        env={
            "BOILERHOUSE_SOURCE_FORGET_S": "10",
            "BOILERHOUSE_SOURCE_TTL_S": "2",
            "BOILERHOUSE_RETENTION_S": "30",
        },
    ).start()
    assert agg.proc is not None
    started = time.monotonic()
    rss: list[tuple[float, int]] = []
    fields: list[int] = []
    sent = 0
    life = 0
    try:
        while (elapsed := time.monotonic() - started) < duration_s:
            pipe = redis_client.pipeline(transaction=False)
            for _ in range(20):  # 20 new sources per round, each with three entries
                src = f"job:soak:{life}:00"
                life += 1
                events = [_started(src), _health(2), _health(3)]
                if life % 3:
                    events.append({"type": "source.stopped", "seq": 4, "ts": time.time()})
                pipe.xadd(STREAM, {ENTRY_FIELD: encode_batch(src, events)})
                sent += 2
            pipe.execute()
            if int(elapsed) % 5 == 0 and (not rss or elapsed - rss[-1][0] >= 5):
                rss.append((elapsed, _rss_kib(agg.proc.pid)))
                fields.append(redis_client.hlen(checkpoint_key(0, "aggregator")))
            time.sleep(0.1)
        wait_caught_up(redis_client, "aggregator", timeout=60)
        samples = agg.samples()
    finally:
        agg.stop()
    assert total(samples, PREFIX + "container_health_check_failures_total") == sent
    assert total(samples, PREFIX + "events_lost_total") == 0
    # Past warm-up (the horizon plus its checkpoint), neither memory nor the checkpoint keeps growing.
    settled = [kib for t, kib in rss if t >= duration_s / 3]
    assert max(settled) <= settled[0] * 1.25 + 4096, rss
    later = fields[len(fields) // 3 :]
    assert max(later) <= min(later) * 1.5 + 100, fields
    assert life > 3_000  # many sources came and went
