"""The project's Redis edge on a real cluster: detection, seeds, errors, the writer's WAIT, raw replies,
and the consumer's one-slot checkpoint transaction."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
import redis.cluster
from redis.cluster import RedisCluster

from services.aggregator.app import create_app
from services.aggregator.consumer import Consumer
from services.aggregator.settings import AggregatorSettings
from services.cli import main
from services.embedded import free_port
from shared.events.bus import ERRORS, NotReplicated, RedisSettings, connect, is_cluster, node_client
from shared.events.codec import ENTRY_FIELD, decode_batch, encode_batch
from shared.events.publisher import Publisher
from shared.events.replies import PendingSummary, StreamInfo, find_group, read_reply
from shared.events.streams import checkpoint_key, dead_letter_key, stream_key
from shared.events.writer import StreamWriter
from shared.settings import SettingsError
from tests.support.cluster import HOST, LocalRedisCluster
from tests.support.procs import ThreadServer
from tests.support.wait import wait_for


def test_connect_returns_a_cluster_client_for_a_cluster_node_and_a_plain_one_otherwise(
    redis_cluster: LocalRedisCluster, redis_url: str
) -> None:
    for role in ("publisher", "consumer", "tool"):
        client = connect(RedisSettings(redis_cluster.url), role)
        assert isinstance(client, RedisCluster) and is_cluster(client)
        assert {n.port for n in client.get_primaries()} == {m.port for m in redis_cluster.masters()}
        client.close()
    single = connect(RedisSettings(redis_url), "tool")
    assert type(single) is redis.Redis and not is_cluster(single)
    single.close()


def test_seeds_beyond_a_dead_first_one_are_used(redis_cluster: LocalRedisCluster) -> None:
    live = redis_cluster.masters()[1]
    url = f"redis://{HOST}:{free_port()},{live.addr}"
    client = connect(RedisSettings(url), "consumer")
    assert {n.port for n in client.get_primaries()} == {m.port for m in redis_cluster.masters()}
    client.close()


def test_no_reachable_seed_is_a_bus_error_and_a_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://{HOST}:{free_port()},{HOST}:{free_port()}"
    with pytest.raises(ERRORS, match="no Redis answered"):
        connect(RedisSettings(url), "tool")
    monkeypatch.setenv("BOILERHOUSE_REDIS_URL", url)
    assert main(["events", "stats", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"boilerhouse: error: connection refused by {url}: ") and "Traceback" not in err


def test_a_cluster_has_only_database_0(redis_cluster: LocalRedisCluster) -> None:
    with pytest.raises(SettingsError, match="only database 0"):
        connect(RedisSettings(redis_cluster.url + "/1"), "tool")
    connect(RedisSettings(redis_cluster.url + "/0"), "tool").close()


def test_wait_goes_to_the_master_that_took_the_writes(redis_cluster: LocalRedisCluster) -> None:
    """The writer sends XADDs and WAIT on the owning master's connection; without replicas WAIT 1
    answers 0 and the batches do not count as written."""
    client = connect(RedisSettings(redis_cluster.url), "publisher")
    stream = stream_key(3)
    owner = redis_cluster.node_for_key(stream)
    for m in redis_cluster.masters():
        m.client().config_resetstat()
    payload = encode_batch("w:h:1:a", [{"type": "source.heartbeat", "seq": 1, "ts": 1.0}])
    StreamWriter(lambda: client, 1000, client=client).add(stream, [payload])
    strict = StreamWriter(lambda: client, 1000, wait_replicas=1, wait_timeout_ms=10, client=client)
    with pytest.raises(NotReplicated, match="0 of 1 replicas"):
        strict.add(stream, [payload, payload])
    stats = owner.client().info("commandstats")
    assert (stats["cmdstat_xadd"]["calls"], stats["cmdstat_wait"]["calls"]) == (3, 1)
    for m in redis_cluster.masters():
        if m is not owner:
            assert "cmdstat_wait" not in m.client().info("commandstats")
    assert node_client(client, stream).xlen(stream) == 3
    client.close()


def test_raw_cluster_transaction_replies_read_like_parsed_ones(
    redis_cluster: LocalRedisCluster, redis_client: redis.Redis
) -> None:
    """The same stream on a single Redis and on the cluster: the typed views of a transaction's replies
    are equal, though redis-py parses the one and not the other."""
    cluster = connect(RedisSettings(redis_cluster.url), "tool")
    stream = stream_key(5)
    views = []
    for client in (redis_client, cluster):
        client.xgroup_create(stream, "g", id="0", mkstream=True)
        for i in range(1, 5):
            client.xadd(stream, {ENTRY_FIELD: b"\x00\xff%d" % i}, id=f"{i}-1")
        client.xreadgroup("g", "other", {stream: ">"}, count=1)
        client.xdel(stream, "1-1")  # pending and deleted: its fields come back nil
        pipe = client.pipeline(transaction=True)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, "g")
        pipe.xreadgroup("g", "me", {stream: ">"}, count=2)
        pipe.xreadgroup("g", "other", {stream: "0"})
        info, groups, pending, fresh, again = pipe.execute()
        views.append(
            (
                StreamInfo.parse(info),
                find_group(groups, "g"),
                PendingSummary.parse(pending),
                read_reply(fresh),
                read_reply(again),
            )
        )
    assert isinstance(views[1][0], StreamInfo)
    assert views[0] == views[1]
    assert views[0][3] == [
        (stream, [(b"2-1", {ENTRY_FIELD: b"\x00\xff2"}), (b"3-1", {ENTRY_FIELD: b"\x00\xff3"})])
    ]
    assert views[0][4] == [(stream, [(b"1-1", {})])]  # deleted while pending: no fields
    assert views[0][2].consumers == (("other", 1),)
    cluster.close()


def test_a_partitions_checkpoint_dead_letters_and_acks_are_one_transaction_on_one_node(
    redis_cluster: LocalRedisCluster,
) -> None:
    """The proof the design rests on: a checkpoint writes its state, its dead letters and its XACKs in
    one MULTI/EXEC, on the one master serving the partition's slot, and nothing elsewhere."""
    p = 6
    keys = (stream_key(p), dead_letter_key(p), checkpoint_key(p, "aggregator"))
    assert len({redis_cluster.slot_of(k) for k in keys}) == 1
    owner = redis_cluster.node_for_key(keys[0])
    client = connect(RedisSettings(redis_cluster.url), "consumer")
    src = "proof:h:1:a"
    client.xadd(keys[0], {ENTRY_FIELD: b"\xc1 not msgpack"})
    events = [{"type": "container.health_check_failed", "seq": i, "ts": 1.0, "pool_id": "p"} for i in (1, 2)]
    client.xadd(keys[0], {ENTRY_FIELD: encode_batch(src, events)})
    settings = AggregatorSettings(redis_url=redis_cluster.url, partitions=8, block_ms=10)
    consumer = Consumer(client, settings)
    consumer.setup()
    while consumer.poll_once():
        pass
    for m in redis_cluster.masters():
        m.client().config_resetstat()
    consumer.checkpoint_all(force=True)
    calls = {
        m.port: {k.removeprefix("cmdstat_"): v["calls"] for k, v in m.client().info("commandstats").items()}
        for m in redis_cluster.masters()
    }
    assert {k: calls[owner.port].get(k) for k in ("multi", "exec", "hset", "xadd", "xack")} == {
        "multi": 1,
        "exec": 1,
        "hset": 1,
        "xadd": 1,  # the one dead letter
        "xack": 1,  # both entries
    }
    for port, commands in calls.items():
        if port != owner.port:
            assert not {"multi", "exec", "hset", "xadd", "xack"} & set(commands), (port, commands)
    assert client.xlen(keys[1]) == 1
    assert client.xpending(keys[0], "aggregator")["pending"] == 0
    assert client.hget(keys[2], "meta") is not None
    assert consumer.snapshot().counters["container_health_check_failures_total"] == {("p",): 2}
    # A transaction over two partitions is refused before anything is sent.
    pipe = client.pipeline(transaction=True)
    pipe.set(checkpoint_key(0, "aggregator"), b"x")
    pipe.xack(stream_key(1), "aggregator", "1-1")
    with pytest.raises(ERRORS, match="same slot"):
        pipe.execute()
    client.close()


