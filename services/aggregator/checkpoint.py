"""The checkpoint: its format and version, the mapping check, what one checkpoint writes, and loading.

A partition's checkpoint is a Redis hash (``{prefix}:checkpoint:{p}:<group>``, in the partition's
hash slot) with one field per series, per snapshot value and per source, plus ``meta`` (format
version, metric mapping, stream position, trim window, save time). A checkpoint writes only the
fields whose values changed since the previous one (the fold marks them, :meth:`fold.State.take_dirty`)
and deletes those that went away, so its bytes grow with what changed, not with what exists. The
consumer writes it in the transaction that acknowledges the entries it covers; rebuild writes a
complete one with the consumer group's position. Checkpoints of format 1 and 2 (one msgpack string)
are still loaded; the next checkpoint then replaces them with a complete hash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from shared.events.bus import Client

from .fold import Limits, Source, State, TrimWindow
from .metrics import METRICS, METRICS_BY_NAME

#: 3: a hash, one field per series / snapshot value / source. 2: one msgpack document, sources
#: ``[service, version, last_seen, stopped]``. 1: as 2, with the start time in the source record.
CHECKPOINT_VERSION = 3
META = b"meta"
#: The metric mapping the hash was written with: set by complete writes only (it is ~2 KB).
MAPPING = b"mapping"
#: Fields per HSET when a whole checkpoint is written (keeps every command small).
HSET_CHUNK = 5_000

_encode_raw = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def _encode(value: Any) -> bytes:
    try:
        return _encode_raw(value)
    except OverflowError:
        # A counter grew past msgpack's 64-bit integers (absurd but valid input): store it as a float,
        # as the exposition renders it anyway, rather than never checkpointing again.
        return _encode_raw(_big_ints_to_floats(value))


_COUNTER, _HIST, _GAUGE, _SOURCE = b"c", b"h", b"g", b"s"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored; the message says why and what to do."""


def mapping_fingerprint() -> list[Any]:
    """What a checkpoint's state layout depends on: metric names, kinds and buckets."""
    return [[m.name, str(m.kind), list(m.buckets or ())] for m in METRICS]


@dataclass(frozen=True, slots=True)
class Restored:
    """A loaded checkpoint; ``legacy``: it was a format 1/2 string (the next write must be complete)."""

    state: State
    trim: TrimWindow
    saved_at: float
    legacy: bool = False


@dataclass
class Write:
    """What one checkpoint writes: fields to set (``meta`` among them), fields to delete, and whether the
    key is replaced as a whole (``complete``: deleted first)."""

    fields: dict[bytes, bytes]
    deleted: list[bytes] = field(default_factory=list)
    complete: bool = False

    @property
    def meta(self) -> bytes:
        return self.fields[META]

    @property
    def size(self) -> int:
        """Bytes sent: field names and values, and the names deleted."""
        return sum(len(k) + len(v) for k, v in self.fields.items()) + sum(len(k) for k in self.deleted)

    def queue(self, pipe: Any, key: str) -> None:
        """Add the commands to a transaction (``pipe``) on ``key``."""
        if self.complete:
            pipe.delete(key)
        items = list(self.fields.items())
        for i in range(0, len(items), HSET_CHUNK):
            pipe.hset(key, mapping=dict(items[i : i + HSET_CHUNK]))
        if self.deleted and not self.complete:
            pipe.hdel(key, *self.deleted)


def changes(
    state: State,
    trim: TrimWindow,
    dirty: Mapping[str, set[Any]],
    sources: Iterable[str],
    saved_at: float | None = None,
) -> Write:
    """The fields changed since the previous checkpoint (``dirty``/``sources``: from ``state.take_dirty()``)."""
    out = Write({META: _meta(state, trim, saved_at)})
    for name, keys in dirty.items():
        if name in state.counters:
            table_c = state.counters[name]
            for key in keys:
                out.fields[_series_field(_COUNTER, name, key)] = _encode(table_c[key])
        elif name in state.hists:
            table_h = state.hists[name]
            for key in keys:
                out.fields[_series_field(_HIST, name, key)] = _encode(table_h[key])
        else:
            table_g = state.gauges[name]
            for key, src in keys:
                name_ = _gauge_field(name, key, src)
                value = table_g.get(key, {}).get(src)
                if value is None:
                    out.deleted.append(name_)
                else:
                    out.fields[name_] = _encode(value)
    for src in sources:
        info = state.sources.get(src)
        if info is None:
            out.deleted.append(_SOURCE + src.encode())
        else:
            out.fields[_SOURCE + src.encode()] = _source_value(info)
    return out


