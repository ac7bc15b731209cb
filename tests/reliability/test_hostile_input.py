"""Hostile input written straight to the stream: dead-lettered, counted, acknowledged; valid metrics unchanged."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from services.aggregator.consumer import DEAD_LETTER_MAXLEN
from shared.events.codec import ENTRY_FIELD
from shared.events.schema import SCHEMA_VERSION
from shared.events.streams import dead_letter_key
from tests.reliability.support import (
    PREFIX,
    STREAM,
    Aggregator,
    by_label,
    comparable,
    diff,
    producer,
    total,
    wait_caught_up,
    wait_exit,
)

#: One hostile entry: its fields and the dead-letter reason it must get.
Hostile = tuple[dict[bytes, bytes], str]

PER_KIND = 550


def _entry(doc: Any) -> dict[bytes, bytes]:
    return {ENTRY_FIELD: msgpack.packb(doc, use_bin_type=True)}


def _batch(i: int, event: Any, v: Any = 1) -> dict[bytes, bytes]:
    return _entry({"v": v, "src": f"hostile:h:{i}:00", "events": [event]})


def _event(type_: str = "container.health_check_failed", **fields: Any) -> dict[str, Any]:
    return {"type": type_, "seq": 1, "ts": time.time(), **fields}


def hostile_entries(rng: random.Random) -> Iterator[Hostile]:
    """Every kind of bad entry, PER_KIND of each (fewer of the huge ones), with the reason it must get."""
    for i in range(1, PER_KIND + 1):
        # garbage bytes: 0xc1 is never used by msgpack
        yield {ENTRY_FIELD: b"\xc1" + rng.randbytes(rng.randrange(0, 200))}, "undecodable"
        # wrong types at the top: not a map, version not an int, src not a string, events not a list
        yield _entry(rng.choice([[1, 2, 3], "batch", 42, None, 1.5])), "bad_envelope"
        yield _entry({"v": "1", "src": f"h:{i}", "events": [_event()]}), "bad_envelope"
        yield (
            _entry({"v": 1, "src": rng.choice([7, b"bytes-src", "", "x" * 500]), "events": [_event()]}),
            "bad_envelope",
        )
        yield _entry({"v": 1, "src": f"h:{i}", "events": rng.choice([{}, [], "events", 3])}), "bad_envelope"
        # future schema versions
        yield _batch(i, _event(), v=rng.randrange(SCHEMA_VERSION + 1, 1000)), "future_version"
        # no payload field at all
        yield {b"x": rng.randbytes(20)}, "missing_field"
        # events that are not maps, unknown types, bad envelopes of events
        yield _batch(i, rng.choice([17, "event", [1, 2], None])), "bad_event"
        yield (
            _batch(i, _event(rng.choice(["container.exploded", "", "DROP TABLE", "pool.state.v2"]))),
            "unknown_type",
        )
        yield _batch(i, {**_event(pool_id="p"), "seq": rng.choice(["1", 0, -5, 1.5, None])}), "bad_event"
        yield _batch(i, {**_event(pool_id="p"), "ts": rng.choice(["now", -1, 1e13, None])}), "bad_event"
        # missing fields, wrong field types, bad label values, absurd field values
        yield (
            _batch(i, _event("container.acquired", pool_id="p", status="success", duration_s=1.0)),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    "container.acquired", pool_id="p", status="success", duration_s="fast", affinity="hit"
                ),
            ),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    pool_id=rng.choice(["bad pool", "", "x" * 100, "pool\n", "p\u00fcl", "-p", "a{b}", 5])
                ),
            ),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    "http.request",
                    method=rng.choice(["BREW", "get", ""]),
                    path="/x",
                    status=200,
                    duration_s=0.1,
                ),
            ),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    "http.request",
                    method="GET",
                    path=rng.choice(["/x?y=1", "no-slash", "/" * 300, "/a b"]),
                    status=200,
                    duration_s=0.1,
                ),
            ),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    "container.released",
                    pool_id="p",
                    status="success",
                    duration_s=rng.choice([float("nan"), float("inf"), -1.0]),
                ),
            ),
            "invalid_field",
        )
        yield (
            _batch(
                i,
                _event(
                    "sync.finished",
                    workload_id="w",
                    direction="up",
                    mode="sync",
                    status="success",
                    duration_s=1.0,
                    bytes=1,
                    files=1,
                ),
            ),
            "invalid_field",
        )
        # a map with a non-string key and no source
        yield {ENTRY_FIELD: msgpack.packb({1: 2, "v": 1})}, "bad_envelope"
    for _ in range(10):
        # absurd sizes: over the 1 MiB entry limit, and more events than a batch may hold
        yield {ENTRY_FIELD: b"\x91" + rng.randbytes((1 << 20) + 1000)}, "too_large"
        events = [_event(pool_id="p") for _ in range(10_001)]
        yield _entry({"v": 1, "src": "h:big", "events": events}), "too_large"
        # nesting deeper than any decoder stack
        yield {ENTRY_FIELD: b"\x91" * 100_000 + b"\xc0"}, "undecodable"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_entries_are_dead_lettered_counted_and_change_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    agg = Aggregator(tmp_path, redis_url).start()
    try:
        prod, _ = producer(tmp_path, redis_url, "producer", "--events", "5000", "--seed", "3")
        wait_exit(prod, timeout=60)
        wait_caught_up(redis_client, "aggregator")
        before = agg.samples()

        entries = list(hostile_entries(random.Random(99)))
        expected = Counter(reason for _, reason in entries)
        assert len(entries) >= 10_000
        assert len(expected) >= 8
        killed = False
        ids: list[bytes] = []
        for n in range(0, len(entries), 500):
            pipe = redis_client.pipeline(transaction=False)
            for fields, _ in entries[n : n + 500]:
                pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
            ids += pipe.execute()
            if not killed and n >= len(entries) // 2:
                agg.kill()  # a crash half way must not duplicate or lose dead letters
                agg.start()
                killed = True
        wait_caught_up(redis_client, "aggregator", timeout=120)
        assert agg.alive()
        after = agg.samples()
    finally:
        agg.stop()

    dead = by_label(after, PREFIX + "aggregator_dead_letters_total", "reason")
    assert dead == {r: float(c) for r, c in expected.items()}
    # The dead-letter stream keeps the newest DEAD_LETTER_MAXLEN (approximate trim, so a little more):
    # exactly the newest hostile entries, each once, across the crash.
    letters = redis_client.xrange(dead_letter_key(0))
    assert DEAD_LETTER_MAXLEN <= len(letters) < DEAD_LETTER_MAXLEN + 200 < len(entries)
    assert [f[b"entry_id"] for _, f in letters] == ids[-len(letters) :]
    reasons = Counter(f[b"reason"].decode() for _, f in letters)
    assert reasons == Counter(reason for _, reason in entries[-len(letters) :])
    dead_name = PREFIX + "aggregator_dead_letters_total"
    a = {k: v for k, v in comparable(before).items() if k[0] != dead_name}
    b = {k: v for k, v in comparable(after).items() if k[0] != dead_name}
    assert a == b, diff(a, b)
    assert total(after, PREFIX + "events_lost_total") == 0


@pytest.mark.timeout(60)
def test_absurd_but_valid_numbers_do_not_stop_checkpoints(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Counters past 2**64 (msgpack's integer range) must still checkpoint, and survive a restart."""
    agg = Aggregator(tmp_path, redis_url).start()
    try:
        huge = 2**64 - 1
        for seq in (1, 2, 3):
            ev = {"type": "events.dropped", "seq": seq, "ts": time.time(), "count": huge}
            redis_client.xadd(STREAM, _entry({"v": 1, "src": "big:h:1:00", "events": [ev]}))
        wait_caught_up(redis_client, "aggregator", timeout=20)
        assert total(agg.samples(), PREFIX + "events_dropped_total") == float(3 * huge)
        agg.kill()
        agg.start()
        assert total(agg.samples(), PREFIX + "events_dropped_total") == float(3 * huge)
    finally:
        agg.stop()
