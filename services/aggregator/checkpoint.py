"""The checkpoint document: its format and version, the mapping check, packing and loading.

A checkpoint holds one partition's fold state (which includes its stream position) and its trim
window. The consumer writes it in the transaction that acknowledges the entries it covers; rebuild
writes it together with the consumer group's position. Both use :func:`pack`; the consumer restores
with :func:`load`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from .fold import Source, State, TrimWindow
from .metrics import METRICS, METRICS_BY_NAME

#: 2: sources are ``[service, version, last_seen, stopped]``; ``info`` and ``start_time_seconds`` are
#: snapshot gauges. 1 kept the start time in the source record (still loaded, see ``_from_v1``).
CHECKPOINT_VERSION = 2

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored; the message says why and what to do."""


def mapping_fingerprint() -> list[Any]:
    """What a checkpoint's state layout depends on: metric names, kinds and buckets."""
    return [[m.name, str(m.kind), list(m.buckets or ())] for m in METRICS]


@dataclass(frozen=True, slots=True)
class Restored:
    """A loaded checkpoint."""

    state: State
    trim: TrimWindow
    saved_at: float


def pack(state: State, trim: TrimWindow, saved_at: float | None = None) -> bytes:
    """The checkpoint document for ``state`` and ``trim`` as bytes."""
    doc = {
        "v": CHECKPOINT_VERSION,
        "mapping": mapping_fingerprint(),
        "saved_at": time.time() if saved_at is None else saved_at,
        "state": _state_to_data(state),
        "trim": trim.to_data(),
    }
    try:
        return _encode(doc)
    except OverflowError:
        # A counter grew past msgpack's 64-bit integers (absurd but valid input): store such values as
        # floats, as the exposition renders them anyway, rather than never checkpointing again.
        return _encode(_big_ints_to_floats(doc))


def load(raw: bytes, series_cap: int, where: str = "checkpoint") -> Restored:
    """Restore a checkpoint written by :func:`pack` (or by version 1 of this format)."""
    rebuild = "run `boilerhouse aggregator --rebuild`"
    try:
        doc = _decode(raw)
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"{where} cannot be decoded ({exc}): {rebuild}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), dict):
        raise CheckpointError(f"{where} is not a checkpoint document: {rebuild}")
    version = doc.get("v")
    if version not in (1, CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{where} has format version {version!r}, this aggregator reads 1..{CHECKPOINT_VERSION}"
        )
    if doc.get("mapping") != mapping_fingerprint():
        raise CheckpointError(
            f"{where} was written by another metric mapping (buckets or metrics changed): {rebuild}"
        )
    try:
        state = _state_from_data(doc["state"], series_cap, version)
        trim = TrimWindow.from_data(doc.get("trim"))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{where} is damaged ({type(exc).__name__}: {exc}): {rebuild}") from None
    return Restored(state, trim, float(doc.get("saved_at") or time.time()))


def _state_to_data(state: State) -> dict[str, Any]:
    def items(d: Mapping[tuple[str, ...], Any]) -> list[list[Any]]:
        return [[list(k), v] for k, v in d.items()]

    return {
        "counters": {n: items(d) for n, d in state.counters.items()},
        "hists": {n: items(d) for n, d in state.hists.items()},
        "gauges": {n: items(d) for n, d in state.gauges.items()},
        "sources": {s: [i.service, i.version, i.last_seen, i.stopped] for s, i in state.sources.items()},
        "last_seq": state.last_seq,
        "positions": {str(p): i for p, i in state.positions.items()},
        "newest_ts": state.newest_ts,
    }


def _state_from_data(data: Mapping[str, Any], series_cap: int, version: int) -> State:
    state = State(series_cap)
    for attr in ("counters", "hists", "gauges"):
        target = getattr(state, attr)
        for name, rows in data.get(attr, {}).items():
            if name in target:  # a metric removed from the mapping is dropped
                target[name] = {tuple(k): v for k, v in rows}
    if version == 1:
        _from_v1(state, data.get("sources", {}))
    else:
        state.sources = {
            s: Source(str(r[0]), str(r[1]), float(r[2]), bool(r[3])) for s, r in data["sources"].items()
        }
    state.last_seq = {str(s): int(n) for s, n in data.get("last_seq", {}).items()}
    state.positions = {int(p): str(i) for p, i in data.get("positions", {}).items()}
    state.newest_ts = float(data.get("newest_ts", 0.0))
    return state


def _from_v1(state: State, sources: Mapping[str, list[Any]]) -> None:
    """Version 1 sources were ``[service, version, start_time_s, last_seen, stopped]``."""
    info, start = METRICS_BY_NAME["info"].name, METRICS_BY_NAME["start_time_seconds"].name
    for src, (service, version, start_time, last_seen, stopped) in sources.items():
        state.sources[src] = Source(str(service), str(version), float(last_seen), bool(stopped))
        if stopped:
            continue
        if version:
            state.gauges[info].setdefault((str(version),), {})[src] = 1.0
        if start_time:
            state.gauges[start].setdefault((), {})[src] = float(start_time)


def _big_ints_to_floats(value: Any) -> Any:
    if type(value) is int:
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, dict):
        return {k: _big_ints_to_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_to_floats(v) for v in value]
    return value