def complete(state: State, trim: TrimWindow, saved_at: float | None = None) -> Write:
    """Every field of ``state``: a checkpoint that replaces whatever the key held."""
    out = Write({META: _meta(state, trim, saved_at), MAPPING: _encode(mapping_fingerprint())}, complete=True)
    for name, table_c in state.counters.items():
        for key, value in table_c.items():
            out.fields[_series_field(_COUNTER, name, key)] = _encode(value)
    for name, table_h in state.hists.items():
        for key, h in table_h.items():
            out.fields[_series_field(_HIST, name, key)] = _encode(h)
    for name, table_g in state.gauges.items():
        for key, per_src in table_g.items():
            for src, value in per_src.items():
                out.fields[_gauge_field(name, key, src)] = _encode(value)
    for src, info in state.sources.items():
        out.fields[_SOURCE + src.encode()] = _source_value(info)
    return out


def fetch(client: Client, key: str, limits: Limits) -> Restored | None:
    """The checkpoint at ``key`` (a hash, or a format 1/2 string), or None if there is none."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "none":
        return None
    if kind == "string":
        raw = client.get(key)
        return None if not isinstance(raw, bytes) else load_legacy(raw, limits, f"checkpoint {key}")
    if kind != "hash":
        raise CheckpointError(
            f"checkpoint {key} is a Redis {kind}, not a checkpoint: run `boilerhouse aggregator --rebuild`"
        )
    fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]  # binary client: bytes both ways
    return load(fields, limits, f"checkpoint {key}")


def load(fields: Mapping[bytes, bytes], limits: Limits, where: str = "checkpoint") -> Restored:
    """Restore a checkpoint hash written by :class:`Write`."""
    rebuild = "run `boilerhouse aggregator --rebuild`"
    raw_meta = fields.get(META)
    if raw_meta is None:
        raise CheckpointError(f"{where} has no meta field: {rebuild}")
    meta = _decode_doc(raw_meta, where)
    raw_mapping = fields.get(MAPPING)
    meta["mapping"] = None if raw_mapping is None else _decode(raw_mapping)
    _check(meta, where, (CHECKPOINT_VERSION,))
    if meta.get("fields") != len(fields):
        raise CheckpointError(
            f"{where} has {len(fields)} fields where its last write left {meta.get('fields')} "
            f"(the key was deleted or evicted meanwhile): {rebuild}"
        )
    state = State(limits=limits)
    try:
        for name_, value in fields.items():
            kind = name_[:1]
            if kind == _SOURCE:
                r = _decode(value)
                state.sources[name_[1:].decode()] = Source(
                    str(r[0]), str(r[1]), float(r[2]), int(r[3]), bool(r[4])
                )
                continue
            if kind not in (_COUNTER, _HIST, _GAUGE):
                continue  # meta, or a field of a newer format: ignored
            parts = _decode(name_[1:])
            name, key = parts[0], tuple(parts[1])
            if kind == _COUNTER and name in state.counters:
                state.counters[name][key] = _decode(value)
            elif kind == _HIST and name in state.hists:
                state.hists[name][key] = _decode(value)
            elif kind == _GAUGE and name in state.gauges:
                state.gauges[name].setdefault(key, {})[parts[2]] = _decode(value)
        state.positions = {int(p): str(i) for p, i in meta.get("positions", {}).items()}
        state.newest_entry_s = float(meta.get("newest_entry_s", 0.0))
        trim = TrimWindow.from_data(meta.get("trim"))
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, msgspec.DecodeError) as exc:
        raise CheckpointError(f"{where} is damaged ({type(exc).__name__}: {exc}): {rebuild}") from None
    return Restored(state, trim, float(meta.get("saved_at") or time.time()))


def load_legacy(raw: bytes, limits: Limits, where: str = "checkpoint") -> Restored:
    """Restore a checkpoint of format 1 or 2 (one msgpack document)."""
    rebuild = "run `boilerhouse aggregator --rebuild`"
    doc = _decode_doc(raw, where)
    if not isinstance(doc.get("state"), dict):
        raise CheckpointError(f"{where} is not a checkpoint document: {rebuild}")
    version = _check(doc, where, (1, 2))
    try:
        state = _state_from_v2(doc["state"], limits, version)
        trim = TrimWindow.from_data(doc.get("trim"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{where} is damaged ({type(exc).__name__}: {exc}): {rebuild}") from None
    return Restored(state, trim, float(doc.get("saved_at") or time.time()), legacy=True)


def _decode_doc(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = _decode(raw)
    except msgspec.DecodeError as exc:
        raise CheckpointError(
            f"{where} cannot be decoded ({exc}): run `boilerhouse aggregator --rebuild`"
        ) from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where} is not a checkpoint document: run `boilerhouse aggregator --rebuild`")
    return doc


def _check(doc: Mapping[str, Any], where: str, versions: tuple[int, ...]) -> int:
    version = doc.get("v")
    if version not in versions:
        raise CheckpointError(
            f"{where} has format version {version!r}, this aggregator reads 1..{CHECKPOINT_VERSION}"
        )
    changed = mapping_conflicts(doc.get("mapping"))
    if changed:
        raise CheckpointError(
            f"{where} was written by another metric mapping ({', '.join(changed[:5])} changed kind or "
            "buckets): run `boilerhouse aggregator --rebuild`"
        )
    return int(version)


def mapping_conflicts(saved: Any) -> list[str]:
    """Metrics whose kind or buckets differ between ``saved`` (a checkpoint's mapping) and this one.

    A metric added since starts empty and one removed is dropped: neither needs a rebuild. Only a
    metric whose saved state means something else now (another kind, other buckets) does.
    """
    if not isinstance(saved, list):
        return ["the whole mapping"]
    current = {row[0]: row for row in mapping_fingerprint()}
    conflicts = []
    for row in saved:
        if not isinstance(row, list) or not row:
            return ["the whole mapping"]
        now = current.get(row[0])
        if now is not None and now != row:
            conflicts.append(str(row[0]))
    return conflicts


def _meta(state: State, trim: TrimWindow, saved_at: float | None) -> bytes:
    return _encode(
        {
            "v": CHECKPOINT_VERSION,
            "saved_at": time.time() if saved_at is None else saved_at,
            "newest_entry_s": state.newest_entry_s,
            "positions": {str(p): i for p, i in state.positions.items()},
            "trim": trim.to_data(),
            # How many fields the hash has once this write is applied: a hash that lost fields (its key
            # deleted or evicted and then written to again) is refused at load, never restored short.
            "fields": field_count(state),
        }
    )


def field_count(state: State) -> int:
    """The fields of ``state``'s complete checkpoint hash, ``meta`` and ``mapping`` included."""
    n = 2 + len(state.sources)
    n += sum(len(t) for t in state.counters.values()) + sum(len(t) for t in state.hists.values())
    n += sum(len(per_src) for t in state.gauges.values() for per_src in t.values())
    return n


def _big_ints_to_floats(value: Any) -> Any:
    if type(value) is int:
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, dict):
        return {k: _big_ints_to_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_to_floats(v) for v in value]
    return value


