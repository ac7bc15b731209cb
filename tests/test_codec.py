"""Codec unit tests: round trip, garbage, future versions, wrong types, limits, per-field validation."""

from __future__ import annotations

import math
import time
from typing import Any

import msgpack
import pytest

from shared.events.codec import (
    FAST_VALIDATORS,
    MAX_ENTRY_BYTES,
    MAX_EVENTS_PER_BATCH,
    MAX_SRC_LEN,
    MAX_STR_LEN,
    EventDecodeError,
    Oversized,
    decode_batch,
    encode_batch,
    encode_entries,
    explain_invalid,
    validate_event,
)
from shared.events.schema import EVENT_TYPES, SCHEMA_VERSION, UNMATCHED_PATH, EventType, Field

SRC = "test:host:1:abcd"


def valid_value(f: Field) -> Any:
    if f.choices is not None:
        return min(f.choices)
    if f.kind == "id":
        return "pool-1"
    if f.kind == "trace_id":
        return "4bf92f3577b34da6a3ce929d0e0e4736"
    if f.name == "path":
        return "/api/v1/pools/{pool_id}"
    if f.kind == "str":
        return "text"
    if f.kind == "int":
        return int(f.minimum or 0) + 200 if f.minimum else 3
    return 0.25


def valid_event(et: EventType, seq: int = 1) -> dict[str, Any]:
    return {"type": et.name, "seq": seq, "ts": time.time(), **{f.name: valid_value(f) for f in et.fields}}


def raw(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def reason_of(payload: Any) -> str:
    with pytest.raises(EventDecodeError) as info:
        decode_batch(payload, "1-0")
    assert info.value.entry_id == "1-0"
    assert info.value.reason in str(info.value) and "1-0" in str(info.value)
    return info.value.reason


# ---- envelope ----------------------------------------------------------------------------------------


def test_round_trip_every_event_type() -> None:
    events = [valid_event(et, i + 1) for i, et in enumerate(EVENT_TYPES)]
    batch = decode_batch(encode_batch(SRC, events))
    assert batch.src == SRC and batch.version == 1
    assert batch.events == events
    assert all(validate_event(ev) is None for ev in batch.events)


def test_version_2_numbers_events_from_the_header_and_reads_as_version_1() -> None:
    """The same events, version 2 (first seq in the header, none per event) and version 1: the
    aggregator reads the same event maps."""
    assert SCHEMA_VERSION == 2
    v1 = [valid_event(et, 41 + i) for i, et in enumerate(EVENT_TYPES)]
    v2 = [{k: v for k, v in ev.items() if k != "seq"} for ev in v1]
    payload = encode_batch(SRC, [dict(ev) for ev in v2], 41)
    assert msgpack.unpackb(payload) == {"v": 2, "src": SRC, "seq": 41, "events": v2}
    assert b"\xa3seq" not in payload.split(b"\xa6events", 1)[1], "no seq key in the events"
    batch = decode_batch(payload)
    assert batch.version == 2 and batch.events == v1 == decode_batch(encode_batch(SRC, v1)).events
    assert len(payload) < len(encode_batch(SRC, v1))


def test_version_2_events_keep_their_place_whatever_they_hold() -> None:
    """An element that is not a map still uses up its number; a seq written in an event is ignored."""
    ev = {"type": "source.heartbeat", "ts": 1.0}
    batch = decode_batch(
        raw({"v": 2, "src": SRC, "seq": 7, "events": [dict(ev), "junk", [1], {**ev, "seq": 1}]})
    )
    assert batch.events == [{**ev, "seq": 7}, "junk", [1], {**ev, "seq": 10}]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "missing_field"),
        ("a string, not bytes", "missing_field"),
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),  # never-used msgpack byte
        (b"\x92\x01", "undecodable"),  # truncated array
        (b"\x81\x91\x01\x02", "bad_envelope"),  # {[1]: 2}: a map whose key is an array
        (raw({"v": 1, "src": SRC, "events": [{}]}) + b"\x00", "undecodable"),  # trailing bytes
        (raw({1: 1, "src": SRC, "events": [{}]}), "bad_envelope"),
        (
            raw({"v": 1, "src": SRC, "events": [{"type": "ab"}]}).replace(b"\xa2ab", b"\xa2\xff\xfe"),
            "undecodable",
        ),  # invalid UTF-8 in a str
        (raw([1, 2]), "bad_envelope"),
        (raw(7), "bad_envelope"),
        (raw({"src": SRC, "events": [{}]}), "bad_envelope"),
        (raw({"v": 0, "src": SRC, "events": [{}]}), "bad_envelope"),
        (raw({"v": "1", "src": SRC, "events": [{}]}), "bad_envelope"),
        (raw({"v": True, "src": SRC, "events": [{}]}), "bad_envelope"),
        (raw({"v": 1.0, "src": SRC, "events": [{}]}), "bad_envelope"),
        (raw({"v": SCHEMA_VERSION + 1, "src": SRC, "events": [{}]}), "future_version"),
        (raw({"v": 99, "src": SRC, "events": [{}]}), "future_version"),
        (raw({"v": 1, "events": [{}]}), "bad_envelope"),
        (raw({"v": 1, "src": "", "events": [{}]}), "bad_envelope"),
        (raw({"v": 1, "src": "x" * (MAX_SRC_LEN + 1), "events": [{}]}), "bad_envelope"),
        (raw({"v": 1, "src": b"bytes-src", "events": [{}]}), "bad_envelope"),
        (raw({"v": 1, "src": SRC, "events": []}), "bad_envelope"),
        (raw({"v": 1, "src": SRC, "events": {"a": 1}}), "bad_envelope"),
        (raw({"v": 1, "src": SRC}), "bad_envelope"),
        (raw({"v": 2, "src": SRC, "events": [{}]}), "bad_envelope"),  # version 2 without its seq
        (raw({"v": 2, "src": SRC, "seq": 0, "events": [{}]}), "bad_envelope"),
        (raw({"v": 2, "src": SRC, "seq": "1", "events": [{}]}), "bad_envelope"),
        (raw({"v": 2, "src": SRC, "seq": 1.0, "events": [{}]}), "bad_envelope"),
    ],
)
def test_bad_entries_have_a_reason(payload: Any, reason: str) -> None:
    assert reason_of(payload) == reason


