"""Entries trimmed before the aggregator read them are counted exactly as lost (reason="trimmed")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgpack
import pytest
import redis

from shared.events.codec import ENTRY_FIELD
from shared.events.publisher import Publisher
from tests.reliability.support import (
    PREFIX,
    STREAM,
    Aggregator,
    by_label,
    group_info,
    total,
    wait_caught_up,
)
from tests.support.wait import wait_until


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, _, n = entry_id.partition(b"-")
    return int(ms), int(n)


def _events_in(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
    return sum(len(msgpack.unpackb(fields[ENTRY_FIELD], raw=False)["events"]) for _, fields in entries)


def _emit(pubs: list[Publisher], n: int) -> int:
    for i in range(n):
        for k, pub in enumerate(pubs):
            pub.emit("container.health_check_failed", {"pool_id": f"pool-{k}"})
            if i % 7 == 0:
                pub.emit(
                    "pool.state",
                    {
                        "pool_id": f"pool-{k}",
                        "workload_id": "w",
                        "size": i % 9,
                        "available": 1,
                        "borrowed": 0,
                        "pending": 0,
                        "min_size": 1,
                        "max_size": 9,
                        "target_size": 3,
                        "affinity_reservations": 0,
                    },
                )
    for pub in pubs:
        assert pub.flush(10)
    return n * len(pubs) + len(pubs) * len(range(0, n, 7))


def _publisher(redis_url: str, name: str) -> Publisher:
    return Publisher(redis_url, name, batch_size=15, flush_interval_s=0.005, heartbeat_interval_s=10**6)


@pytest.mark.parametrize("checkpointed", [True, False], ids=["checkpointed", "all-pending"])
@pytest.mark.timeout(120)
def test_entries_trimmed_while_the_aggregator_is_down(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, checkpointed: bool
) -> None:
    """Phase A is read (and checkpointed, or left pending); the aggregator is killed; phase B is written
    and its first half trimmed (with everything before it); phase C shows every source again."""
    interval = "0.1" if checkpointed else "100000"
    agg = Aggregator(tmp_path, redis_url, env={"BOILERHOUSE_CHECKPOINT_INTERVAL_S": interval}).start()
    pubs = [_publisher(redis_url, f"trim{k}") for k in range(3)]
    emitted = len(pubs)  # source.started
    try:
        emitted += _emit(pubs, 200)
        last_a = redis_client.xinfo_stream(STREAM)["last-generated-id"]
        wait_until(
            lambda: group_info(redis_client, "aggregator")["last-delivered-id"] == last_a, "phase A read"
        )
        if checkpointed:
            wait_caught_up(redis_client, "aggregator")
        else:
            assert group_info(redis_client, "aggregator")["pending"] > 0
        agg.kill()

        late = _publisher(redis_url, "late")  # starts while the aggregator is down; its start is trimmed
        pubs.append(late)
        emitted += 1 + _emit(pubs, 200)
        phase_b = redis_client.xrange(STREAM, min=b"(" + last_a)
        cut = phase_b[len(phase_b) // 2][0]
        gone = redis_client.xrange(STREAM, max=b"(" + cut)
        unread = gone if not checkpointed else [e for e in gone if _id(e[0]) > _id(last_a)]
        expected = _events_in(unread)
        assert redis_client.xtrim(STREAM, minid=cut, approximate=False) == len(gone)

        emitted += _emit(pubs, 50)
        for pub in pubs:
            pub.close(10)
        emitted += len(pubs)  # source.stopped

        agg.env["BOILERHOUSE_CHECKPOINT_INTERVAL_S"] = "0.1"
        agg.start()
        wait_caught_up(redis_client, "aggregator")
        samples = agg.samples()
    finally:
        agg.stop()
        for pub in pubs:
            pub.close(1)
    lost = by_label(samples, PREFIX + "events_lost_total", "reason")
    assert expected > 100
    assert lost == {"trimmed": float(expected)}
    applied = total(samples, PREFIX + "aggregator_events_applied_total")
    assert applied == emitted - expected
    assert total(samples, PREFIX + "aggregator_dead_letters_total") == 0


@pytest.mark.timeout(120)
def test_entries_trimmed_while_the_aggregator_lags(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The aggregator is frozen (SIGSTOP) while producers write and the stream is trimmed past its
    position; after SIGCONT the running consumer detects the hole and counts it exactly."""
    agg = Aggregator(tmp_path, redis_url).start()
    pubs = [_publisher(redis_url, f"lag{k}") for k in range(3)]
    emitted = len(pubs)
    try:
        emitted += _emit(pubs, 100)
        wait_caught_up(redis_client, "aggregator")
        assert agg.proc is not None
        os.kill(agg.proc.pid, signal.SIGSTOP)
        try:
            emitted += _emit(pubs, 200)
            # A read the aggregator was blocked in may have been answered (delivered) before it froze.
            delivered = group_info(redis_client, "aggregator")["last-delivered-id"]
            backlog = redis_client.xrange(STREAM, min=b"(" + delivered)
            cut = backlog[len(backlog) // 2][0]
            expected = _events_in(backlog[: len(backlog) // 2])
            redis_client.xtrim(STREAM, minid=cut, approximate=False)
            emitted += _emit(pubs, 50)
        finally:
            os.kill(agg.proc.pid, signal.SIGCONT)
        for pub in pubs:
            pub.close(10)
        emitted += len(pubs)
        wait_caught_up(redis_client, "aggregator")
        samples = agg.samples()
    finally:
        agg.stop()
        for pub in pubs:
            pub.close(1)
    assert expected > 100
    assert by_label(samples, PREFIX + "events_lost_total", "reason") == {"trimmed": float(expected)}
    assert total(samples, PREFIX + "aggregator_events_applied_total") == emitted - expected
