"""msgpack encoding of event batches, and validation; every failure surfaces as EventDecodeError."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import count
from typing import Any

import msgspec

from .schema import (
    EVENT_TYPES,
    ID_PATTERN,
    MAX_PATH_LEN,
    PATH_PATTERN,
    PER_EVENT_SEQ_VERSION,
    SCHEMA_VERSION,
    TRACE_ID_PATTERN,
    UNMATCHED_PATH,
    EventType,
    Field,
)

#: The one field of a stream entry; its value is a msgpack-encoded batch.
ENTRY_FIELD = b"b"
#: Largest ``b`` value the aggregator decodes (larger ones are dead-lettered as ``too_large``); the
#: publisher never writes a larger one (:func:`encode_entries`).
MAX_ENTRY_BYTES = 1 << 20
MAX_EVENTS_PER_BATCH = 10_000
MAX_SRC_LEN = 200
MAX_STR_LEN = 256


class EventDecodeError(Exception):
    """A stream entry or event that cannot be used. ``reason`` is a short stable token for labels."""

    def __init__(self, reason: str, detail: str = "", entry_id: str | None = None) -> None:
        super().__init__(reason, detail, entry_id)
        self.reason = reason
        self.detail = detail
        self.entry_id = entry_id

    def __str__(self) -> str:
        where = f" in entry {self.entry_id}" if self.entry_id else ""
        return f"{self.reason}{where}: {self.detail}" if self.detail else f"{self.reason}{where}"


@dataclass(frozen=True, slots=True)
class Oversized:
    """A reply value a reader left out because it was longer than it could afford to hold
    (:mod:`shared.events.bounded`): only its length is known. As an entry's payload it is ``too_large``."""

    length: int


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded stream entry: the source that wrote it and its event maps (not yet validated)."""

    src: str
    version: int
    events: list[dict[str, Any]]


# msgspec's msgpack codec writes the same bytes as msgpack-python (str as str, floats as float64,
# smallest ints) at ~2.5x the speed, and decodes ~1.7x faster (see docs/performance.md).
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def encode_batch(src: str, events: Iterable[dict[str, Any]], first_seq: int | None = None) -> bytes:
    """Encode event maps holding ``type``, ``ts`` and their fields.

    With ``first_seq``: a version 2 batch, the events numbered from ``first_seq`` by their position.
    Without: a version 1 batch, each event holding its own ``seq``.
    """
    if not isinstance(events, list):
        events = list(events)
    if first_seq is None:
        return _encode({"v": PER_EVENT_SEQ_VERSION, "src": src, "events": events})
    return _encode({"v": 2, "src": src, "seq": first_seq, "events": events})


def encode_entries(
    src: str, events: list[dict[str, Any]], max_bytes: int = MAX_ENTRY_BYTES, first_seq: int | None = None
) -> tuple[list[tuple[int, bytes]], list[dict[str, Any]]]:
    """Encode numbered events as stream entries of at most ``max_bytes`` each.

    Without ``first_seq`` the events carry consecutive ``seq`` s (version 1); with it they carry none and
    are numbered from ``first_seq`` by their position, each entry's header holding its first number
    (version 2, :func:`encode_batch`).

    Returns ``(number of events, payload)`` per entry, in order, and the events left out because each
    alone encodes larger than ``max_bytes``. The usual batch is one entry and one encoding; a larger one is
    split where its events' sizes say. The events after a left-out one are numbered down to close the gap
    (version 1: their ``seq`` is lowered), so the numbers count what is written: a dropped event is the
    producer's to count (``events.dropped``), never a gap.
    """
    payload = encode_batch(src, events, first_seq)
    if len(payload) <= max_bytes:
        return [(len(events), payload)], []
    # The envelope with an empty list (a 1-byte array header), plus the 5 bytes an array32 header takes;
    # in version 2 with the largest first number any entry of this batch can have (as many bytes or more).
    last_seq = None if first_seq is None else first_seq + len(events)
    overhead = len(encode_batch(src, [], last_seq)) - 1 + 5
    sizes = [len(_encode(ev)) for ev in events]  # a lowered seq encodes in as many bytes or fewer
    dropped = [ev for ev, size in zip(events, sizes, strict=True) if overhead + size > max_bytes]
    if dropped:
        kept = [(ev, size) for ev, size in zip(events, sizes, strict=True) if overhead + size <= max_bytes]
        if first_seq is None:
            first = events[0]["seq"]
            for i, (ev, _) in enumerate(kept):
                ev["seq"] = first + i
    else:
        kept = list(zip(events, sizes, strict=True))
    entries: list[tuple[int, bytes]] = []
    chunk: list[dict[str, Any]] = []
    used = overhead
    next_seq = first_seq
    for ev, size in kept:
        if chunk and used + size > max_bytes:
            entries.append((len(chunk), encode_batch(src, chunk, next_seq)))
            if next_seq is not None:
                next_seq += len(chunk)
            chunk, used = [], overhead
        chunk.append(ev)
        used += size
    if chunk:
        entries.append((len(chunk), encode_batch(src, chunk, next_seq)))
    return entries, dropped


def decode_batch(payload: Any, entry_id: str | None = None) -> Batch:
    """Decode one entry payload; raises EventDecodeError with a reason token on any problem."""
    if isinstance(payload, Oversized):
        raise EventDecodeError(
            "too_large",
            f"{payload.length} bytes > {MAX_ENTRY_BYTES}; too large to read, left out of this dead letter",
            entry_id,
        )
    if not isinstance(payload, bytes | bytearray):
        raise EventDecodeError("missing_field", f"entry has no {ENTRY_FIELD.decode()!r} field", entry_id)
    if len(payload) > MAX_ENTRY_BYTES:
        raise EventDecodeError("too_large", f"{len(payload)} bytes > {MAX_ENTRY_BYTES}", entry_id)
    try:
        doc = _decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise EventDecodeError("undecodable", f"{type(exc).__name__}: {exc}", entry_id) from exc
    if not isinstance(doc, dict):
        raise EventDecodeError("bad_envelope", f"batch is a {type(doc).__name__}, not a map", entry_id)
    for key in doc:
        if type(key) is not str:
            raise EventDecodeError("bad_envelope", f"envelope key {key!r:.40} is not a string", entry_id)
    version = doc.get("v")
    if type(version) is not int or version < 1:
        raise EventDecodeError("bad_envelope", f"schema version {version!r} is not a positive int", entry_id)
    if version > SCHEMA_VERSION:
        raise EventDecodeError(
            "future_version", f"schema version {version} > supported {SCHEMA_VERSION}", entry_id
        )
    src = doc.get("src")
    if type(src) is not str or not 0 < len(src) <= MAX_SRC_LEN:
        raise EventDecodeError(
            "bad_envelope", f"src {src!r:.60} is not a string of 1..{MAX_SRC_LEN}", entry_id
        )
    events = doc.get("events")
    if type(events) is not list or not events:
        raise EventDecodeError("bad_envelope", "events is not a non-empty list", entry_id)
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise EventDecodeError("too_large", f"{len(events)} events > {MAX_EVENTS_PER_BATCH}", entry_id)
    if version >= 2:
        first = doc.get("seq")
        if type(first) is not int or first < 1:
            raise EventDecodeError("bad_envelope", f"seq {first!r:.60} is not a positive int", entry_id)
        _number(events, first)
    return Batch(src, version, events)


def _number(events: list[Any], first: int) -> None:
    """Version 2: give each event the ``seq`` of its position (events read on as version 1 ones).

    Every element takes a number, so one that is not a map still uses up its ``seq``.
    """
    try:
        for ev, seq in zip(events, count(first)):
            ev["seq"] = seq
    except TypeError:  # an element that is not a map: the slow way, skipping it
        for ev, seq in zip(events, count(first)):
            if type(ev) is dict:
                ev["seq"] = seq


Validator = Callable[[dict[str, Any]], str | None]


def _field_check(f: Field) -> Callable[[Any], str | None]:
    name = f.name
    if f.kind == "trace_id":
        trace_ok = TRACE_ID_PATTERN.match

        def check_trace_id(v: Any) -> str | None:
            if type(v) is not str:
                return f"{name} must be a string, got {type(v).__name__}"
            if trace_ok(v) is None:
                return f"{name}={v[:40]!r} is not a W3C trace id (32 lowercase hex digits, not all zero)"
            return None

        return check_trace_id
    if f.kind in ("str", "id"):
        choices, is_id = f.choices, f.kind == "id"

        def check_str(v: Any) -> str | None:
            if type(v) is not str:
                return f"{name} must be a string, got {type(v).__name__}"
            if choices is not None:
                return None if v in choices else f"{name}={v[:40]!r} not one of {sorted(choices)}"
            if is_id:
                return None if ID_PATTERN.match(v) else f"{name}={v[:40]!r} is not a valid identifier"
            return None if len(v) <= MAX_STR_LEN else f"{name} longer than {MAX_STR_LEN}"

        return check_str
    minimum, integral = f.minimum, f.kind == "int"

    def check_num(v: Any) -> str | None:
        t = type(v)
        if t is int:
            pass
        elif t is float and not integral:
            if not math.isfinite(v):
                return f"{name}={v} is not finite"
        else:
            return f"{name} must be {'an int' if integral else 'a number'}, got {t.__name__}"
        if minimum is not None and v < minimum:
            return f"{name}={v} is below {minimum}"
        return None

    return check_num


def _compile(et: EventType) -> Validator:
    checks = [(f.name, f.optional, _field_check(f)) for f in et.fields]
    if et.name == "http.request":
        path_ok = PATH_PATTERN.match

        def check_path(v: Any) -> str | None:
            if type(v) is not str:
                return "path must be a string"
            if v == UNMATCHED_PATH or (len(v) <= MAX_PATH_LEN and path_ok(v)):
                return None
            return f"path={v[:40]!r} is not a route template (docs/events.md, Route templates)"

        checks = [(n, o, check_path if n == "path" else c) for n, o, c in checks]

    def validate(ev: dict[str, Any]) -> str | None:
        for name, optional, check in checks:
            v = ev.get(name)
            if v is None:
                if optional:
                    continue
                return f"missing field {name}"
            problem = check(v)
            if problem:
                return problem
        return None

    return validate


VALIDATORS: dict[str, Validator] = {et.name: _compile(et) for et in EVENT_TYPES}


# ---- fast path ----------------------------------------------------------------------------------------
# Validation is most of the aggregator's per-event cost. For each event type we generate one function
# that checks the envelope and every field inline (no call per field) and remembers identifiers and
# route templates already seen to be valid, so the regular expressions run once per distinct value.
# It only answers "valid or not"; for an invalid event the readable checks above say why, so both paths
# always agree on the verdict (tests/test_codec.py checks this on every case).

#: Distinct valid identifier / route-template values remembered (label values are low-cardinality).
KNOWN_VALUES_CAP = 50_000
_known_ids: set[str] = set()
_known_paths: set[str] = set()


def _id_ok(v: str) -> bool:
    if ID_PATTERN.match(v) is None:
        return False
    if len(_known_ids) < KNOWN_VALUES_CAP:
        _known_ids.add(v)
    return True


def _path_ok(v: str) -> bool:
    if v != UNMATCHED_PATH and (len(v) > MAX_PATH_LEN or PATH_PATTERN.match(v) is None):
        return False
    if len(_known_paths) < KNOWN_VALUES_CAP:
        _known_paths.add(v)
    return True


def _generate_fast(et: EventType) -> Callable[[dict[str, Any]], bool]:
    env: dict[str, Any] = {
        "_ids": _known_ids,
        "_paths": _known_paths,
        "_id_ok": _id_ok,
        "_path_ok": _path_ok,
        "_isfinite": math.isfinite,
        "_MAX_STR": MAX_STR_LEN,
        "_trace_ok": TRACE_ID_PATTERN.match,
    }
    # Required fields are read with ev[...] (a missing one raises KeyError: invalid); a nil value fails
    # the type test, so no separate None check is needed.
    lines = [
        "def fast(ev):",
        "  try:",
        "    v = ev['seq']",
        "    if type(v) is not int or v < 1: return False",
        "    v = ev['ts']",
        "    t = type(v)",
        "    if (t is not float and t is not int) or not 0 <= v < 1e11: return False",
    ]
    for i, f in enumerate(et.fields):
        indent = "    "
        if f.optional:
            lines.append(f"    v = ev.get({f.name!r})")
            lines.append("    if v is not None:")
            indent = "      "
        else:
            lines.append(f"    v = ev[{f.name!r}]")
        if f.kind == "trace_id":
            lines.append(f"{indent}if type(v) is not str or _trace_ok(v) is None: return False")
        elif f.kind in ("str", "id"):
            if f.choices is not None:
                env[f"_c{i}"] = frozenset(f.choices)
                bad = f"v not in _c{i}"
            elif et.name == "http.request" and f.name == "path":
                bad = "(v not in _paths and not _path_ok(v))"
            elif f.kind == "id":
                bad = "(v not in _ids and not _id_ok(v))"
            else:
                bad = "len(v) > _MAX_STR"
            lines.append(f"{indent}if type(v) is not str or {bad}: return False")
        else:
            lines.append(f"{indent}t = type(v)")
            if f.kind == "int":
                lines.append(f"{indent}if t is not int: return False")
            else:
                lines.append(f"{indent}if t is float:")
                lines.append(f"{indent}  if not _isfinite(v): return False")
                lines.append(f"{indent}elif t is not int: return False")
            if f.minimum is not None:
                env[f"_m{i}"] = f.minimum
                lines.append(f"{indent}if v < _m{i}: return False")
    lines += ["  except KeyError:", "    return False", "  return True"]
    code = compile("\n".join(lines), f"<fast validator of {et.name}>", "exec")
    exec(code, env)  # noqa: S102  (generated from the schema only)
    fast: Callable[[dict[str, Any]], bool] = env["fast"]
    fast.__qualname__ = f"fast_validate[{et.name}]"
    return fast


FAST_VALIDATORS: dict[str, Callable[[dict[str, Any]], bool]] = {
    et.name: _generate_fast(et) for et in EVENT_TYPES
}


def validate_event(ev: Any) -> tuple[str, str] | None:
    """Check one event map; return ``(reason, detail)`` if it is invalid, else None."""
    if type(ev) is dict:
        t = ev.get("type")
        if type(t) is str:
            fast = FAST_VALIDATORS.get(t)
            if fast is not None and fast(ev):
                return None
    return explain_invalid(ev)


def explain_invalid(ev: Any) -> tuple[str, str] | None:
    """The readable validation: ``(reason, detail)`` for an invalid event, None for a valid one."""
    if type(ev) is not dict:
        return "bad_event", f"event is a {type(ev).__name__}, not a map"
    t = ev.get("type")
    validator = VALIDATORS.get(t) if type(t) is str else None
    if validator is None:
        return "unknown_type", f"unknown event type {str(t)[:60]!r}"
    seq, ts = ev.get("seq"), ev.get("ts")
    if type(seq) is not int or seq < 1:
        return "bad_event", f"seq {seq!r} is not a positive int"
    if (type(ts) is not float and type(ts) is not int) or not 0 <= ts < 1e11:
        return "bad_event", f"ts {ts!r} is not unix seconds"
    problem = validator(ev)
    return None if problem is None else ("invalid_field", problem)
