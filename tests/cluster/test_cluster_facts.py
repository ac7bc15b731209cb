"""What redis-py's RedisCluster does on a real cluster, pinned: the facts the cluster bus relies on
(docs/operations.md, "redis-py on a cluster")."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, CrossSlotTransactionError, MovedError, RedisClusterException
from redis.retry import Retry

from services.embedded import free_port
from shared.events.streams import checkpoint_key, dead_letter_key, stream_key
from tests.support.cluster import HOST, LocalRedisCluster

S0, D0, C0 = stream_key(0), dead_letter_key(0), checkpoint_key(0, "aggregator")


def test_info_cluster_tells_a_cluster_from_a_single_server(
    redis_cluster: LocalRedisCluster, redis_url: str
) -> None:
    with redis.Redis.from_url(redis_cluster.url, protocol=2) as r:
        assert r.info("cluster") == {"cluster_enabled": 1}
    with redis.Redis.from_url(redis_url, protocol=2) as r:
        assert r.info("cluster") == {"cluster_enabled": 0}
    with pytest.raises(RedisClusterException, match="Cluster mode is not enabled"):
        RedisCluster.from_url(redis_url, protocol=2)


def test_one_url_or_seeds_with_a_dead_first_one_find_every_master(redis_cluster: LocalRedisCluster) -> None:
    masters = {n.port for n in redis_cluster.masters()}
    with RedisCluster.from_url(redis_cluster.url + "/0", protocol=2) as rc:
        assert {n.port for n in rc.get_primaries()} == masters
    dead = ClusterNode(HOST, free_port())
    with RedisCluster(startup_nodes=[dead, ClusterNode(HOST, redis_cluster.nodes[0].port)], protocol=2) as rc:
        assert {n.port for n in rc.get_primaries()} == masters
        assert dead.name not in rc.nodes_manager.startup_nodes  # replaced by the discovered nodes
    with pytest.raises(RedisClusterException, match=r"db.*can only be 0"):
        RedisCluster.from_url(redis_cluster.url + "/1", protocol=2)


def test_a_transaction_in_one_slot_is_atomic_but_its_replies_are_not_parsed(
    redis_cluster_client: RedisCluster,
) -> None:
    rc = redis_cluster_client
    rc.xgroup_create(S0, "aggregator", id="0", mkstream=True)
    ids = [rc.xadd(S0, {"e": i}) for i in range(3)]
    rc.xreadgroup("aggregator", "c", {S0: ">"})
    pipe = rc.pipeline(transaction=True)
    pipe.set(C0, b"state")
    pipe.xadd(D0, {"reason": "bad"})
    pipe.xack(S0, "aggregator", *ids)
    pipe.xinfo_stream(S0)
    pipe.xpending(S0, "aggregator")
    ok, dead_id, acked, info, pending = pipe.execute()
    assert (ok, acked) == (b"OK", 3)  # a plain client's transaction says True, not b"OK"
    assert isinstance(dead_id, bytes)
    # Only CLUSTER ... callbacks run in a cluster transaction: XINFO/XPENDING come back raw (RESP2 lists).
    assert isinstance(info, list)
    assert info[:2] == [b"length", 3]
    assert pending == [0, None, None, None]
    # The standalone callbacks turn them into what a plain client returns.
    callbacks = redis.Redis(protocol=2).response_callbacks
    assert callbacks["XINFO STREAM"](info)["length"] == 3
    assert callbacks["XPENDING"](pending)["pending"] == 0
    assert rc.xpending(S0, "aggregator")["pending"] == 0
    assert rc.get(C0) == b"state"


def test_a_cross_slot_transaction_is_refused_before_anything_is_sent(
    redis_cluster_client: RedisCluster,
) -> None:
    rc = redis_cluster_client
    pipe = rc.pipeline(transaction=True)
    pipe.set(C0, b"state")
    pipe.xadd(dead_letter_key(1), {"reason": "bad"})  # queuing does not check
    with pytest.raises(CrossSlotTransactionError, match="same slot"):
        pipe.execute()
    assert rc.exists(C0, dead_letter_key(1)) == 0
    # Without a transaction a cluster pipeline splits the commands per node.
    pipe = rc.pipeline(transaction=False)
    pipe.set(C0, b"state")
    pipe.set(checkpoint_key(1, "aggregator"), b"state")
    assert pipe.execute() == [True, True]


def test_one_read_cannot_span_partitions(
    redis_cluster: LocalRedisCluster, redis_cluster_client: RedisCluster
) -> None:
    rc = redis_cluster_client
    streams = [stream_key(p) for p in range(6)]
    for s in streams:
        rc.xgroup_create(s, "aggregator", id="0", mkstream=True)
    with pytest.raises(RedisClusterException, match="same key slot"):
        rc.xreadgroup("aggregator", "c", {streams[0]: ">", streams[1]: ">"})
    with pytest.raises(RedisClusterException, match="same key slot"):
        rc.xread({streams[0]: "0", streams[1]: "0"})
    # Not even two slots on one node: the server says CROSSSLOT (redis-py: ClusterCrossSlotError).
    owner = redis_cluster.node_for_key(streams[0])
    same_node = [s for s in streams if redis_cluster.node_for_key(s) is owner]
    assert len(same_node) >= 2, "six partitions over three masters"
    with pytest.raises(redis.exceptions.ClusterCrossSlotError, match="same slot"):
        owner.client().execute_command("XREAD", "STREAMS", same_node[0], same_node[1], "0", "0")
    # One read per partition; a non-transactional pipeline sends them per node in one round.
    for s in streams:
        rc.xadd(s, {"e": s})
    pipe = rc.pipeline(transaction=False)
    for s in streams:
        pipe.xreadgroup("aggregator", "c", {s: ">"}, count=10)
    replies = pipe.execute()
    assert [r[0][0].decode() for r in replies] == streams


def test_a_block_longer_than_socket_timeout_times_out_once_per_retry(
    redis_cluster: LocalRedisCluster,
) -> None:
    rc = redis_cluster.client(socket_timeout=0.2, retry=Retry(NoBackoff(), 2))
    try:
        rc.xgroup_create(S0, "aggregator", id="$", mkstream=True)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            rc.xreadgroup("aggregator", "c", {S0: ">"}, block=1000)
        assert time.monotonic() - started >= 3 * 0.2  # first try + 2 retries, each a full socket_timeout
        assert rc.xreadgroup("aggregator", "c", {S0: ">"}, block=100) == []  # a block under it is fine
    finally:
        rc.close()


def test_wait_in_a_cluster_pipeline_goes_to_the_default_node_not_the_writer(
    redis_cluster: LocalRedisCluster, redis_cluster_client: RedisCluster
) -> None:
    rc = redis_cluster_client
    stream = next(
        stream_key(p) for p in range(20) if rc.get_node_from_key(stream_key(p)) != rc.get_default_node()
    )
    owner = redis_cluster.node_for_key(stream)
    for m in redis_cluster.masters():
        m.client().config_resetstat()
    pipe = rc.pipeline(transaction=False)
    pipe.xadd(stream, {"e": 1})
    pipe.wait(0, 10)
    pipe.execute()
    stats = owner.client().info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] == 1
    assert "cmdstat_wait" not in stats
    # The owner's own client (the pool the cluster client uses for it) keeps XADD and WAIT on one connection.
    node = rc.get_redis_connection(rc.get_node_from_key(stream))
    pipe2 = node.pipeline(transaction=False)
    pipe2.xadd(stream, {"e": 2})
    pipe2.wait(0, 10)
    pipe2.execute()
    assert owner.client().info("commandstats")["cmdstat_wait"]["calls"] == 1


class LostReplyProxy:
    """A TCP proxy to one node that, when armed, drops the server's answer to the next EXEC and closes
    the connection: Redis has executed the transaction, the client never learns it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self._drop: socket.socket | None = None
        self._socks: list[socket.socket] = []
        self.server = socket.create_server((HOST, 0))
        self.listen = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection((HOST, self.port))
                self._socks += [client, upstream]
                threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if from_client and self.armed and b"EXEC" in data:
                    self.armed = False
                    self._drop = src
                elif not from_client and self._drop is dst:
                    self._drop = None
                    for s in (src, dst):
                        s.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)

    def close(self) -> None:
        self.server.close()
        for s in self._socks:
            s.close()


