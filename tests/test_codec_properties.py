"""Property-based tests of the codec and validators: random envelopes, events, field types and sizes.

Whatever a producer writes, decoding and validation never raise anything but EventDecodeError, the
fast and readable validators agree, and folding through the one ingest step accounts for every entry
and every event: applied, duplicate, or dead-lettered with a documented reason and counted.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.aggregator.fold import State
from services.aggregator.ingest import DeadLetter, Outcome, PartitionIngest
from shared.events.codec import (
    ENTRY_FIELD,
    FAST_VALIDATORS,
    MAX_ENTRY_BYTES,
    MAX_EVENTS_PER_BATCH,
    MAX_SRC_LEN,
    Batch,
    EventDecodeError,
    decode_batch,
    explain_invalid,
    validate_event,
)
from shared.events.schema import EVENT_TYPES, SCHEMA_VERSION, UNMATCHED_PATH, Field

#: The reasons of docs/events.md ("What the aggregator rejects"), by what they reject.
ENTRY_REASONS = {"missing_field", "too_large", "undecodable", "bad_envelope", "future_version"}
EVENT_REASONS = {"bad_event", "unknown_type", "invalid_field"}

#: Example counts keep the file to a few seconds; data generation is most of the cost.
SOME = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- values --------------------------------------------------------------------------------------------

ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
floats = st.floats(allow_nan=True, allow_infinity=True) | st.floats(width=32)
scalars = st.none() | st.booleans() | ints | floats | st.text(max_size=40) | st.binary(max_size=40)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | ints, inner, max_size=3)
    ),
    max_leaves=6,
)
#: Long strings: label-sized and beyond every limit.
long_text = st.integers(0, 400).map(lambda n: "x" * n)


def valid_values(f: Field) -> st.SearchStrategy[Any]:
    """Values the contract allows for ``f``."""
    if f.choices is not None:
        return st.sampled_from(sorted(f.choices))
    if f.kind == "id":
        return st.sampled_from(["pool-1", "w", "a.b:c_d-9", "x" * 64])
    if f.kind == "trace_id":
        return st.none() | st.binary(min_size=16, max_size=16).filter(any).map(bytes.hex)
    if f.name == "path":
        return st.sampled_from(["/api/v1/pools/{pool_id}", "/x", UNMATCHED_PATH, "/"])
    if f.kind == "str":
        return st.text(max_size=30) | st.just("v" * 256)
    if f.kind == "int":
        return st.integers(int(f.minimum or 0), 2**64 - 1)
    return st.floats(f.minimum or 0, 1e12) | st.integers(int(f.minimum or 0), 10**9)


#: Values of the wrong type, size or range for most fields (and sometimes right by chance).
wrong_values = st.one_of(
    anything,
    long_text,
    st.sampled_from(["", "-x", "a b", "/a/../b", "not-a-choice", 3.0, -1, True, math.nan, math.inf]),
)


@st.composite
def events(draw: st.DrawFn, seq: int) -> Any:
    """An event of a catalogue type, usually valid, with now and then a broken envelope key or field,
    a missing field or an unknown key; or something that is not an event at all."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(anything)
    et = draw(st.sampled_from(EVENT_TYPES))
    ev: dict[Any, Any] = {
        "type": et.name if kind != 1 else draw(st.text(max_size=20) | ints | st.none()),
        "seq": seq if kind != 2 else draw(anything),
        "ts": draw(st.floats(0, 2e9) | st.integers(0, 2 * 10**9)) if kind != 3 else draw(anything),
    }
    for f in et.fields:
        fate = draw(st.integers(0, 29))
        if fate == 0:
            continue  # missing
        ev[f.name] = draw(wrong_values if fate == 1 else valid_values(f))
    if draw(st.integers(0, 5)) == 0:
        ev[draw(st.text(max_size=8) | ints)] = draw(anything)  # unknown keys, maybe not str
    return ev


@st.composite
def envelopes(draw: st.DrawFn, first_seq: int) -> tuple[bytes, int]:
    """(payload, the highest seq it uses): a batch map, now and then with a broken envelope key."""
    n = draw(st.integers(1, 8))
    evs = [draw(events(first_seq + i)) for i in range(n)]
    doc: dict[Any, Any] = {"v": SCHEMA_VERSION, "src": "api:h:1:aa", "events": evs}
    fate = draw(st.integers(0, 11))
    if fate == 1:
        doc["v"] = draw(anything | st.integers(-2, 5))
    elif fate == 2:
        doc["src"] = draw(st.text(max_size=3) | long_text | anything)
    elif fate == 3:
        doc["events"] = draw(anything)
    elif fate == 4:
        doc.pop(draw(st.sampled_from(["v", "src", "events"])))
    elif fate == 5:
        doc[draw(st.text(max_size=5) | ints)] = draw(anything)
    elif fate == 6:
        doc["src"] = "api:h:2:bb"  # a second source
    payload = msgpack.packb(doc, use_bin_type=True)
    if fate == 7:  # damaged on the way: truncated, or followed by garbage
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=4))
    return payload, first_seq + n - 1


