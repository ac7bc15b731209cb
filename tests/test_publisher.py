"""Publisher against real redis-servers: unreachable, killed, slow; threads and asyncio; drop reports."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import msgpack
import pytest
import redis

from services.embedded import EmbeddedRedis, free_port
from shared.events.codec import MAX_ENTRY_BYTES, MAX_EVENTS_PER_BATCH, decode_batch
from shared.events.publisher import Publisher
from shared.events.streams import stream_key
from tests.aggregator.harness import aggregator, wait_for
from tests.support.expo import value
from tests.support.wait import wait_until

P = "boilerhouse_"
#: Bound for one emit() call, whatever Redis is doing. A call is ~1 µs normally, and a call that
#: waited for Redis would wait for what these tests provoke: a 1 s DEBUG SLEEP, a socket timeout
#: (1-2 s) or the reconnect backoff (up to 5 s). Between the two sit stalls that are not emit()'s:
#: on a loaded 2-core machine the OS can deschedule the thread holding the GIL, and one call then
#: waits for it (103 ms seen with three CPU hogs; 50 ms was too tight).
EMIT_BOUND_S = 0.25
ACQUIRED = {"pool_id": "p", "status": "success", "duration_s": 0.1, "affinity": "miss"}


def private_redis(tmp_path: Path, port: int | None = None, *extra: str) -> EmbeddedRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./scripts/install-system-deps.sh (make test does)")
    return EmbeddedRedis(
        workdir=tmp_path / "redis",
        port=port,
        binary=binary,
        allow_fake=False,
        appendonly=True,
        extra_args=("--appendfsync", "always", *extra),
    )


def emit_timed(pub: Publisher, n: int) -> float:
    """Emit ``n`` events; return the slowest single call."""
    worst = 0.0
    perf = time.perf_counter
    for _ in range(n):
        t0 = perf()
        pub.emit("container.acquired", dict(ACQUIRED))
        worst = max(worst, perf() - t0)
    return worst


def stream_events(client: redis.Redis, src: str) -> list[dict]:
    out = []
    for _, fields in client.xrange("boilerhouse:events:{0}"):
        batch = decode_batch(fields[b"b"])
        if batch.src == src:
            out += batch.events
    return out


@pytest.fixture
def down_url() -> tuple[int, str]:
    port = free_port()
    return port, f"redis://127.0.0.1:{port}/0"


def test_unreachable_redis_never_raises_never_blocks_and_reports_drops_later(
    tmp_path: Path, down_url: tuple[int, str]
) -> None:
    port, url = down_url
    cap = 1000
    pub = Publisher(url, "offline", buffer_size=cap, heartbeat_interval_s=3600, flush_interval_s=0.01)
    try:
        worst = emit_timed(pub, 5000)
        time.sleep(0.3)  # let the flusher fail a few connection attempts
        worst = max(worst, emit_timed(pub, 1000))
        assert worst < EMIT_BOUND_S, f"one emit() took {worst * 1000:.1f} ms with Redis unreachable"
        assert not pub.connected
        assert pub.buffered() == cap, "the buffer is bounded"
        # source.started took one slot; everything beyond the cap was dropped and counted.
        assert pub.dropped == 1 + 6000 - cap
        assert not pub.flush(0.2), "nothing can be written yet"

        with private_redis(tmp_path, port) as server:  # Redis appears on that port
            assert pub.flush(20), "buffer not flushed after Redis came up"
            with aggregator(server.url) as agg:
                s = wait_for(
                    agg.url,
                    lambda x: value(x, f"{P}events_dropped_total", service="offline") is not None,
                    what="drop report",
                )
                assert value(s, f"{P}events_dropped_total", service="offline") == pub.dropped
                assert value(s, f"{P}aggregator_events_applied_total", type="container.acquired") == cap - 1
                assert value(s, f"{P}aggregator_events_applied_total", type="source.started") == 1
                assert not any(n == f"{P}events_lost_total" for n, _ in s), "drops are reported, not gaps"
    finally:
        pub.close(1)


def test_redis_killed_mid_run_then_restarted(tmp_path: Path) -> None:
    server = private_redis(tmp_path).start()
    cap = 500
    pub = Publisher(server.url, "crashy", buffer_size=cap, heartbeat_interval_s=3600, flush_interval_s=0.01)
    try:
        emit_timed(pub, 200)
        assert pub.flush(10) and pub.connected
        server.kill()  # SIGKILL, no warning
        worst = emit_timed(pub, 2000)
        assert worst < EMIT_BOUND_S, f"one emit() took {worst * 1000:.1f} ms while Redis was dead"
        wait_until(lambda: not pub.connected, "the publisher notices Redis is gone", within_s=10)
        # The drop report may bypass the cap by one event, if the flusher had not yet noticed the crash.
        assert pub.buffered() <= cap + 1
        dropped = pub.dropped
        assert 2000 - cap <= dropped <= 2000 - cap + 1

        server.start()  # same port, same AOF: the 201 events sent before the crash are still there
        assert pub.flush(20)
        with aggregator(server.url) as agg:
            s = wait_for(
                agg.url,
                lambda x: value(x, f"{P}events_dropped_total", service="crashy") is not None,
                what="drop report",
            )
        assert value(s, f"{P}events_dropped_total", service="crashy") == dropped == pub.dropped
        assert (
            value(s, f"{P}aggregator_events_applied_total", type="container.acquired") == 200 + 2000 - dropped
        )
        assert not any(n == f"{P}events_lost_total" for n, _ in s)
        client = redis.Redis.from_url(server.url, protocol=2)
        seqs = [ev["seq"] for ev in stream_events(client, pub.src)]
        client.close()
        assert seqs == list(range(1, len(seqs) + 1)), "seq is gapless across the outage"
    finally:
        pub.close(1)
        server.cleanup()


def test_emit_does_not_wait_for_a_slow_redis(tmp_path: Path) -> None:
    """A server blocked in DEBUG SLEEP: the flusher waits, callers do not."""
    server = private_redis(tmp_path, None, "--enable-debug-command", "local").start()
    pub = Publisher(server.url, "slow", heartbeat_interval_s=3600, flush_interval_s=0.01)
    client = redis.Redis.from_url(server.url, protocol=2)
    try:
        assert pub.flush(10)
        sleeper = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", "1.0"))
        sleeper.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        worst = emit_timed(pub, 3000)
        elapsed = time.monotonic() - t0
        sleeper.join()
        assert worst < EMIT_BOUND_S and elapsed < 0.9, (worst, elapsed)
        assert pub.flush(10)
        assert len(stream_events(client, pub.src)) == 1 + 3000
    finally:
        pub.close(1)
        client.close()
        server.cleanup()


def test_close_with_redis_down_respects_its_deadline(down_url: tuple[int, str]) -> None:
    _, url = down_url
    pub = Publisher(url, "closing", heartbeat_interval_s=3600)
    pub.emit("source.heartbeat", {})
    t0 = time.monotonic()
    pub.close(timeout=0.5)
    assert time.monotonic() - t0 < 3.0
    assert pub.buffered() > 0  # lost, and logged; nothing raised


def test_threads_and_asyncio_emit_concurrently(redis_url: str, redis_client: redis.Redis) -> None:
    pub = Publisher(redis_url, "concurrent", heartbeat_interval_s=3600, flush_interval_s=0.005)
    per_thread, n_threads, per_task, n_tasks = 3000, 4, 500, 5

    def worker() -> None:
        for _ in range(per_thread):
            pub.emit("container.acquired", dict(ACQUIRED))

    async def task() -> None:
        for _ in range(per_task):
            pub.emit("affinity.evicted", {"pool_id": "p"})
            await asyncio.sleep(0)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]

    async def async_part() -> None:
        for t in threads:
            t.start()
        await asyncio.gather(*(task() for _ in range(n_tasks)))
        for t in threads:
            await asyncio.to_thread(t.join)
        await pub.aclose()  # flushes and publishes source.stopped, from asyncio code

    asyncio.run(async_part())
    events = stream_events(redis_client, pub.src)
    types = [ev["type"] for ev in events]
    assert types.count("affinity.evicted") == per_task * n_tasks
    assert types.count("container.acquired") == per_thread * n_threads
    assert types[0] == "source.started" and types[-1] == "source.stopped"
    assert len(events) == 2 + per_task * n_tasks + per_thread * n_threads
    assert [ev["seq"] for ev in events] == list(range(1, len(events) + 1)), "one gapless sequence"
    assert pub.dropped == 0


def test_batches_many_events_per_entry(redis_url: str, redis_client: redis.Redis) -> None:
    pub = Publisher(redis_url, "batcher", heartbeat_interval_s=3600, batch_size=500, flush_interval_s=0.05)
    try:
        for _ in range(5000):
            pub.emit("container.acquired", dict(ACQUIRED))
        assert pub.flush(10)
        entries = redis_client.xrange("boilerhouse:events:{0}")
        assert pub.sent_events == 5001
        assert len(entries) <= 5001 // 100, f"{len(entries)} entries for 5001 events"
        assert all(len(msgpack.unpackb(f[b"b"])["events"]) <= 500 for _, f in entries)
    finally:
        pub.close(1)


def test_a_batch_size_the_aggregator_would_refuse_is_a_clear_error(redis_url: str) -> None:
    # The aggregator dead-letters an entry of more than MAX_EVENTS_PER_BATCH events as too_large.
    for bad in (0, -1, MAX_EVENTS_PER_BATCH + 1):
        with pytest.raises(ValueError, match=f"batch_size must be 1..{MAX_EVENTS_PER_BATCH}"):
            Publisher(redis_url, "batcher", batch_size=bad)


def test_the_largest_batch_size_is_read_whole(redis_url: str, redis_client: redis.Redis) -> None:
    # The flusher lingers (until flush() below) while the events are emitted, so that full batches form:
    # with the default 5 ms linger it takes whatever was emitted by then.
    pub = Publisher(
        redis_url, "batcher", heartbeat_interval_s=3600, batch_size=MAX_EVENTS_PER_BATCH, linger_s=5.0
    )
    try:
        for _ in range(2 * MAX_EVENTS_PER_BATCH + 5):
            pub.emit("container.acquired", dict(ACQUIRED))
        assert pub.flush(20)
        entries = [decode_batch(f[b"b"]) for _, f in redis_client.xrange("boilerhouse:events:{0}")]
        assert max(len(b.events) for b in entries) == MAX_EVENTS_PER_BATCH
        assert sum(len(b.events) for b in entries) == pub.sent_events == 2 * MAX_EVENTS_PER_BATCH + 6
    finally:
        pub.close(1)


def test_entries_are_written_all_or_nothing_and_an_oom_refusal_is_retried(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Each round trip of entries is one MULTI/EXEC: a refusal (here OOM) of any XADD aborts them all, so a
    retried entry can never land after its successor (where the aggregator would skip it as a duplicate)."""
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1)  # every write refused: Redis is "out of memory"
    before = redis_client.info("commandstats")
    pub = Publisher(redis_url, "atomic", heartbeat_interval_s=10**6, batch_size=10, flush_interval_s=0.01)
    try:
        for i in range(100):
            pub.emit("container.health_check_failed", {"pool_id": f"p{i % 3}"})
        assert not pub.flush(1), "written although Redis refused every write"
        assert redis_client.xlen(stream_key(0)) == 0  # no entry of an aborted transaction was applied
        redis_client.config_set("maxmemory", 0)
        assert pub.flush(10)
    finally:
        pub.close()
        redis_client.config_set("maxmemory", 0)
    after = redis_client.info("commandstats")
    calls = {k: after.get(f"cmdstat_{k}", {}).get("calls", 0) - before.get(f"cmdstat_{k}", {}).get("calls", 0)
             for k in ("multi", "exec", "xadd")}  # fmt: skip
    assert calls["multi"] == calls["exec"] >= 2 and calls["xadd"] > 0
    seqs = [ev["seq"] for _, f in redis_client.xrange(stream_key(0)) for ev in decode_batch(f[b"b"]).events]
    assert (
        seqs == list(range(1, len(seqs) + 1)) and len(seqs) == 102
    )  # started, 100 events, stopped: once each