@pytest.fixture
def lost_reply(redis_cluster: LocalRedisCluster) -> Iterator[tuple[LostReplyProxy, int]]:
    owner = redis_cluster.node_for_key(C0)
    proxy = LostReplyProxy(owner.port)
    yield proxy, owner.port
    proxy.close()


@pytest.mark.parametrize(("retry", "applied"), [(None, 2), (Retry(NoBackoff(), 0), 1)])
def test_a_lost_exec_reply_is_run_again_by_redis_py_unless_retries_are_off(
    redis_cluster: LocalRedisCluster,
    lost_reply: tuple[LostReplyProxy, int],
    retry: Retry | None,
    applied: int,
) -> None:
    proxy, port = lost_reply

    def remap(addr: tuple[str, int]) -> tuple[str, int]:
        return (HOST, proxy.listen) if addr[1] == port else addr

    seed = [ClusterNode(HOST, port)]
    rc = (
        RedisCluster(startup_nodes=seed, address_remap=remap, protocol=2)
        if retry is None
        else RedisCluster(startup_nodes=seed, address_remap=remap, protocol=2, retry=retry)
    )
    try:
        proxy.armed = True
        pipe = rc.pipeline(transaction=True)
        pipe.incr(C0)
        pipe.xadd(D0, {"reason": "bad"})
        if retry is None:
            incr, _ = pipe.execute()  # silently: the reply is that of the second run
            assert incr == 2
        else:
            with pytest.raises(redis.exceptions.ConnectionError):
                pipe.execute()
    finally:
        rc.close()
    with redis_cluster.client() as check:
        assert check.get(C0) == str(applied).encode()
        assert check.xlen(D0) == applied