def test_limits() -> None:
    ev = {"type": "source.heartbeat", "seq": 1, "ts": 1.0}
    assert len(decode_batch(raw({"v": 1, "src": SRC, "events": [ev] * MAX_EVENTS_PER_BATCH})).events) == (
        MAX_EVENTS_PER_BATCH
    )
    assert reason_of(raw({"v": 1, "src": SRC, "events": [ev] * (MAX_EVENTS_PER_BATCH + 1)})) == "too_large"
    assert decode_batch(raw({"v": 1, "src": "s" * MAX_SRC_LEN, "events": [ev]})).src == "s" * MAX_SRC_LEN
    big = raw({"v": 1, "src": SRC, "events": [ev], "pad": b"\0" * MAX_ENTRY_BYTES})
    assert len(big) > MAX_ENTRY_BYTES and reason_of(big) == "too_large"


def test_older_versions_and_unknown_keys_are_accepted() -> None:
    batch = decode_batch(
        raw(
            {
                "v": 1,
                "src": SRC,
                "events": [{"type": "source.heartbeat", "seq": 1, "ts": 2.0, "added_later": [1, 2]}],
                "extra": "ignored",
            }
        )
    )
    assert validate_event(batch.events[0]) is None


def test_error_carries_data() -> None:
    err = EventDecodeError("undecodable", "ValueError: x", "17-3")
    assert (err.reason, err.detail, err.entry_id) == ("undecodable", "ValueError: x", "17-3")
    assert str(err) == "undecodable in entry 17-3: ValueError: x"
    assert str(EventDecodeError("too_large")) == "too_large"