def test_no_entry_is_larger_than_the_aggregator_reads_and_an_event_too_large_alone_is_dropped(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Batches that encode larger than MAX_ENTRY_BYTES are split; an event larger on its own is never
    written but dropped and reported like any drop: the aggregator dead-letters nothing and sees no gap."""
    pub = Publisher(redis_url, "bulky", heartbeat_interval_s=3600, batch_size=5000, flush_interval_s=0.05)
    try:
        pad = "x" * 2000  # an unknown field: ignored by the aggregator, but it makes entries large
        for i in range(3000):
            pub.emit("container.acquired", {**ACQUIRED, "pad": pad})
            if i == 1500:
                pub.emit("container.acquired", {**ACQUIRED, "pad": "y" * (MAX_ENTRY_BYTES + 1)})
        assert pub.flush(20)
        sizes = [len(f[b"b"]) for _, f in redis_client.xrange(stream_key(0))]
        assert max(sizes) <= MAX_ENTRY_BYTES and sum(sizes) > 5 * MAX_ENTRY_BYTES, sizes
        events = stream_events(redis_client, pub.src)
        assert [ev["seq"] for ev in events] == list(range(1, len(events) + 1)), "one gapless sequence"
        assert sum(ev["type"] == "container.acquired" for ev in events) == 3000
        assert pub.dropped == 1
        with aggregator(redis_url) as agg:
            s = wait_for(
                agg.url,
                lambda x: value(x, f"{P}events_dropped_total", service="bulky") is not None,
                what="the drop reported",
            )
            assert value(s, f"{P}events_dropped_total", service="bulky") == 1
            assert value(s, f"{P}aggregator_events_applied_total", type="container.acquired") == 3000
            assert not any(n == f"{P}aggregator_dead_letters_total" for n, _ in s), "nothing too large"
            assert not any(n == f"{P}events_lost_total" for n, _ in s), "a drop, not a gap"
    finally:
        pub.close(1)
