"""Sharded and paired aggregators on a real Redis Cluster: exact totals across shards and across an HA pair.

The session cluster (3 masters) carries P = 8 partitions written by several producer processes. One
consumer group is split over N = 3 aggregator processes (shard i consumes the partitions p % 3 == i),
another is one unsharded aggregator: every series of the one equals the shards' sum (the max for
``livemax`` gauges), sample for sample. Two unsharded groups form an HA pair: one is SIGKILLed for a
while and restarted, the other answers every scrape meanwhile, and both end identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from shared.events.bus import RedisSettings, connect
from tests.cluster.support import (
    aggregators,
    combined,
    producers,
    same_totals,
    scraping,
    src_on,
    start_all,
    stop_all,
    wait_caught_up,
)
from tests.reliability.support import PREFIX, by_label, comparable, diff, read_report, total, wait_exit
from tests.support.cluster import LocalRedisCluster

P = 8


def _seeds(cluster: LocalRedisCluster) -> str:
    """The bus URL as an operator would write it: every master as a seed."""
    return "redis://" + ",".join(n.addr for n in cluster.masters())


def _emitted(reports: list[Path]) -> dict[str, float]:
    out: dict[str, float] = {}
    for path in reports:
        for type_, n in read_report(path)["emitted"].items():
            out[type_] = out.get(type_, 0.0) + n
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_shards_add_up_to_one_unsharded_aggregator(
    redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    url = _seeds(redis_cluster)
    shards = aggregators(tmp_path, url, "sharded", P, shards=3)
    whole = aggregators(tmp_path, url, "whole", P)
    client = connect(RedisSettings(url), "tool")
    # 9 sources, on every one of the 8 partitions (explicit source ids; random ones may bunch up).
    srcs = [[src_on((3 * i + j) % P, P, f"p{i}s{j}") for j in range(3)] for i in range(3)]
    procs = producers(
        tmp_path, url, 3, "--events", "12000", "--rate", "4000", "--partitions", str(P), srcs=srcs
    )
    try:
        start_all([*shards, *whole])
        for proc, _ in procs:
            wait_exit(proc, timeout=120)
        wait_caught_up(client, "sharded", P)
        wait_caught_up(client, "whole", P)
        parts = [agg.samples() for agg in shards]
        one = whole[0].samples()
    finally:
        stop_all([*shards, *whole])
        client.close()

    reports = [read_report(path) for _, path in procs]
    assert {p for r in reports for p in r["partitions"]} == set(range(P))
    # Each shard consumed only its own partitions.
    for i, samples in enumerate(parts):
        lag = {
            dict(labels)["partition"]
            for (name, labels) in samples
            if name == PREFIX + "aggregator_consumer_lag_entries"
        }
        assert lag == {str(p) for p in range(P) if p % 3 == i}
    # Exact: what was emitted is what was folded, once.
    assert all(r["dropped"] == 0 and r["unsent"] == 0 for r in reports)
    assert by_label(one, PREFIX + "aggregator_events_applied_total", "type") == _emitted(
        [p for _, p in procs]
    )
    assert total(one, PREFIX + "events_lost_total") == 0
    # ... and the shards add up to the unsharded aggregator, series for series.
    a, b = combined(parts), comparable(one)
    assert set(a) == set(b), diff(a, b)
    problems = same_totals(a, b)
    assert not problems, "\n".join(problems[:20])
    assert total(b, PREFIX + "aggregator_live_sources") == 6  # each producer stopped one of its 3 sources


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ha_pair_one_member_killed_and_restarted_ends_identical(
    redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    url = _seeds(redis_cluster)
    (blue,) = aggregators(tmp_path, url, "blue", P)
    (green,) = aggregators(tmp_path, url, "green", P)
    client = connect(RedisSettings(url), "tool")
    procs = producers(tmp_path, url, 2, "--events", "16000", "--rate", "4000", "--partitions", str(P))
    try:
        start_all([blue, green])
        with scraping(blue) as statuses:
            time.sleep(1.0)
            green.kill()
            before = len(statuses)
            time.sleep(2.0)  # the backlog grows while green is down; blue keeps serving
            during = len(statuses) - before
            green.start()
            for proc, _ in procs:
                wait_exit(proc, timeout=120)
            wait_caught_up(client, "blue", P)
            wait_caught_up(client, "green", P)
        a, b = blue.samples(), green.samples()
    finally:
        stop_all([blue, green])
        client.close()

    assert set(statuses) == {200}, f"blue did not answer every scrape: {statuses}"
    assert during >= 3, "too few scrapes of blue while green was down to tell"
    assert green.starts == 2
    assert by_label(a, PREFIX + "aggregator_events_applied_total", "type") == _emitted([p for _, p in procs])
    ca, cb = comparable(a), comparable(b)
    assert ca == cb, diff(ca, cb)
