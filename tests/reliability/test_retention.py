"""Retention while running: the stream is trimmed by age without counting read entries as lost; per-source
bookkeeping is forgotten after BOILERHOUSE_SOURCE_FORGET_S, and dedupes old-life batches until then."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import checkpoint_key
from tests.reliability.support import PREFIX, STREAM, Aggregator, by_label, total, wait_caught_up
from tests.support.wait import wait_for, wait_until


def _health(seq: int, ts: float, pool: str = "p") -> dict[str, Any]:
    return {"type": "container.health_check_failed", "seq": seq, "ts": ts, "pool_id": pool}


def _checkpoint(client: redis.Redis) -> dict[str, Any]:
    raw = client.get(checkpoint_key(0, "aggregator"))
    assert raw is not None
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


@pytest.mark.timeout(90)
def test_stream_is_trimmed_by_age_during_a_run_without_counting_loss(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    old_ms = int((time.time() - 3600) * 1000)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(1000):  # an hour old: outside an 8 s replay window
        pipe.xadd(
            STREAM,
            {ENTRY_FIELD: encode_batch("old:h:1:00", [_health(i + 1, old_ms / 1000)])},
            id=f"{old_ms + i}-0",
        )
    pipe.execute()
    agg = Aggregator(tmp_path, redis_url, env={"BOILERHOUSE_RETENTION_S": "8"}).start()
    try:
        wait_caught_up(redis_client, "aggregator")
        for i in range(50):
            redis_client.xadd(
                STREAM, {ENTRY_FIELD: encode_batch("new:h:1:00", [_health(i + 1, time.time())])}
            )
        # Approximate MINID trims whole nodes (100 entries).
        wait_for(
            lambda: redis_client.xlen(STREAM),
            "the stream trimmed by age",
            within_s=30,
            poll_s=0.2,
            accept=lambda n: n <= 50 + 100,
        )
        wait_caught_up(redis_client, "aggregator")
        samples = agg.samples()
    finally:
        agg.stop()
    assert total(samples, PREFIX + "container_health_check_failures_total") == 1050
    assert total(samples, PREFIX + "events_lost_total") == 0
    assert "trimmed" in agg.output()


@pytest.mark.timeout(90)
def test_dead_sources_are_forgotten_after_the_horizon_and_deduped_before(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    t0 = time.time() - 1000
    agg = Aggregator(tmp_path, redis_url, env={"BOILERHOUSE_SOURCE_FORGET_S": "100"}).start()
    try:
        redis_client.xadd(
            STREAM, {ENTRY_FIELD: encode_batch("gone:h:1:00", [_health(s, t0) for s in range(1, 11)])}
        )
        # Another source moves time on by less than the horizon: the old life's repeated batch (a
        # spool file sent twice) is still recognised.
        redis_client.xadd(STREAM, {ENTRY_FIELD: encode_batch("live:h:2:00", [_health(1, t0 + 50)])})
        redis_client.xadd(
            STREAM, {ENTRY_FIELD: encode_batch("gone:h:1:00", [_health(s, t0) for s in range(6, 11)])}
        )
        wait_caught_up(redis_client, "aggregator")
        samples = agg.samples()
        assert total(samples, PREFIX + "aggregator_duplicates_total") == 5
        assert total(samples, PREFIX + "container_health_check_failures_total") == 11
        # Past the horizon (by the producers' clock) the old source's bookkeeping goes, counters stay.
        redis_client.xadd(STREAM, {ENTRY_FIELD: encode_batch("live:h:2:00", [_health(2, t0 + 200)])})
        wait_until(
            lambda: "gone:h:1:00" not in _checkpoint(redis_client)["state"]["last_seq"],
            "the old source forgotten in the checkpoint",
        )
        doc = _checkpoint(redis_client)
        samples = agg.samples()
    finally:
        agg.stop()
    assert set(doc["state"]["last_seq"]) == {"live:h:2:00"}
    assert set(doc["state"]["sources"]) == {"live:h:2:00"}
    assert total(samples, PREFIX + "container_health_check_failures_total") == 12
    assert by_label(samples, PREFIX + "events_lost_total", "reason") == {}
