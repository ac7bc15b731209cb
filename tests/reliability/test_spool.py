"""Spool edge cases: a sender that died mid-send, torn writes, and batches of sources on other partitions."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import redis

from services.embedded import EmbeddedRedis, free_port
from shared.events.codec import ENTRY_FIELD, decode_batch, encode_batch
from shared.events.publisher import Publisher
from shared.events.streams import partition_of, stream_key
from tests.aggregator.harness import aggregator, wait_for
from tests.support.expo import value

P = "boilerhouse_"


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
            decode_batch(f[ENTRY_FIELD])  # numbered as the aggregator numbers them
            for _, f in redis_client.xrange(stream_key(partition_of(w.src, partitions)))
        ]
        seqs = [e["seq"] for b in batches if b.src == w.src for e in b.events]
        assert seqs == [1, 2, 3], (w.src, seqs)  # started, the event, stopped: in its own partition, in order


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB filesystem (tmpfs; the tests run as root) for a spool that fills up; unmounted after."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a 64 KiB tmpfs (the tests need root): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.timeout(90)
def test_a_full_spool_disk_drops_and_counts_events_leaves_no_temp_files_and_logs_once(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11, item 10: Redis down, the spool's disk full. What does not fit is dropped before it takes
    a sequence number and reported in ``events.dropped``: dropped + folded = emitted, no ``seq_gap``."""
    caplog.set_level(logging.INFO, logger="shared.events.publisher")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    pub = Publisher(
        url,
        "spooler",
        heartbeat_interval_s=10**6,
        buffer_size=2_000,
        flush_interval_s=0.01,
        spool_dir=small_disk,
    )
    server = EmbeddedRedis(workdir=tmp_path / "redis", port=port, allow_fake=False)
    emitted = 0
    try:
        # Redis is down: batches go to the 64 KiB spool until it is full, then stay in memory.
        for _ in range(60):
            for _ in range(250):
                pub.emit("container.health_check_failed", {"pool_id": "p"})
                emitted += 1
            time.sleep(0.01)
        assert list(small_disk.glob("*.batch")), "some batches were spooled before the disk filled"
        temp_files = sorted(p.name for p in small_disk.iterdir() if p.name.endswith(".tmp"))

        server.start()
        with aggregator(url) as agg:
            assert pub.flush(30)
            # A last event: once it is folded, everything before it in the source's sequence was too
            # (or shows as a gap in front of it).
            pub.emit("affinity.evicted", {"pool_id": "last"})
            assert pub.flush(10)
            s = wait_for(
                agg.url,
                lambda s: value(s, f"{P}affinity_evictions_total", pool_id="last") == 1,
                what="the last event folded",
            )
        lost = {
            dict(labels)["reason"]: v for (name, labels), v in s.items() if name == f"{P}events_lost_total"
        }
        assert lost == {}, f"events lost to the full disk must count as dropped, not {lost}"
        folded = value(s, f"{P}container_health_check_failures_total", pool_id="p")
        dropped = value(s, f"{P}events_dropped_total", service="spooler")
        assert folded and dropped and folded + dropped == emitted
        assert dropped == pub.dropped
        assert temp_files == [], "a refused write leaves no temp file behind"
    finally:
        pub.close(5)
        server.stop()
    assert [p.name for p in small_disk.iterdir()] == [".lock"], "spool sent and emptied, no temp files left"
    refusals = [r for r in caplog.records if "cannot write to the spool" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "No space left on device" in refusals[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


@pytest.mark.timeout(30)
def test_a_full_spool_disk_at_shutdown_is_logged_as_lost_without_a_traceback(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.events.publisher")
    (small_disk / "filler").write_bytes(b"\0" * 60_000)  # leaves less than one batch of room
    pub = Publisher(
        f"redis://127.0.0.1:{free_port()}/0", "closer", heartbeat_interval_s=10**6, spool_dir=small_disk
    )
    for _ in range(2_000):
        pub.emit("container.health_check_failed", {"pool_id": "p"})
    pub.close(3)
    assert not list(small_disk.glob("*.tmp")), "the partial write was removed"
    shutdown = [r.getMessage() for r in caplog.records if "at shutdown" in r.getMessage()]
    assert len(shutdown) == 1 and "lost, the spool refused them" in shutdown[0], shutdown
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks"


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
            decode_batch(f[ENTRY_FIELD])  # numbered as the aggregator numbers them (version 2: by the header)
            for _, f in redis_client.xrange(stream_key(partition_of(w.src, 4)))
        ]
        assert [e["seq"] for b in batches if b.src == w.src for e in b.events] == [1, 2, 3], w.src
