"""Redis outages: restarts lose nothing; outages longer than the buffer count every drop; a spool loses nothing."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.publisher import Publisher
from shared.events.streams import checkpoint_key
from tests.reliability.support import (
    PREFIX,
    STREAM,
    Aggregator,
    by_label,
    group_info,
    private_redis,
    producer,
    read_report,
    total,
    wait_caught_up,
    wait_exit,
)
from tests.support.wait import wait_until


def _expect_all_applied(agg: Aggregator, emitted: Counter[str]) -> None:
    samples = agg.samples()
    applied = by_label(samples, PREFIX + "aggregator_events_applied_total", "type")
    assert applied == {t: float(n) for t, n in emitted.items()}
    assert total(samples, PREFIX + "events_lost_total") == 0
    assert total(samples, PREFIX + "aggregator_dead_letters_total") == 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_redis_killed_and_restarted_while_producers_emit(tmp_path: Path) -> None:
    """Redis (AOF, appendfsync always) is SIGKILLed twice under load: every event is folded exactly once."""
    rng = random.Random(4)
    server = private_redis(tmp_path / "redis").start()
    agg = Aggregator(tmp_path, server.url).start()
    producers = [
        producer(
            tmp_path,
            server.url,
            f"producer{i}",
            "--events",
            "30000",
            "--seed",
            str(i),
            "--rate",
            "5000",
            "--batch-size",
            "50",
            "--sources",
            "2",
            "--service",
            f"p{i}-",
        )
        for i in range(2)
    ]
    try:
        for _ in range(2):
            time.sleep(rng.uniform(1.0, 2.0))
            server.kill()
            time.sleep(rng.uniform(0.5, 1.5))
            server.start()
        for proc, _ in producers:
            wait_exit(proc, timeout=90)
        client = redis.Redis.from_url(server.url, protocol=2)
        wait_caught_up(client, "aggregator", timeout=60)
        client.close()
        emitted: Counter[str] = Counter()
        for _, report_path in producers:
            report = read_report(report_path)
            assert report["dropped"] == 0 and report["unsent"] == 0, report
            emitted.update(report["emitted"])
        assert agg.alive()
        _expect_all_applied(agg, emitted)
        assert "event bus unreachable" in "".join(p.output() for p, _ in producers)  # the outage was felt
    finally:
        agg.stop()
        server.cleanup()


@pytest.mark.timeout(120)
def test_outage_longer_than_the_buffer_counts_every_drop(tmp_path: Path) -> None:
    server = private_redis(tmp_path / "redis").start()
    agg = Aggregator(tmp_path, server.url).start()
    pub = Publisher(server.url, "dropper", buffer_size=1000, batch_size=100, heartbeat_interval_s=10**6)
    emitted = 1  # source.started
    try:
        for _ in range(500):
            pub.emit("container.health_check_failed", {"pool_id": "before"})
        emitted += 500
        assert pub.flush(10)
        server.kill()
        for _ in range(5000):
            pub.emit("container.health_check_failed", {"pool_id": "during"})
        emitted += 5000
        time.sleep(0.5)
        server.start()
        assert pub.flush(20)
        pub.close(10)
        emitted += 1  # source.stopped
        client = redis.Redis.from_url(server.url, protocol=2)
        wait_caught_up(client, "aggregator", timeout=30)
        client.close()
        samples = agg.samples()
    finally:
        agg.stop()
        server.cleanup()
    assert 3000 <= pub.dropped <= 4000, pub.dropped  # the buffer holds 1000, the rest was dropped
    dropped = total(samples, PREFIX + "events_dropped_total", service="dropper")
    applied = by_label(samples, PREFIX + "aggregator_events_applied_total", "type")
    folded = sum(applied.values()) - applied["events.dropped"]
    assert dropped == pub.dropped
    assert dropped == emitted - folded
    assert applied["events.dropped"] == 1  # reported once, when the bus came back
    assert total(samples, PREFIX + "events_lost_total") == 0
    assert (
        total(samples, PREFIX + "container_health_check_failures_total", pool_id="during") == 5000 - dropped
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_spool_loses_nothing_across_an_outage_and_a_producer_restart(tmp_path: Path) -> None:
    """Producer 1 runs and exits while Redis is down; producer 2 sends its spool once Redis is back."""
    spool = tmp_path / "spool"
    server = private_redis(tmp_path / "redis")
    url = server.url  # the port is fixed; nothing listens yet
    first, first_report = producer(
        tmp_path,
        url,
        "producer1",
        "--events",
        "6000",
        "--seed",
        "11",
        "--rate",
        "3000",
        "--buffer-size",
        "500",
        "--batch-size",
        "50",
        "--spool-dir",
        str(spool),
        "--close-all",
        "--close-timeout",
        "2",
    )
    wait_exit(first, timeout=60)
    report1 = read_report(first_report)
    assert report1["dropped"] == 0, report1
    assert list(spool.glob("*.batch")), "nothing was spooled"
    assert not list(spool.glob("*.tmp")) and not list(spool.glob("*.sending-*"))
    server.start()
    agg = Aggregator(tmp_path, server.url).start()
    try:
        second, second_report = producer(
            tmp_path,
            url,
            "producer2",
            "--events",
            "6000",
            "--seed",
            "12",
            "--rate",
            "6000",
            "--batch-size",
            "50",
            "--spool-dir",
            str(spool),
        )
        wait_exit(second, timeout=60)
        report2 = read_report(second_report)
        assert report2["sent_spooled_entries"] > 0 and report2["dropped"] == 0, report2
        assert not [p for p in spool.iterdir() if p.name != ".lock"], "spool not emptied"
        client = redis.Redis.from_url(server.url, protocol=2)
        wait_caught_up(client, "aggregator", timeout=30)
        client.close()
        emitted = Counter(report1["emitted"]) + Counter(report2["emitted"])
        _expect_all_applied(agg, emitted)
    finally:
        agg.stop()
        server.cleanup()


@pytest.mark.timeout(60)
def test_entries_whose_read_reply_was_lost_are_still_applied(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """XREADGROUP moved entries into our pending list, then the connection broke before the reply arrived.

    Reproduced exactly: the test reads the entries as the aggregator's consumer (shard-0) in the same
    transaction that adds them, so the aggregator never sees them, then kills its connections.
    """
    agg = Aggregator(tmp_path, redis_url).start()
    try:
        pipe = redis_client.pipeline(transaction=True)
        payloads = []
        for i in range(1, 4):
            ev = {"type": "container.health_check_failed", "seq": i, "ts": time.time(), "pool_id": "stolen"}
            payloads.append(encode_batch("thief:host:1:ab", [ev]))
            pipe.xadd(STREAM, {ENTRY_FIELD: payloads[-1]})
        pipe.xreadgroup("aggregator", "shard-0", {STREAM: ">"}, count=10)
        *_, delivered = pipe.execute()
        assert len(delivered[0][1]) == 3
        assert group_info(redis_client, "aggregator")["pending"] == 3
        redis_client.client_kill_filter(_type="normal", skipme=True)
        wait_caught_up(redis_client, "aggregator", timeout=20)
        samples = agg.samples()
        assert total(samples, PREFIX + "container_health_check_failures_total", pool_id="stolen") == 3
        assert total(samples, PREFIX + "events_lost_total") == 0
    finally:
        agg.stop()


@pytest.mark.timeout(90)
def test_redis_losing_all_its_data_does_not_reset_counters(tmp_path: Path) -> None:
    """Redis without persistence restarts empty: the running aggregator writes its state back, creates
    the group again and counts on; a crash afterwards restores that state (counters never go back)."""
    server = private_redis(tmp_path / "redis", aof=False).start()
    agg = Aggregator(tmp_path, server.url).start()
    pub = Publisher(server.url, "amnesia", heartbeat_interval_s=10**6)
    client = redis.Redis.from_url(server.url, protocol=2)
    try:
        for _ in range(1000):
            pub.emit("container.health_check_failed", {"pool_id": "p"})
        assert pub.flush(10)
        wait_caught_up(client, "aggregator")
        server.kill()
        server.start()
        assert client.dbsize() == 0
        # Written back with no new event:
        wait_until(
            lambda: client.exists(checkpoint_key(0, "aggregator")),
            "the state written back after Redis lost it",
        )
        agg.kill()
        agg.start()
        assert total(agg.samples(), PREFIX + "container_health_check_failures_total") == 1000
        for _ in range(500):
            pub.emit("container.health_check_failed", {"pool_id": "p"})
        assert pub.flush(20)
        wait_caught_up(client, "aggregator", timeout=30)
        samples = agg.samples()
    finally:
        pub.close(2)
        client.close()
        agg.stop()
        server.cleanup()
    assert total(samples, PREFIX + "container_health_check_failures_total") == 1500
    assert total(samples, PREFIX + "events_lost_total") == 0