def test_a_transaction_fails_while_its_slot_is_half_migrated(redis_cluster_ha: LocalRedisCluster) -> None:
    cluster = redis_cluster_ha
    rc = cluster.client(retry=Retry(NoBackoff(), 0))
    try:
        rc.set(C0, b"state")
        rc.xadd(D0, {"reason": "seed"})
        slot = cluster.slot_of(C0)
        source = cluster.node_for_slot(slot)
        target = next(m for m in cluster.masters() if m is not source)
        cluster.begin_migration(slot, target)
        source.client(decode=False).execute_command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", D0)

        def commit() -> list[object]:
            pipe = rc.pipeline(transaction=True)
            pipe.set(C0, b"state2")
            pipe.xadd(D0, {"reason": "bad"})
            return pipe.execute()

        with pytest.raises(AskError):  # the dead letters moved, the checkpoint did not
            commit()
        assert rc.get(C0) == b"state"  # single commands follow ASK by themselves
        assert rc.xlen(D0) == 1
        cluster.migrate_keys(slot, source, target)
        with pytest.raises((AskError, MovedError)):  # all keys moved, slot not yet reassigned
            commit()
        cluster.finish_migration(slot, source, target)
        for _ in range(2):  # the first try may still hit the old owner: MOVED, then the map is fixed
            with contextlib.suppress(MovedError):
                commit()
                break
        assert rc.get(C0) == b"state2"
        assert rc.xlen(D0) == 2  # every failed try wrote nothing
    finally:
        rc.close()