_HEARTBEAT = {"type": "source.heartbeat", "seq": 1, "ts": 1.0}
#: Entries at and past the size limits: one over the byte limit, one over the event count.
HUGE = [
    msgpack.packb({"v": 1, "src": "big:h:1:aa", "events": [_HEARTBEAT], "pad": b"\0" * MAX_ENTRY_BYTES}),
    msgpack.packb({"v": 1, "src": "big:h:1:aa", "events": [_HEARTBEAT] * (MAX_EVENTS_PER_BATCH + 1)}),
    msgpack.packb({"v": 1, "src": "s" * (MAX_SRC_LEN + 1), "events": [_HEARTBEAT]}),
]


@st.composite
def entries(draw: st.DrawFn) -> list[dict[bytes, Any]]:
    """The fields of a few stream entries, as a consumer reads them."""
    out: list[dict[bytes, Any]] = []
    seq = 1
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.integers(0, 24))
        if choice == 0:
            out.append({b"other": draw(st.binary(max_size=8))})  # no "b" field
        elif choice == 1:
            out.append({ENTRY_FIELD: draw(st.binary(max_size=64))})  # random bytes
        elif choice == 2:
            out.append({ENTRY_FIELD: draw(st.sampled_from(HUGE))})
        else:
            payload, last = draw(envelopes(draw(st.sampled_from([seq, seq, 1, seq + 3]))))
            seq = last + 1
            out.append({ENTRY_FIELD: payload})
    return out


# ---- properties ----------------------------------------------------------------------------------------


@SOME
@given(payload=st.binary(max_size=200) | st.builds(lambda e: e[0], envelopes(1)) | st.sampled_from(HUGE))
def test_decode_returns_a_batch_or_raises_only_event_decode_error(payload: bytes) -> None:
    try:
        batch: Batch | EventDecodeError = decode_batch(payload, "1-0")
    except EventDecodeError as exc:
        batch = exc
    if isinstance(batch, EventDecodeError):
        assert batch.reason in ENTRY_REASONS and batch.entry_id == "1-0"
        assert batch.reason in str(batch)
        return
    assert isinstance(batch, Batch)
    assert type(batch.src) is str and 0 < len(batch.src) <= MAX_SRC_LEN
    assert type(batch.events) is list and 0 < len(batch.events) <= MAX_EVENTS_PER_BATCH
    assert 1 <= batch.version <= SCHEMA_VERSION


@MANY
@given(ev=events(1) | anything)
def test_validation_never_raises_and_both_validators_agree(ev: Any) -> None:
    problem = validate_event(ev)
    readable = explain_invalid(ev)
    assert problem == readable
    if problem is not None:
        reason, detail = problem
        assert reason in EVENT_REASONS and isinstance(detail, str) and detail
    if type(ev) is dict and type(ev.get("type")) is str and ev["type"] in FAST_VALIDATORS:
        assert FAST_VALIDATORS[ev["type"]](ev) is (readable is None), ev
    if problem is None:  # a valid event is one the contract describes
        assert math.isfinite(ev["ts"]) and 0 <= ev["ts"] < 1e11 and type(ev["seq"]) is int


@SOME
@given(batch=entries())
def test_every_entry_and_event_is_applied_skipped_or_dead_lettered_and_counted(
    batch: list[dict[bytes, Any]],
) -> None:
    ingest = PartitionIngest(0, State())
    dead: list[DeadLetter] = []
    outcomes = Counter(ingest.entry((i + 1, 0), fields, dead) for i, fields in enumerate(batch))
    state = ingest.state

    # Every entry was decoded (FOLDED) or dead-lettered whole (UNUSABLE), never dropped silently.
    assert outcomes[Outcome.FOLDED] + outcomes[Outcome.UNUSABLE] == len(batch)
    events_in = 0
    for fields in batch:
        with contextlib.suppress(EventDecodeError):
            events_in += len(decode_batch(fields.get(ENTRY_FIELD)).events)
    assert ingest.events == events_in

    # Every dead letter has a documented reason and is counted by it, once.
    by_reason = Counter(d.reason for d in dead)
    assert set(by_reason) <= ENTRY_REASONS | EVENT_REASONS
    counted = {reason: n for (reason,), n in state.counters["aggregator_dead_letters_total"].items()}
    assert counted == dict(by_reason)
    assert sum(n for r, n in by_reason.items() if r in ENTRY_REASONS) == outcomes[Outcome.UNUSABLE]

    # Every event of a decoded entry was applied, skipped as a duplicate, or dead-lettered.
    applied = sum(state.counters["aggregator_events_applied_total"].values())
    duplicates = state.counters["aggregator_duplicates_total"].get((), 0)
    event_dead = sum(n for r, n in by_reason.items() if r in EVENT_REASONS)
    assert applied + duplicates + event_dead == events_in
    assert all(d.entry_id.endswith("-0") and isinstance(d.payload, bytes) for d in dead)
