"""Helpers for the end-to-end cluster tests: groups of sharded aggregator processes, producers on several
partitions, waiting for a group to catch up on every partition, and combining the shards' expositions."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import redis

from services.aggregator.metrics import METRICS_BY_NAME, Combine
from shared.events.bus import ERRORS, Client
from shared.events.replies import StreamInfo, find_group
from shared.events.streams import partition_of, stream_key
from tests.reliability.support import PREFIX, Aggregator, comparable, producer
from tests.support.expo import Samples
from tests.support.procs import Proc
from tests.support.wait import wait_until

SUFFIXES = ("_bucket", "_count", "_sum")


def aggregators(
    workdir: Path,
    url: str,
    group: str,
    partitions: int,
    shards: int = 1,
    env: dict[str, str] | None = None,
) -> list[Aggregator]:
    """The ``shards`` aggregator processes of one consumer group (not started)."""
    return [
        Aggregator(
            workdir,
            url,
            f"{group}-{i}",
            {
                "BOILERHOUSE_CONSUMER_GROUP": group,
                "BOILERHOUSE_PARTITIONS": str(partitions),
                "BOILERHOUSE_AGGREGATOR_SHARD": str(i),
                "BOILERHOUSE_AGGREGATOR_SHARDS": str(shards),
                **(env or {}),
            },
        )
        for i in range(shards)
    ]


def start_all(aggs: Iterable[Aggregator]) -> None:
    """Start them all, then wait until each is ready (the starts overlap)."""
    aggs = list(aggs)
    for agg in aggs:
        agg.start(wait=False)
    for agg in aggs:
        agg.samples()  # waits for /readyz


def stop_all(aggs: Iterable[Aggregator]) -> None:
    for agg in aggs:
        with contextlib.suppress(Exception):
            agg.stop()


def src_on(partition: int, partitions: int, name: str = "src") -> str:
    """A source id (``name-n:host:n:cafe``) that hashes to ``partition`` of ``partitions``."""
    for n in range(100_000):
        src = f"{name}-{n}:host:{n}:cafe"
        if partition_of(src, partitions) == partition:
            return src
    raise AssertionError(f"no source id for partition {partition}")


def producers(
    workdir: Path,
    url: str,
    count: int,
    *args: str,
    name: str = "producer",
    srcs: Sequence[Sequence[str]] = (),
) -> list[tuple[Proc, Path]]:
    """``count`` producer processes (tests/reliability/producer.py), each with its own service name and
    seed; ``srcs[i]``, if given, are the source ids of process i (to place sources on partitions)."""
    out = []
    for i in range(count):
        ids = [a for src in (srcs[i] if i < len(srcs) else ()) for a in ("--src", src)]
        out.append(
            producer(
                workdir, url, f"{name}{i}", "--service", f"{name}{i}-", "--seed", str(1000 + i), *args, *ids
            )
        )
    return out


def caught_up(client: Client, group: str, partitions: int) -> bool:
    """Whether ``group`` was delivered every partition's last entry and acknowledged everything."""
    for p in range(partitions):
        key = stream_key(p)
        try:
            info = StreamInfo.parse(client.xinfo_stream(key))
            found = find_group(client.xinfo_groups(key), group)
        except redis.ResponseError:  # no such stream: nothing to read there
            continue
        except ERRORS:  # a failover or a slot move in progress: not known yet
            return False
        if info.length == 0:
            continue
        if found is None or found.last_delivered_id != info.last_generated_id or found.pending:
            return False
    return True


def wait_caught_up(client: Client, group: str, partitions: int, within_s: float = 90.0) -> None:
    wait_until(lambda: caught_up(client, group, partitions), f"group {group} caught up", within_s, 0.1)


def family(sample: str) -> str:
    """The metric a sample belongs to (its definition's name, without the prefix)."""
    name = sample.removeprefix(PREFIX)
    if name in METRICS_BY_NAME:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRICS_BY_NAME:
            return name.removesuffix(suffix)
    return name


def combined(shards: Sequence[Samples]) -> Samples:
    """What Prometheus computes over the shards of one group: the sum of each series, or the max for
    metrics whose sources combine by max (``livemax``). Runtime self-metrics are left out."""
    out: Samples = {}
    for samples in shards:
        for key, value in comparable(samples).items():
            definition = METRICS_BY_NAME.get(family(key[0]))
            if definition is not None and definition.combine is Combine.LIVE_MAX:
                out[key] = max(out.get(key, value), value)
            else:
                out[key] = out.get(key, 0.0) + value
    return out


def same_totals(a: Samples, b: Samples, rel: float = 1e-12) -> list[str]:
    """Where ``a`` and ``b`` differ: every sample must be equal, except that histogram ``_sum`` s (float
    additions in another order: per shard, then over shards) may differ by float rounding."""
    problems = []
    for key in sorted(set(a) | set(b), key=lambda k: (k[0], sorted(k[1]))):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if x is not None and y is not None and key[0].endswith("_sum") and math.isclose(x, y, rel_tol=rel):
            continue
        problems.append(f"{key[0]}{dict(key[1])}: {x} != {y}")
    return problems


@contextlib.contextmanager
def scraping(agg: Aggregator) -> Iterator[list[int]]:
    """Statuses of /metrics scrapes of ``agg`` taken every 100 ms while the block runs (a thread)."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.1):
            try:
                statuses.append(httpx.get(agg.url + "/metrics", timeout=5).status_code)
            except httpx.HTTPError:
                statuses.append(0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(10)
