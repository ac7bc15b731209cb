"""The tools against a cluster answer exactly as against a single Redis holding the same entries:
``events tail|range|stats``, ``replay --at``, ``aggregator --rebuild``; and ``placement``'s plan."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest

from services.aggregator.consumer import Consumer
from services.aggregator.exposition import StateCollector
from services.aggregator.placement import plan
from services.aggregator.rebuild import rebuild
from services.aggregator.settings import AggregatorSettings
from services.cli import main
from shared.events.bus import Client, RedisSettings, connect
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import partition_of, stream_key
from tests.reliability.producer import workload
from tests.support.cluster import LocalRedisCluster

P = 4
BASE_MS = 1_796_000_000_000
SOURCES = [f"svc{i}:host:{i}:ab" for i in range(6)]


def _load(client: Client) -> int:
    """A seeded history on P partitions with exact ids (interleaved across partitions); returns the
    last entry's time in ms."""
    rng = random.Random(7)
    seqs = dict.fromkeys(SOURCES, 0)
    pending: dict[str, list[dict[str, object]]] = {s: [] for s in SOURCES}
    ms = BASE_MS
    for i, type_, fields in workload(seed=7, events=3000, sources=len(SOURCES)):
        src = SOURCES[i]
        seqs[src] += 1
        pending[src].append({**fields, "type": type_, "seq": seqs[src], "ts": ms / 1000})
        if len(pending[src]) >= rng.randint(1, 20):
            ms += rng.randint(1, 400)
            client.xadd(
                stream_key(partition_of(src, P)),
                {ENTRY_FIELD: encode_batch(src, pending[src])},
                id=f"{ms}-0",
            )
            pending[src] = []
    for src, events in pending.items():
        if events:
            ms += 1
            client.xadd(
                stream_key(partition_of(src, P)), {ENTRY_FIELD: encode_batch(src, events)}, id=f"{ms}-0"
            )
    return ms


Run = Callable[..., str]


@pytest.fixture
def both(
    redis_cluster: LocalRedisCluster,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Run, Run, int]:
    """The same history on the session's single Redis and on the session cluster; a runner for each."""
    ends = set()
    for url in (redis_url, redis_cluster.url):
        client = connect(RedisSettings(url), "tool")
        ends.add(_load(client))
        client.close()
    assert len({partition_of(s, P) for s in SOURCES}) >= 3

    def runner(url: str) -> Run:
        def run(*argv: str) -> str:
            monkeypatch.setenv("BOILERHOUSE_REDIS_URL", url)
            capsys.readouterr()
            assert main([*argv, "--partitions", str(P), "-q"]) == 0
            return capsys.readouterr().out

        return run

    return runner(redis_url), runner(redis_cluster.url), ends.pop()


def _without_placement(stats: str) -> str:
    """``events stats`` without the cluster's PARTITIONS table (node, slot, length, lag per partition)."""
    head, sep, rest = stats.partition("PARTITIONS (Redis Cluster")
    return head + rest.partition("\n\n")[2] if sep else stats


def test_events_and_replay_answer_the_same_on_a_cluster(both: tuple[Run, Run, int]) -> None:
    single, cluster, end_ms = both
    at = f"{(BASE_MS + end_ms) // 2}-0"  # a stream id
    for argv in (
        ("events", "tail", "-n", "40"),
        ("events", "tail", "-n", "5", "--json", "--type", "container.*"),
        ("events", "range", "--from", f"{BASE_MS}-0", "--to", at, "--json"),
        ("events", "range", "--pool", "pool-3", "--type", "pool.state"),
        ("replay", "--at", at),
        ("replay", "--at", f"{end_ms + 1}-0"),
    ):
        a, b = single(*argv), cluster(*argv)
        assert a and a == b, argv
    end = ("--to", f"{end_ms + 1}-0")  # "live" is judged at the end of the window, not at the call
    stats_single, stats_cluster = single("events", "stats", *end), cluster("events", "stats", *end)
    assert "PARTITIONS" not in stats_single
    assert _without_placement(stats_cluster) == stats_single


def test_stats_show_the_node_length_and_lag_of_each_partition(
    both: tuple[Run, Run, int], redis_cluster: LocalRedisCluster
) -> None:
    _, cluster, _ = both
    client = redis_cluster.client()
    client.xgroup_create(stream_key(1), "aggregator", id="0")
    lines = cluster("events", "stats").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PARTITIONS (Redis Cluster: "))
    assert lines[start + 1].split() == [
        "PARTITION",
        "NODE",
        "SLOT",
        "ENTRIES",
        "LAST",
        "ENTRY",
        "LAG",
        "aggregator",
    ]
    rows = {int(line.split()[0]): line.split() for line in lines[start + 2 : start + 2 + P]}
    for p in range(P):
        key = stream_key(p)
        node, slot, length = rows[p][1], rows[p][2], rows[p][3]
        assert node == redis_cluster.node_for_key(key).addr
        assert int(slot) == redis_cluster.slot_of(key)
        assert int(length) == client.xlen(key)
        assert rows[p][-1] == (str(client.xlen(key)) if p == 1 else "-")  # lag of the group, where it exists
    client.close()


def _render(consumer: Consumer) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(consumer.snapshot, clock=lambda: 2e9))
    return generate_latest(registry).decode()


def test_rebuild_on_a_cluster_gives_the_single_redis_checkpoints(
    both: tuple[Run, Run, int], redis_cluster: LocalRedisCluster, redis_client: redis.Redis
) -> None:
    rendered = []
    for client in (redis_client, connect(RedisSettings(redis_cluster.url), "consumer")):
        settings = AggregatorSettings(redis_url="redis://unused:1", partitions=P, block_ms=10)
        results = rebuild(client, settings, show_progress=False)
        assert sum(r.events for r in results) == 3000
        consumer = Consumer(client, settings)  # restores the rebuilt checkpoints
        consumer.setup()
        assert consumer.poll_once() == 0
        rendered.append(_render(consumer))
    assert rendered[0] == rendered[1]


@pytest.mark.parametrize(
    ("owned", "names", "moves"),
    [
        # 8 partitions on 3 masters as CRC16 places {0}..{7} on equal slot ranges: 2, 4, 2.
        ({0: "c", 1: "b", 2: "b", 3: "a", 4: "c", 5: "b", 6: "b", 7: "a"}, ["a", "b", "c"], [(6, "b", "a")]),
        # A new master with no partition takes two: one from each of the busiest.
        (
            {0: "c", 1: "b", 2: "b", 3: "a", 4: "c", 5: "b", 6: "b", 7: "a"},
            ["a", "b", "c", "d"],
            [(5, "b", "d"), (6, "b", "d")],
        ),
        ({0: "a", 1: "b"}, ["a", "b"], []),
        (
            dict.fromkeys(range(6), "a"),
            ["a", "b", "c"],
            [(2, "a", "b"), (3, "a", "b"), (4, "a", "c"), (5, "a", "c")],
        ),
    ],
)
def test_placement_plans_the_fewest_moves_to_an_even_spread(
    owned: dict[int, str], names: list[str], moves: list[tuple[int, str, str]]
) -> None:
    assert plan(owned, names) == moves
    after = {**owned, **{p: to for p, _, to in moves}}
    counts = [list(after.values()).count(n) for n in names]
    assert max(counts) - min(counts) <= 1