def _series_field(kind: bytes, name: str, key: tuple[str, ...]) -> bytes:
    return kind + _encode([name, key])


def _gauge_field(name: str, key: tuple[str, ...], src: str) -> bytes:
    return _GAUGE + _encode([name, key, src])


def _source_value(info: Source) -> bytes:
    return _encode([info.service, info.version, info.last_seen, info.last_seq, info.stopped])


def _state_from_v2(data: Mapping[str, Any], limits: Limits, version: int) -> State:
    state = State(limits=limits)
    for attr in ("counters", "hists", "gauges"):
        target = getattr(state, attr)
        for name, rows in data.get(attr, {}).items():
            if name in target:  # a metric removed from the mapping is dropped
                target[name] = {tuple(k): v for k, v in rows}
    last_seq = {str(s): int(n) for s, n in data.get("last_seq", {}).items()}
    info_name, start_name = METRICS_BY_NAME["info"].name, METRICS_BY_NAME["start_time_seconds"].name
    for src, record in data.get("sources", {}).items():
        if version == 1:  # [service, version, start_time_s, last_seen, stopped]
            service, ver, start_time, last_seen, stopped = record
            if not stopped and ver:
                state.gauges[info_name].setdefault((str(ver),), {})[src] = 1.0
            if not stopped and start_time:
                state.gauges[start_name].setdefault((), {})[src] = float(start_time)
        else:  # [service, version, last_seen, stopped]
            service, ver, last_seen, stopped = record
        # last_seen was a producer timestamp then: it stays until the source's next entry.
        state.sources[src] = Source(
            str(service), str(ver), float(last_seen), last_seq.pop(src, 0), bool(stopped)
        )
    for src, seq in last_seq.items():  # dedupe positions of sources without a record
        state.sources[src] = Source(src.split(":", 1)[0], "", 0.0, seq)
    state.positions = {int(p): i for p, i in data.get("positions", {}).items()}
    state.newest_entry_s = float(data.get("newest_ts", 0.0))
    return state