def test_the_consumer_reads_each_partition_in_its_own_transaction(redis_cluster: LocalRedisCluster) -> None:
    """P = 8 on 3 masters, one consumer for all: every partition read, exactly; a restart from the
    checkpoints continues without repeating anything."""
    client = connect(RedisSettings(redis_cluster.url), "consumer")
    settings = AggregatorSettings(redis_url=redis_cluster.url, partitions=8, block_ms=10)
    for p in range(8):
        events = [
            {"type": "affinity.evicted", "seq": i, "ts": 1.0, "pool_id": f"p{p}"} for i in range(1, p + 2)
        ]
        client.xadd(stream_key(p), {ENTRY_FIELD: encode_batch(f"s{p}:h:1:a", events)})
    consumer = Consumer(client, settings)
    consumer.setup()
    while consumer.poll_once():
        pass
    consumer.checkpoint_all(force=True)
    expected = {(f"p{p}",): p + 1 for p in range(8)}
    assert consumer.snapshot().counters["affinity_evictions_total"] == expected
    for p in range(8):
        client.xadd(
            stream_key(p),
            {
                ENTRY_FIELD: encode_batch(
                    f"s{p}:h:1:a", [{"type": "affinity.evicted", "seq": p + 2, "ts": 2.0, "pool_id": f"p{p}"}]
                )
            },
        )
    again = Consumer(client, settings)
    again.setup()
    while again.poll_once():
        pass
    assert again.snapshot().counters["affinity_evictions_total"] == {(f"p{p}",): p + 2 for p in range(8)}
    assert sum(again.snapshot().counters.get("aggregator_duplicates_total", {}).values()) == 0
    client.close()


