"""The Redis Cluster fixture is a real cluster: routing, failover, and live slot moves under a client."""

from __future__ import annotations

import threading
import time

import redis
import redis.cluster
from redis.crc import key_slot

from shared.events.streams import checkpoint_key, dead_letter_key, stream_key
from tests.support.cluster import LocalRedisCluster


def test_keys_land_on_the_masters_that_own_their_slots(
    redis_cluster: LocalRedisCluster, redis_cluster_client: redis.cluster.RedisCluster
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert all(not redis_cluster.replicas_of(m) for m in masters)
    keys = [f"k:{{{i}}}" for i in range(30)]
    for key in keys:
        redis_cluster_client.set(key, key)
    seen: set[int] = set()
    for key in keys:
        slot = redis_cluster.slot_of(key)
        assert slot == key_slot(key.encode())
        owner = redis_cluster.node_for_key(key)
        seen.add(owner.port)
        assert owner.client().get(key) == key, f"{key} (slot {slot}) not on {owner.port}"
    assert seen == {m.port for m in masters}, "30 hash tags should spread over all three masters"
    assert sum(int(m.client().dbsize()) for m in masters) == len(keys)  # so no key is anywhere else


def test_a_partitions_keys_share_one_slot(redis_cluster: LocalRedisCluster) -> None:
    for p in range(8):
        slots = {
            redis_cluster.slot_of(k)
            for k in (stream_key(p), dead_letter_key(p), checkpoint_key(p, "aggregator"))
        }
        assert slots == {key_slot(str(p).encode())}


def test_a_killed_master_is_replaced_by_its_replica(redis_cluster_ha: LocalRedisCluster) -> None:
    cluster = redis_cluster_ha
    assert len(cluster.masters()) == 3
    assert all(len(cluster.replicas_of(m)) == 1 for m in cluster.masters())
    client = cluster.client()
    try:
        key = "failover:{0}"
        client.set(key, "before")
        master = cluster.node_for_key(key)
        (replica,) = cluster.replicas_of(master)
        cluster.wait_synced()

        started = time.monotonic()
        cluster.kill(master)
        promoted = cluster.wait_failover(master)
        took = time.monotonic() - started

        assert promoted is replica
        assert cluster.node_for_key(key) is replica
        assert len(cluster.masters()) == 3
        assert took < 20, f"failover took {took:.1f}s with cluster-node-timeout 2000"
        # The client finds the new master by itself (connection error -> refresh of the slot map).
        assert client.get(key) == b"before"
        client.set(key, "after")
        assert replica.client().get(key) == "after"

        cluster.restart(master)  # comes back as a replica of the node that replaced it
        assert master.role == "replica"
        assert master.master_id == replica.node_id
        cluster.wait_synced()
        with redis.Redis(port=master.port, single_connection_client=True, protocol=2) as direct:
            assert direct.execute_command("READONLY")
            assert direct.get(key) == b"after"
    finally:
        client.close()


def test_a_slot_moves_while_a_client_reads_and_writes_it(redis_cluster_ha: LocalRedisCluster) -> None:
    cluster = redis_cluster_ha
    tag = "{moving}"
    slot = cluster.slot_of(tag)
    source = cluster.node_for_slot(slot)
    target = next(m for m in cluster.masters() if m is not source)

    setup = cluster.client()
    for i in range(300):
        setup.set(f"k{i}:{tag}", i)
    setup.xadd(f"s:{tag}", {"n": 0})
    setup.close()

    errors: list[BaseException] = []
    counts = {"ops": 0}
    stop = threading.Event()

    def worker() -> None:
        client = cluster.client()
        n = 0
        try:
            while not stop.is_set():
                key = f"k{n % 300}:{tag}"
                # Single-key commands: redis-py follows ASK (key already moved) and MOVED (slot done).
                assert client.get(key) == str(n % 300).encode()
                client.set(f"w{n}:{tag}", n)
                client.xadd(f"s:{tag}", {"n": n})
                n += 1
        except Exception as exc:  # noqa: BLE001 -- any error ends the test with it
            errors.append(exc)
        finally:
            counts["ops"] = n
            client.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    time.sleep(0.2)
    ops_before = counts["ops"]
    cluster.move_slot(slot, target, batch=10, between=lambda _moved: time.sleep(0.02))
    time.sleep(0.2)
    stop.set()
    thread.join(10)

    assert not errors, f"client saw {errors[0]!r}"
    assert counts["ops"] > ops_before
    assert cluster.node_for_slot(slot) is target
    keys_source = source.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    keys_target = target.client().execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    assert keys_source == 0
    written = counts["ops"]
    assert keys_target == 300 + 1 + written  # the keys, the stream, one key per write
    assert target.client().xlen(f"s:{tag}") == 1 + written


def test_a_new_master_takes_slots_in_a_rebalance(redis_cluster_ha: LocalRedisCluster) -> None:
    cluster = redis_cluster_ha
    client = cluster.client()
    try:
        keys = {f"r:{{{i}}}": i for i in range(200)}
        for k, v in keys.items():
            client.set(k, v)
        new = cluster.add_master(rebalance=True)
        owners: dict[str, list[int]] = {}
        for slot, node_id in cluster.slot_owners().items():
            owners.setdefault(node_id, []).append(slot)
        assert new.node_id in owners
        assert len(owners[new.node_id]) > 3000  # about a quarter of 16384
        assert {k: client.get(k) for k in keys} == {k: str(v).encode() for k, v in keys.items()}
        assert any(cluster.node_for_key(k) is new for k in keys)
    finally:
        client.close()
