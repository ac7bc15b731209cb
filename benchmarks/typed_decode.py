"""Experiment, not used by the aggregator: decode and validate a batch in C with typed msgspec Structs.

One Struct per event type (a tagged union on ``type``) with the schema's constraints, generated from
shared/events/schema.py. It measures how much of the decode + validate cost a typed decoder would
remove; the aggregator's handlers read dicts, so adopting it means rewriting them for attributes.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

import msgspec

from shared.events.codec import MAX_SRC_LEN, MAX_STR_LEN, encode_batch
from shared.events.schema import EVENT_TYPES, ID_PATTERN, PATH_PATTERN, TRACE_ID_PATTERN, EventType, Field

from .throughput import BATCH, SOURCES
from .workload import enveloped, make_events


def _annotation(f: Field) -> Any:
    if f.kind == "trace_id":
        t: Any = Annotated[str, msgspec.Meta(pattern=TRACE_ID_PATTERN.pattern)]
        return t | None
    if f.kind in ("str", "id"):
        if f.choices is not None:
            t = Literal[tuple(sorted(f.choices))]  # type: ignore[misc]
        elif f.kind == "id":
            t = Annotated[str, msgspec.Meta(pattern=ID_PATTERN.pattern)]
        elif f.name == "path":
            t = Annotated[str, msgspec.Meta(pattern=PATH_PATTERN.pattern + "|^<unmatched>$", max_length=128)]
        else:
            t = Annotated[str, msgspec.Meta(max_length=MAX_STR_LEN)]
    else:
        base = int if f.kind == "int" else float
        t = Annotated[base, msgspec.Meta(ge=f.minimum)] if f.minimum is not None else base
    return (t | None) if f.optional else t


def _struct(et: EventType) -> type:
    fields: list[Any] = [
        ("seq", Annotated[int, msgspec.Meta(ge=1)]),
        ("ts", Annotated[float, msgspec.Meta(ge=0, lt=1e11)]),
    ]
    fields += [(f.name, _annotation(f), None) if f.optional else (f.name, _annotation(f)) for f in et.fields]
    return msgspec.defstruct(et.name.replace(".", "_"), fields, tag_field="type", tag=et.name)


STRUCTS = [_struct(et) for et in EVENT_TYPES]


class TypedBatch(msgspec.Struct):
    v: int
    src: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SRC_LEN)]
    events: list[Union[tuple(STRUCTS)]]  # type: ignore[valid-type]  # noqa: UP007


def run(n: int = 200_000, reps: int = 5) -> float:
    """Seconds per event to decode *and validate* the benchmark mix into typed Structs (best of ``reps``)."""
    per_src = n // SOURCES
    payloads = []
    for i in range(SOURCES):
        events = enveloped(make_events(per_src, seed=i))
        payloads += [
            encode_batch(f"bench-{i}:h:1:ab", events[k : k + BATCH]) for k in range(0, per_src, BATCH)
        ]
    decode = msgspec.msgpack.Decoder(TypedBatch).decode
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        for p in payloads:
            decode(p)
        best = min(best, (time.process_time() - t0) / (per_src * SOURCES))
    return best