# ---- events ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([1, 2], "bad_event"),
        ("source.heartbeat", "bad_event"),
        ({"seq": 1, "ts": 1.0}, "unknown_type"),
        ({1: "int key", "seq": 1, "ts": 1.0}, "unknown_type"),
        ({"type": ["unhashable"], "seq": 1, "ts": 1.0}, "unknown_type"),
        ({"type": {"a": 1}, "seq": 1, "ts": 1.0}, "unknown_type"),
        ({"type": "pool.exploded", "seq": 1, "ts": 1.0}, "unknown_type"),
        ({"type": 5, "seq": 1, "ts": 1.0}, "unknown_type"),
        ({"type": "source.heartbeat", "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 0, "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": -3, "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": "1", "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": True, "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 1.0, "ts": 1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 1}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 1, "ts": -1.0}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 1, "ts": 1e11}, "bad_event"),  # milliseconds by mistake
        ({"type": "source.heartbeat", "seq": 1, "ts": math.nan}, "bad_event"),
        ({"type": "source.heartbeat", "seq": 1, "ts": "now"}, "bad_event"),
    ],
)
def test_bad_envelope_keys(event: Any, reason: str) -> None:
    problem = validate_event(event)
    assert problem is not None and problem[0] == reason, problem


def _wrong_type(f: Field) -> Any:
    return 12 if f.kind in ("str", "id", "trace_id") else "12"


#: Strings that are not W3C trace ids: all zero, upper case, too short or long, not hex, a trailing
#: newline (which ``$`` would accept), non-ASCII digits, the W3C invalid version's filler.
BAD_TRACE_IDS = [
    "0" * 32,
    "4BF92F3577B34DA6A3CE929D0E0E4736",
    "4bf92f3577b34da6a3ce929d0e0e473",
    "4bf92f3577b34da6a3ce929d0e0e47360",
    "4bf92f3577b34da6a3ce929d0e0e473g",
    "4bf92f3577b34da6a3ce929d0e0e4736\n",
    "4bf92f3577b34da6a3ce929d0e0e473\u0663",
    "f" * 31 + "-",
    "",
]

CASES: list[tuple[str, str, Any]] = []
for _et in EVENT_TYPES:
    for _f in _et.fields:
        if not _f.optional:
            CASES.append((_et.name, _f.name, None))  # missing
        CASES.append((_et.name, _f.name, _wrong_type(_f)))
        if _f.kind in ("str", "id", "trace_id"):
            CASES.append((_et.name, _f.name, b"bytes are not str"))
        if _f.kind == "trace_id":
            CASES += [(_et.name, _f.name, bad) for bad in BAD_TRACE_IDS]
        if _f.choices is not None:
            CASES.append((_et.name, _f.name, "not-a-choice"))
        if _f.kind == "id":
            CASES += [
                (_et.name, _f.name, "has spaces"),
                (_et.name, _f.name, "x" * 65),
                (_et.name, _f.name, "-leading-dash"),
                (_et.name, _f.name, ""),
            ]
        if _f.kind == "str" and _f.choices is None and _f.name != "path":
            CASES.append((_et.name, _f.name, "x" * (MAX_STR_LEN + 1)))
        if _f.kind in ("int", "float"):
            CASES += [(_et.name, _f.name, True), (_et.name, _f.name, (_f.minimum or 0) - 1)]
        if _f.kind == "int":
            CASES.append((_et.name, _f.name, 3.0))
        if _f.kind == "float":
            CASES += [(_et.name, _f.name, math.inf), (_et.name, _f.name, math.nan)]


@pytest.mark.parametrize(("type_", "field", "bad"), CASES, ids=[f"{t}.{f}={b!r:.20}" for t, f, b in CASES])
def test_every_field_is_validated(type_: str, field: str, bad: Any) -> None:
    et = next(e for e in EVENT_TYPES if e.name == type_)
    ev = valid_event(et)
    assert validate_event(ev) is None
    if bad is None:
        del ev[field]
    else:
        ev[field] = bad
    problem = validate_event(ev)
    assert problem is not None and problem[0] == "invalid_field", (ev, problem)
    assert field in problem[1]
    assert FAST_VALIDATORS[type_](ev) is False, "the fast path must reject what the readable checks reject"