def test_a_spool_is_sent_to_each_batch_s_partition_on_the_cluster(
    redis_cluster: LocalRedisCluster, tmp_path: Path
) -> None:
    """Batches spooled while the bus was down reach their own partitions, on whichever master serves them."""
    spool = tmp_path / "spool"
    down = f"redis://{HOST}:{free_port()}"
    writers = [
        Publisher(down, f"svc{i}", partitions=8, heartbeat_interval_s=10**6, spool_dir=spool)
        for i in range(8)
    ]
    for w in writers:
        w.emit("container.health_check_failed", {"pool_id": "p"})
        w.close(2)
    parts = {w.partition for w in writers}
    assert len({redis_cluster.node_for_key(stream_key(p)).port for p in parts}) > 1
    sender = Publisher(redis_cluster.url, "sender", partitions=8, heartbeat_interval_s=10**6, spool_dir=spool)
    try:
        assert sender.flush(10)
    finally:
        sender.close(5)
    client = redis_cluster.client()
    for w in writers:
        batches = [decode_batch(f[ENTRY_FIELD]) for _, f in client.xrange(stream_key(w.partition))]
        assert [e["seq"] for b in batches if b.src == w.src for e in b.events] == [1, 2, 3], w.src
    client.close()


def test_an_aggregator_started_before_the_bus_says_why_it_is_not_ready() -> None:
    url = f"redis://{HOST}:{free_port()},{HOST}:{free_port()}"
    app = create_app(AggregatorSettings(redis_url=url, partitions=8))
    with ThreadServer(app) as server:
        body = wait_for(
            lambda: httpx.get(server.url + "/readyz", timeout=5).json(),
            "readyz naming the bus error",
            accept=lambda b: b.get("reason") == "connection_refused",
        )
    assert body["status"] == "starting"
    assert body["detail"] == (
        f"consumer not set up yet: connection refused by {url}: is Redis running there? (BOILERHOUSE_REDIS_URL)"
    )
