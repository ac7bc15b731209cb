"""Adding a master while producers and aggregators run: ``redis-cli --cluster reshard`` moves a
partition's slot to it live, then ``boilerhouse placement --apply`` evens the partitions out. Exact totals."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main
from shared.events.bus import RedisSettings, connect
from shared.events.streams import stream_key
from tests.cluster.support import aggregators, producers, start_all, stop_all, wait_caught_up
from tests.reliability.support import PREFIX, by_label, read_report, total, wait_exit
from tests.support.cluster import LocalRedisCluster
from tests.support.wait import wait_until

P = 8


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_partitions_move_to_a_new_master_while_everything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalRedisCluster(masters=3, workdir=tmp_path / "cluster") as cluster:
        url = cluster.url  # one seed: the client discovers the rest, and the new master later
        shards = aggregators(tmp_path, url, "sharded", P, shards=2)
        client = connect(RedisSettings(url), "tool")
        procs = producers(tmp_path, url, 2, "--events", "16000", "--rate", "2000", "--partitions", str(P))
        try:
            start_all(shards)
            wait_until(lambda: sum(client.xlen(stream_key(p)) for p in range(P)) > 100, "traffic")
            before = {p: cluster.node_for_key(stream_key(p)) for p in range(P)}
            new = cluster.add_master()
            # redis-cli moves a source's lowest slots: as many as it takes to include partition 2's.
            source = before[2]
            owned = sorted(s for s, node_id in cluster.slot_owners().items() if node_id == source.node_id)
            cluster.reshard(source, new, owned.index(cluster.slot_of(stream_key(2))) + 1)
            assert cluster.node_for_key(stream_key(2)) is new
            monkeypatch.setenv("BOILERHOUSE_REDIS_URL", url)
            capsys.readouterr()
            assert main(["placement", "--partitions", str(P), "--apply"]) == 0
            applied = capsys.readouterr().out
            assert "moving partition" in applied, applied
            assert main(["placement", "--partitions", str(P)]) == 0
            assert f"balanced: {P} partitions over 4 masters" in capsys.readouterr().out
            after = {p: cluster.node_for_key(stream_key(p)) for p in range(P)}
            for proc, _ in procs:
                wait_exit(proc, timeout=180)
            wait_caught_up(client, "sharded", P)
            parts = [agg.samples() for agg in shards]
            logs = [agg.output() for agg in shards]
        finally:
            stop_all(shards)
            client.close()
            for proc, _ in procs:
                if proc.popen.poll() is None:
                    proc.kill()

    moved = [p for p in range(P) if after[p] is not before[p]]
    assert len(moved) >= 2, f"only partitions {moved} moved"
    per_master: dict[int, int] = {}
    for node in after.values():
        per_master[node.port] = per_master.get(node.port, 0) + 1
    assert sorted(per_master.values()) == [2, 2, 2, 2]
    emitted: dict[str, float] = {}
    for _, path in procs:
        for type_, n in read_report(path)["emitted"].items():
            emitted[type_] = emitted.get(type_, 0.0) + n
    applied_by_type: dict[str, float] = {}
    for samples in parts:
        for type_, n in by_label(samples, PREFIX + "aggregator_events_applied_total", "type").items():
            applied_by_type[type_] = applied_by_type.get(type_, 0.0) + n
        assert total(samples, PREFIX + "events_lost_total") == 0
        assert total(samples, PREFIX + "aggregator_dead_letters_total") == 0
    assert applied_by_type == emitted
    assert all("Traceback" not in log for log in logs), logs
