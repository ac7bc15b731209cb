"""Spool edge cases: a sender that died mid-send, torn writes, and batches of sources on other partitions."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import pytest
import redis

from services.embedded import free_port
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.publisher import Publisher
from shared.events.streams import partition_of, stream_key


def _events(src_seq: range) -> list[dict]:
    return [
        {"type": "container.health_check_failed", "seq": s, "ts": time.time(), "pool_id": "p"}
        for s in src_seq
    ]


@pytest.mark.timeout(30)
def test_batches_claimed_by_a_dead_sender_are_sent_and_torn_writes_dropped(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    (spool / f"{time.time_ns():020d}-{dead_pid}-3.sending-{dead_pid}").write_bytes(
        encode_batch("old:h:1:00", _events(range(1, 4)))
    )
    (spool / f"{time.time_ns():020d}-{dead_pid}-3.batch").write_bytes(
        encode_batch("old:h:1:00", _events(range(4, 7)))
    )
    (spool / f"{time.time_ns():020d}-{dead_pid}-2.batch.tmp").write_bytes(b"\x93\x01")  # torn write
    pub = Publisher(redis_url, "next-life", heartbeat_interval_s=10**6, spool_dir=spool)
    try:
        assert pub.flush(10)
    finally:
        pub.close(5)
    entries = redis_client.xrange(stream_key(0))
    old = [msgpack.unpackb(f[ENTRY_FIELD], raw=False) for _, f in entries]
    old_seqs = [e["seq"] for b in old if b["src"] == "old:h:1:00" for e in b["events"]]
    assert old_seqs == [1, 2, 3, 4, 5, 6]  # the claimed batch first: it is older
    assert [p.name for p in spool.iterdir()] == [".lock"]


@pytest.mark.timeout(30)
def test_spooled_batches_go_to_their_own_sources_partition(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    partitions = 4
    spool = tmp_path / "spool"
    down = f"redis://127.0.0.1:{free_port()}/0"
    writers = [
        Publisher(down, f"svc{i}", partitions=partitions, heartbeat_interval_s=10**6, spool_dir=spool)
        for i in range(8)
    ]
    for w in writers:
        w.emit("container.health_check_failed", {"pool_id": "p"})
        w.close(2)
    assert len({w.partition for w in writers}) > 1
    sender = Publisher(
        redis_url, "sender", partitions=partitions, heartbeat_interval_s=10**6, spool_dir=spool
    )
    try:
        assert sender.flush(10)
    finally:
        sender.close(5)
    for w in writers:
        batches = [
            msgpack.unpackb(f[ENTRY_FIELD], raw=False)
            for _, f in redis_client.xrange(stream_key(partition_of(w.src, partitions)))
        ]
        seqs = [e["seq"] for b in batches if b["src"] == w.src for e in b["events"]]
        assert seqs == [1, 2, 3], (w.src, seqs)  # started, the event, stopped: in its own partition, in order


@pytest.mark.timeout(30)
def test_spooled_batches_keep_their_partition_when_the_partition_count_grows(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A life that spooled with P = 4 and the next life running with P = 8: the spooled batches go
    where their source's earlier batches went (the file names the partition), not where P = 8 puts it."""
    spool = tmp_path / "spool"
    down = f"redis://127.0.0.1:{free_port()}/0"
    writers = [
        Publisher(down, f"svc{i}", partitions=4, heartbeat_interval_s=10**6, spool_dir=spool)
        for i in range(8)
    ]
    for w in writers:
        w.emit("container.health_check_failed", {"pool_id": "p"})
        w.close(2)
    moved = [w for w in writers if partition_of(w.src, 4) != partition_of(w.src, 8)]
    assert moved, "no source would change partition: the test proves nothing"
    named = {int(path.name.rsplit("-p", 1)[1].removesuffix(".batch")) for path in spool.glob("*.batch")}
    assert named == {w.partition for w in writers}  # each file names its source's partition
    sender = Publisher(redis_url, "sender", partitions=8, heartbeat_interval_s=10**6, spool_dir=spool)
    try:
        assert sender.flush(10)
    finally:
        sender.close(5)
    for w in writers:
        batches = [
            msgpack.unpackb(f[ENTRY_FIELD], raw=False)
            for _, f in redis_client.xrange(stream_key(partition_of(w.src, 4)))
        ]
        assert [e["seq"] for b in batches if b["src"] == w.src for e in b["events"]] == [1, 2, 3], w.src
