"""Changing the partition count P and the shard count N of a running deployment, in the documented
order (docs/scaling.md), on a real cluster: nothing lost, nothing counted twice.

P = 4 partitions consumed by N = 2 shards become P = 8 and N = 3: first every aggregator of the group
is stopped (one of them SIGKILLed, leaving entries it read but never acknowledged), then the group is
started with the new P and N, then the producers are replaced by processes with the new P while the
old ones still run. An unsharded aggregator with P = 8 that ran throughout is the reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.events.bus import Client, RedisSettings, connect
from shared.events.replies import PendingSummary
from shared.events.streams import partition_of, stream_key
from tests.cluster.support import (
    aggregators,
    combined,
    producers,
    same_totals,
    start_all,
    stop_all,
    wait_caught_up,
)
from tests.reliability.support import (
    PREFIX,
    by_label,
    comparable,
    diff,
    producer,
    read_report,
    total,
    wait_exit,
)
from tests.support.cluster import LocalRedisCluster
from tests.support.wait import wait_until


def _src_on(partition: int, partitions: int) -> str:
    """A source id that hashes to ``partition`` of ``partitions``."""
    return next(
        src for n in range(10_000) if partition_of(src := f"first-{n}:host:{n}:cafe", partitions) == partition
    )


def _pending(client: Client, partition: int, consumer: str) -> int:
    summary = PendingSummary.parse(client.xpending(stream_key(partition), "g"))
    return dict(summary.consumers).get(consumer, 0)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_partitions_and_shards_grow_with_the_documented_restart_order(
    redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    url = redis_cluster.url
    client = connect(RedisSettings(url), "tool")
    env = {"BOILERHOUSE_CHECKPOINT_INTERVAL_S": "1"}  # a killed shard leaves read, unacknowledged entries
    old = aggregators(tmp_path, url, "g", 4, shards=2, env=env)
    new = aggregators(tmp_path / "new", url, "g", 8, shards=3)
    (reference,) = aggregators(tmp_path, url, "reference", 8)
    (tmp_path / "new").mkdir()
    first: list = []
    second: list = []
    try:
        start_all([*old, reference])
        # The first producers' 4 sources cover partitions 0-3 of P = 4 (explicit source ids).
        srcs = [_src_on(p, 4) for p in range(4)]
        first = [
            producer(
                tmp_path,
                url,
                f"first{i}",
                "--events",
                "12000",
                "--rate",
                "3000",
                "--partitions",
                "4",
                "--sources",
                "2",
                "--service",
                f"first{i}-",
                "--seed",
                str(i),
                "--src",
                srcs[2 * i],
                "--src",
                srcs[2 * i + 1],
            )
            for i in range(2)
        ]
        # Partition 2 belongs to shard 0 of 2 now and to shard 2 of 3 next: another consumer name.
        wait_until(
            lambda: _pending(client, 2, "shard-0") > 0, "entries shard 0 read and has not acknowledged"
        )
        # 1. Stop every aggregator of the group (a crash counts: its pending entries are taken over).
        old[0].kill()
        old[1].stop()
        # 2. Start the group with the new partition and shard counts.
        start_all(new)
        # 3. Replace the producers: new processes with the new partition count, the old ones still running.
        second = producers(
            tmp_path, url, 2, "--events", "12000", "--rate", "3000", "--partitions", "8", name="second"
        )
        for proc, _ in [*first, *second]:
            wait_exit(proc, timeout=180)
        wait_caught_up(client, "g", 8)
        wait_caught_up(client, "reference", 8)
        parts = [agg.samples() for agg in new]
        ref = reference.samples()
        logs = "".join(agg.output() for agg in new)
    finally:
        stop_all([*old, *new, reference])
        client.close()

    reports = [read_report(path) for _, path in [*first, *second]]
    assert {p for r in reports[2:] for p in r["partitions"]} - set(range(4)), (
        "no new producer used partitions 4-7"
    )
    emitted: dict[str, float] = {}
    for report in reports:
        for type_, n in report["emitted"].items():
            emitted[type_] = emitted.get(type_, 0.0) + n
    assert by_label(ref, PREFIX + "aggregator_events_applied_total", "type") == emitted
    assert total(ref, PREFIX + "events_lost_total") == 0
    a, b = combined(parts), comparable(ref)
    assert set(a) == set(b), diff(a, b)
    problems = same_totals(a, b)
    assert not problems, "\n".join(problems[:20])
    assert "took over" in logs and "of group 'g'" in logs