def test_fast_and_readable_validation_agree() -> None:
    """The generated fast validators and the readable checks give the same verdict on valid events too."""
    for et in EVENT_TYPES:
        ev = valid_event(et)
        assert FAST_VALIDATORS[et.name](ev) is True and explain_invalid(ev) is None
        for bad_envelope in ({"seq": 0}, {"seq": True}, {"ts": -1}, {"ts": math.inf}, {"ts": "x"}):
            bad = {**ev, **bad_envelope}
            assert FAST_VALIDATORS[et.name](bad) is False and explain_invalid(bad) is not None


def test_numbers_accept_ints_for_floats_and_optional_nil() -> None:
    ev = valid_event(next(e for e in EVENT_TYPES if e.name == "sync.finished"))
    ev["duration_s"] = 3
    ev["error_type"] = None
    assert validate_event(ev) is None
    del ev["error_type"]
    assert validate_event(ev) is None


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/", True),
        ("/api/v1/tenants/{tenant_id}/claim", True),
        (UNMATCHED_PATH, True),
        ("/api/v1/tenants/abc?x=1", False),
        ("/with space", False),
        ("relative/path", False),
        ("/" + "a" * 200, False),
        ("/a" * 17, False),
    ],
)
def test_http_path_must_be_a_route_template(path: str, ok: bool) -> None:
    ev = {
        "type": "http.request",
        "seq": 1,
        "ts": 1.0,
        "method": "GET",
        "path": path,
        "status": 200,
        "duration_s": 0.1,
    }
    problem = validate_event(ev)
    assert (problem is None) == ok, problem


