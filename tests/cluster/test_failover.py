"""A master SIGKILLed under load on a real 3 masters + 3 replicas cluster; its replica takes over.

Producer processes publish to P = 8 partitions; two aggregator processes consume them: ``steady`` runs
throughout, ``restarted`` is SIGKILLed together with the master and started again after the failover,
so that it restores the checkpoint the promoted replica holds. To make asynchronous replication lose
acknowledged writes on purpose (on loopback it is otherwise too fast to lose anything), the replica is
cut off (SIGSTOP, and the master drops its replication link) while producers write to the master;
then the master is killed and the replica resumes and is promoted without those writes.

Without ``WAIT`` those writes are lost, and exactly their events are counted in ``events_lost_total``
(the producers' later sequence numbers show the gap); nothing is counted twice, no counter goes
backwards, and what the promoted replica holds is a consistent prefix (checkpoint, position and acks
together). With producers waiting for one replica (``WAIT 1``), the same sequence loses nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from redis.cluster import RedisCluster

from services.aggregator import checkpoint
from services.aggregator.fold import Limits
from shared.events.bus import RedisSettings, connect
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.replies import PendingSummary, entries
from shared.events.streams import checkpoint_key, format_id, parse_id, stream_key
from tests.cluster.support import aggregators, caught_up, producers, start_all, stop_all
from tests.reliability.support import PREFIX, Aggregator, by_label, read_report, total, wait_exit
from tests.support.cluster import LocalRedisCluster, Node
from tests.support.expo import Samples, parse
from tests.support.procs import Proc
from tests.support.wait import wait_for, wait_until

P = 8
EVENTS = 15_000  # per producer, at 2500/s: 6 s of traffic


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        os.kill(pid, sig)


def _partitions_on(cluster: LocalRedisCluster, master: Node) -> list[int]:
    return [p for p in range(P) if cluster.node_for_key(stream_key(p)) is master]


def _tails(node: Node, parts: list[int]) -> dict[int, str]:
    """The last entry id of each partition stream on ``node`` ("0-0" when empty)."""
    client = node.client(decode=False)
    out = {}
    for p in parts:
        last = entries(client.xrevrange(stream_key(p), count=1))
        out[p] = last[0][0].decode() if last else "0-0"
    return out


def _events(client: redis.Redis | RedisCluster, since: dict[int, str]) -> set[tuple[str, int]]:
    """(source, seq) of every event in the partition streams after ``since`` of each partition."""
    out = set()
    for p, last in since.items():
        for _, fields in entries(client.xrange(stream_key(p), min="(" + last)):
            batch = decode_batch((fields or {})[ENTRY_FIELD])
            out.update((batch.src, ev["seq"]) for ev in batch.events)
    return out


def _entries_after(node: Node, since: dict[int, str]) -> int:
    client = node.client(decode=False)
    return sum(len(entries(client.xrange(stream_key(p), min="(" + last))) for p, last in since.items())


@contextmanager
def _watching_counters(agg: Aggregator) -> Iterator[list[str]]:
    """Scrape ``agg`` every 0.3 s while the block runs; collect every counter that went backwards."""
    import threading

    problems: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        last: Samples = {}
        while not stop.wait(0.3):
            try:
                now = parse(httpx.get(agg.url + "/metrics", timeout=5).text)
            except httpx.HTTPError:
                continue
            for key, value in now.items():
                name = key[0]
                if name.endswith(("_total", "_bucket", "_count", "_sum")) and value < last.get(key, value):
                    problems.append(f"{name}{dict(key[1])}: {last[key]} -> {value}")
            last = now

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield problems
    finally:
        stop.set()
        thread.join(10)


def _consistent_prefix(cluster: LocalRedisCluster, parts: list[int], group: str) -> list[str]:
    """On the masters now serving ``parts``: the group's checkpoint covers exactly the acknowledged
    entries (every pending entry is after the checkpointed position)."""
    problems = []
    client = cluster.client()
    try:
        for p in parts:
            restored = checkpoint.fetch(client, checkpoint_key(p, group), Limits())
            if restored is None:
                continue
            position = parse_id(restored.state.positions.get(p, "0-0"))
            summary = PendingSummary.parse(client.xpending(stream_key(p), group))
            if summary.min_id is not None and summary.min_id <= position:
                problems.append(
                    f"partition {p}: pending {format_id(summary.min_id)} <= checkpoint {format_id(position)}"
                )
            info_last = parse_id(client.xinfo_stream(stream_key(p))["last-generated-id"])
            if position > info_last:
                problems.append(
                    f"partition {p}: checkpoint at {format_id(position)} beyond the stream ({format_id(info_last)})"
                )
    finally:
        client.close()
    return problems


def _run(cluster: LocalRedisCluster, tmp_path: Path, wait_replicas: int) -> dict[str, object]:
    url = "redis://" + ",".join(n.addr for n in cluster.masters())
    env = {"BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.1"}
    (steady,) = aggregators(tmp_path, url, "steady", P, env=env)
    (restarted,) = aggregators(tmp_path, url, "restarted", P, env=env)
    procs: list[tuple[Proc, Path]] = []
    client = connect(RedisSettings(url), "tool")
    out: dict[str, object] = {}
    try:
        start_all([steady, restarted])
        procs = producers(
            tmp_path,
            url,
            3,
            "--events",
            str(EVENTS),
            "--rate",
            "2500",
            "--sources",
            "1",  # one source per process: no source stops before the end (a gap at a source's end is unseen)
            "--partitions",
            str(P),
            "--wait-replicas",
            str(wait_replicas),
            "--wait-timeout-ms",
            "50",
        )
        pids = [proc.pid for proc, _ in procs]
        with _watching_counters(steady) as backwards:
            # A master serving a partition that is being written.
            busy = wait_for(
                lambda: next((p for p in range(P) if client.xlen(stream_key(p)) > 20), None),
                "a partition with traffic",
            )
            master = cluster.node_for_key(stream_key(busy))
            (replica,) = cluster.replicas_of(master)
            parts = _partitions_on(cluster, master)

            _signal(pids, signal.SIGSTOP)
            time.sleep(0.3)  # what the master executed has reached the replica's socket
            cluster.kill(replica, signal.SIGSTOP)
            master.client().client_kill_filter(_type="replica")  # the replica will miss what follows
            cut = _tails(master, parts)
            _signal(pids, signal.SIGCONT)
            wait_until(lambda: _entries_after(master, cut) >= 20, "writes the replica does not have", 20)
            _signal(pids, signal.SIGSTOP)
            time.sleep(0.2)  # commands already sent are executed
            unreplicated = _events(master.client(decode=False), cut)
            restarted.kill()
            cluster.kill(master)
            cluster.kill(replica, signal.SIGCONT)
            _signal(pids, signal.SIGCONT)
            promoted = cluster.wait_failover(master)
            assert promoted is replica
            out["prefix_problems"] = _consistent_prefix(cluster, parts, "restarted")
            out["after_failover"] = _entries_after(promoted, cut)
            restarted.start()
            cluster.restart(master)  # back as a replica of the promoted one
            for proc, _ in procs:
                wait_exit(proc, timeout=180)
            wait_until(lambda: caught_up(client, "steady", P), "steady caught up", 90, 0.1)
            wait_until(lambda: caught_up(client, "restarted", P), "restarted caught up", 90, 0.1)
        # Lost: what the master had after the cut that is nowhere now. Batches whose reply the
        # producer never got (in flight when the master died) were sent again, and are not lost.
        out["unreplicated"] = len(unreplicated)
        out["lost"] = len(unreplicated - _events(client, dict.fromkeys(parts, "0-0")))
        out["backwards"] = backwards
        out["steady"], out["restarted"] = steady.samples(), restarted.samples()
        out["reports"] = [read_report(path) for _, path in procs]
        out["steady_log"] = steady.output()
    finally:
        stop_all([steady, restarted])
        for proc, _ in procs:
            if proc.popen.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
        client.close()
    return out


def _emitted(reports: list[dict[str, object]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for report in reports:
        for type_, n in report["emitted"].items():  # type: ignore[attr-defined]
            out[type_] = out.get(type_, 0.0) + n
    return out


def _check_no_double_count(samples: Samples, emitted: dict[str, float]) -> float:
    """Per type at most what was emitted; returns the events lost (emitted - applied, all counted)."""
    applied = by_label(samples, PREFIX + "aggregator_events_applied_total", "type")
    for type_, n in applied.items():
        assert n <= emitted[type_], f"{type_}: {n} applied of {emitted[type_]} emitted"
    lost = total(samples, PREFIX + "events_lost_total")
    assert sum(applied.values()) + lost == sum(emitted.values())
    assert total(samples, PREFIX + "events_lost_total", reason="trimmed") == 0
    return lost


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_failover_loses_unreplicated_writes_and_counts_exactly_them(
    redis_cluster_ha: LocalRedisCluster, tmp_path: Path
) -> None:
    out = _run(redis_cluster_ha, tmp_path, wait_replicas=0)
    reports = out["reports"]
    assert isinstance(reports, list)
    assert all(r["dropped"] == 0 and r["unsent"] == 0 for r in reports)
    lost_events = out["lost"]
    print(f"not replicated: {out['unreplicated']} events; lost: {lost_events}")
    assert isinstance(lost_events, int)
    assert lost_events > 0, f"{out['unreplicated']} events were not replicated, but none was lost"
    assert out["after_failover"] == 0, "the promoted replica has writes it should have missed"
    assert out["prefix_problems"] == []
    assert out["backwards"] == [], out["backwards"]
    emitted = _emitted(reports)
    # The aggregator restored from the promoted replica's checkpoint: exactly the lost writes are lost.
    restarted = out["restarted"]
    assert isinstance(restarted, dict)
    assert _check_no_double_count(restarted, emitted) == lost_events
    assert total(restarted, PREFIX + "events_lost_total", reason="seq_gap") == lost_events
    # The one that ran throughout may have folded them before the master died: counted once either way.
    steady = out["steady"]
    assert isinstance(steady, dict)
    assert _check_no_double_count(steady, emitted) <= lost_events


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_failover_with_producers_waiting_for_a_replica_loses_nothing(
    redis_cluster_ha: LocalRedisCluster, tmp_path: Path
) -> None:
    out = _run(redis_cluster_ha, tmp_path, wait_replicas=1)
    assert out["lost"] == 0
    assert isinstance(out["unreplicated"], int) and out["unreplicated"] > 0  # the same cut happened
    reports = out["reports"]
    assert isinstance(reports, list)
    assert all(r["dropped"] == 0 and r["unsent"] == 0 for r in reports)
    assert out["prefix_problems"] == []
    assert out["backwards"] == [], out["backwards"]
    emitted = _emitted(reports)
    for name in ("steady", "restarted"):
        samples = out[name]
        assert isinstance(samples, dict)
        assert _check_no_double_count(samples, emitted) == 0, name
        assert by_label(samples, PREFIX + "aggregator_events_applied_total", "type") == emitted