def test_trace_id_is_optional_on_exactly_the_events_that_measure_a_duration() -> None:
    """An event with a duration may carry a valid trace id, or none (absent or nil); nothing else has one."""
    traced = {et.name for et in EVENT_TYPES if any(f.name == "trace_id" for f in et.fields)}
    timed = {et.name for et in EVENT_TYPES if any(f.name == "duration_s" for f in et.fields)}
    assert (
        traced
        == timed
        == {
            "http.request",
            "container.acquired",
            "container.released",
            "container.created",
            "container.destroyed",
            "container.wiped",
            "sync.finished",
        }
    )
    for et in EVENT_TYPES:
        if et.name not in traced:
            continue
        ev = valid_event(et)
        assert ev["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert validate_event(ev) is None
        ev["trace_id"] = None
        assert validate_event(ev) is None
        del ev["trace_id"]
        assert validate_event(ev) is None
        for bad in BAD_TRACE_IDS:
            ev["trace_id"] = bad
            assert FAST_VALIDATORS[et.name](ev) is False
            problem = explain_invalid(ev)
            assert problem is not None and problem[0] == "invalid_field" and "trace_id" in problem[1], bad


def _numbered(sizes: list[int], first_seq: int = 1) -> list[dict[str, Any]]:
    """``source.heartbeat`` events padded (an unknown field, ignored by the aggregator) to about ``sizes``."""
    return [
        {"type": "source.heartbeat", "seq": first_seq + i, "ts": 1.0, "pad": "x" * size}
        for i, size in enumerate(sizes)
    ]


def test_a_batch_that_fits_is_one_entry_of_the_same_bytes() -> None:
    events = _numbered([100] * 50)
    entries, dropped = encode_entries(SRC, events)
    assert entries == [(50, encode_batch(SRC, events))] and dropped == []


def test_a_batch_too_large_is_split_into_entries_of_at_most_the_limit_in_order() -> None:
    events = _numbered([40_000] * 100, first_seq=7)  # ~4 MB
    entries, dropped = encode_entries(SRC, events)
    assert dropped == [] and len(entries) >= 4
    assert all(len(payload) <= MAX_ENTRY_BYTES for _, payload in entries)
    decoded = [decode_batch(payload) for _, payload in entries]
    assert [n for n, _ in entries] == [len(b.events) for b in decoded]
    assert [ev["seq"] for b in decoded for ev in b.events] == list(range(7, 107))
    # Split where the sizes say: every entry but the last could not take the next event.
    assert all(len(p) + 40_000 > MAX_ENTRY_BYTES - 100 for _, p in entries[:-1])


def test_an_event_too_large_alone_is_left_out_and_the_sequence_closes_over_it() -> None:
    events = _numbered([10, MAX_ENTRY_BYTES, 10, MAX_ENTRY_BYTES * 3, 10], first_seq=41)
    huge = [events[1], events[3]]
    entries, dropped = encode_entries(SRC, events)
    assert dropped == huge
    assert len(entries) == 1 and len(entries[0][1]) <= MAX_ENTRY_BYTES
    assert [(ev["seq"], len(ev["pad"])) for ev in decode_batch(entries[0][1]).events] == [
        (41, 10),
        (42, 10),
        (43, 10),
    ]


def _unnumbered(sizes: list[int]) -> list[dict[str, Any]]:
    """As :func:`_numbered`, for version 2: the events carry no ``seq`` (the entry's header does)."""
    return [{"type": "source.heartbeat", "ts": 1.0, "pad": "x" * size} for size in sizes]


def test_version_2_a_batch_that_fits_is_one_entry_of_the_same_bytes() -> None:
    events = _unnumbered([100] * 50)
    entries, dropped = encode_entries(SRC, events, first_seq=9)
    assert entries == [(50, encode_batch(SRC, events, 9))] and dropped == []


def test_version_2_a_split_batch_numbers_each_entry_from_its_first_event() -> None:
    events = _unnumbered([40_000] * 100)  # ~4 MB
    entries, dropped = encode_entries(SRC, events, first_seq=7)
    assert dropped == [] and len(entries) >= 4
    assert all(len(payload) <= MAX_ENTRY_BYTES for _, payload in entries)
    decoded = [decode_batch(payload) for _, payload in entries]
    assert {b.version for b in decoded} == {2}
    assert [n for n, _ in entries] == [len(b.events) for b in decoded]
    assert [ev["seq"] for b in decoded for ev in b.events] == list(range(7, 107))


def test_version_2_an_event_too_large_alone_is_left_out_and_the_numbers_close_over_it() -> None:
    events = _unnumbered([10, MAX_ENTRY_BYTES, 10, MAX_ENTRY_BYTES * 3, 10])
    huge = [events[1], events[3]]
    entries, dropped = encode_entries(SRC, events, first_seq=41)
    assert dropped == huge
    assert len(entries) == 1 and len(entries[0][1]) <= MAX_ENTRY_BYTES
    assert [(ev["seq"], len(ev["pad"])) for ev in decode_batch(entries[0][1]).events] == [
        (41, 10),
        (42, 10),
        (43, 10),
    ]


def test_version_2_a_split_at_exactly_the_limit() -> None:
    """The header's first number may grow a byte from one entry to the next: still within the limit."""
    one = len(encode_batch(SRC, _unnumbered([1000]), 127))  # the largest 1-byte msgpack int
    entries, dropped = encode_entries(SRC, _unnumbered([1000] * 3), max_bytes=one + 6, first_seq=127)
    assert dropped == [] and [n for n, _ in entries] == [1, 1, 1]
    assert all(len(p) <= one + 6 for _, p in entries)
    assert [decode_batch(p).events[0]["seq"] for _, p in entries] == [127, 128, 129]


def test_a_split_at_exactly_the_limit() -> None:
    """The envelope's overhead is accounted exactly enough that a limit just above one event fits it."""
    one = len(encode_batch(SRC, _numbered([1000])))
    entries, dropped = encode_entries(SRC, _numbered([1000] * 3), max_bytes=one + 4)
    assert dropped == [] and [n for n, _ in entries] == [1, 1, 1]
    assert all(len(p) <= one + 4 for _, p in entries)


def test_a_payload_too_large_to_read_is_too_large() -> None:
    with pytest.raises(EventDecodeError) as err:
        decode_batch(Oversized(300 << 20), "5-0")
    assert err.value.reason == "too_large" and str(300 << 20) in err.value.detail
