"""Conformance cases (conformance/cases/*.json): loading, strict validation, raw-entry encoding."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

REPO = Path(__file__).resolve().parents[2]
CASES_DIR = REPO / "conformance" / "cases"

#: Publisher options a case may give a source (snake_case; each driver maps them to its API).
SOURCE_OPTIONS = frozenset(
    {
        "service",
        "version",
        "partitions",
        "buffer_size",
        "batch_size",
        "flush_interval_s",
        "heartbeat_interval_s",
    }
)
#: Defaults every driver applies: heartbeats off, so that counts do not depend on timing.
SOURCE_DEFAULTS: dict[str, Any] = {"service": "conformance", "version": "1.0.0", "heartbeat_interval_s": 3600}

#: Pipeline-health counters that must have no samples unless a case lists samples of them.
HEALTH_METRICS = (
    "boilerhouse_aggregator_dead_letters_total",
    "boilerhouse_events_lost_total",
    "boilerhouse_aggregator_duplicates_total",
    "boilerhouse_aggregator_series_overflow_total",
)

SampleKey = tuple[str, frozenset[tuple[str, str]]]


class CaseError(ValueError):
    """A case file that does not follow conformance/README.md."""


@dataclass(frozen=True)
class Expectation:
    """Samples that must be exposed with exactly these values, and series that must not be exposed.

    For every sample name in ``samples`` (unless listed in ``partial``) the listed series are all
    the series of that name. ``absent`` holds (name, labels) pairs; labels None means no series at all.
    """

    samples: dict[SampleKey, float]
    absent: tuple[tuple[str, frozenset[tuple[str, str]] | None], ...] = ()
    partial: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    path: Path
    kind: str  # "emit": a language driver publishes; "raw": the harness writes exact entries
    steps: tuple[dict[str, Any], ...]
    sources: dict[str, dict[str, Any]]
    partitions: int
    aggregator_env: dict[str, str]
    expect: Expectation
    later: tuple[tuple[float, Expectation], ...] = field(default=())
    #: A contract bug: the aggregator does not do what docs/events.md says (the case expects the docs).
    known_issue: str | None = None


def _keys(
    obj: dict[str, Any], allowed: set[str], where: str, required: frozenset[str] | set[str] = frozenset()
) -> None:
    if not isinstance(obj, dict):
        raise CaseError(f"{where}: expected an object")
    unknown = set(obj) - allowed
    if unknown:
        raise CaseError(f"{where}: unknown keys {sorted(unknown)}")
    missing = required - set(obj)
    if missing:
        raise CaseError(f"{where}: missing keys {sorted(missing)}")


def _labels(raw: Any, where: str) -> frozenset[tuple[str, str]]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise CaseError(f"{where}: labels must be an object of strings")
    return frozenset(raw.items())


def _expectation(raw: Any, where: str) -> Expectation:
    _keys(raw, {"samples", "absent", "partial"}, where)
    samples: dict[SampleKey, float] = {}
    for i, item in enumerate(raw.get("samples", [])):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise CaseError(f"{where}.samples[{i}]: expected [name, {{labels}}, value]")
        if type(item[2]) not in (int, float):
            raise CaseError(f"{where}.samples[{i}]: value must be a number")
        key = (item[0], _labels(item[1], f"{where}.samples[{i}]"))
        if key in samples:
            raise CaseError(f"{where}.samples[{i}]: listed twice")
        samples[key] = float(item[2])
    absent: list[tuple[str, frozenset[tuple[str, str]] | None]] = []
    for i, item in enumerate(raw.get("absent", [])):
        if not (isinstance(item, list) and len(item) in (1, 2) and isinstance(item[0], str)):
            raise CaseError(f"{where}.absent[{i}]: expected [name] or [name, {{labels}}]")
        absent.append((item[0], _labels(item[1], f"{where}.absent[{i}]") if len(item) == 2 else None))
    partial = raw.get("partial", [])
    if not isinstance(partial, list) or not all(isinstance(p, str) for p in partial):
        raise CaseError(f"{where}.partial: expected a list of sample names")
    return Expectation(samples, tuple(absent), frozenset(partial))


EMIT_STEPS = {"emit", "flush", "close", "abandon", "sleep_s"}
RAW_STEPS = {"xadd", "sleep_s"}


def step_kind(step: dict[str, Any]) -> str:
    """``emit``, ``flush``, ``close``, ``abandon``, ``sleep_s`` or ``xadd``."""
    (kind,) = set(step) & (EMIT_STEPS | RAW_STEPS)
    return kind


def _step(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CaseError(f"{where}: expected an object")
    if "emit" in raw:
        _keys(raw, {"emit", "fields", "source", "repeat"}, where)
        if not isinstance(raw["emit"], str) or not isinstance(raw.get("fields", {}), dict):
            raise CaseError(f"{where}: emit needs a type name and a fields object")
        if type(raw.get("repeat", 1)) is not int or raw.get("repeat", 1) < 1:
            raise CaseError(f"{where}: repeat must be a positive integer")
    elif "xadd" in raw:
        _keys(raw, {"xadd"}, where)
        _keys(raw["xadd"], {"stream", "batch", "fields", "times"}, f"{where}.xadd")
        if ("batch" in raw["xadd"]) == ("fields" in raw["xadd"]):
            raise CaseError(f"{where}.xadd: exactly one of batch and fields")
    elif "sleep_s" in raw:
        _keys(raw, {"sleep_s"}, where)
        if type(raw["sleep_s"]) not in (int, float) or raw["sleep_s"] < 0:
            raise CaseError(f"{where}: sleep_s must be a number >= 0")
    else:
        kinds = sorted(set(raw) & {"flush", "close", "abandon"})
        if len(kinds) != 1:
            raise CaseError(f"{where}: unknown step {sorted(raw)}")
        kind = kinds[0]
        _keys(raw, {kind}, where)
        if not isinstance(raw[kind], str):
            raise CaseError(f"{where}: {kind} names a source")
    return raw


def load_case(path: Path) -> Case:
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CaseError(f"{path.name}: not JSON: {exc}") from exc
    where = path.name
    _keys(
        raw,
        {
            "name",
            "description",
            "known_issue",
            "sources",
            "partitions",
            "aggregator_env",
            "steps",
            "expect",
            "later",
        },
        where,
        {"name", "description", "steps", "expect"},
    )
    if raw["name"] != path.stem:
        raise CaseError(f"{where}: name {raw['name']!r} must be the file name without .json")
    steps = tuple(_step(s, f"{where}.steps[{i}]") for i, s in enumerate(raw["steps"]))
    kinds = {step_kind(s) for s in steps} - {"sleep_s"}
    if kinds <= RAW_STEPS and "xadd" in kinds:
        kind = "raw"
    elif kinds <= EMIT_STEPS and "emit" in kinds:
        kind = "emit"
    else:
        raise CaseError(f"{where}: steps are either emit/flush/close/abandon or xadd (plus sleep_s)")
    partitions = raw.get("partitions", 1)
    if type(partitions) is not int or partitions < 1:
        raise CaseError(f"{where}: partitions must be a positive integer")
    sources: dict[str, dict[str, Any]] = {}
    for name, options in raw.get("sources", {}).items():
        _keys(options, set(SOURCE_OPTIONS), f"{where}.sources.{name}")
        sources[name] = options
    for i, s in enumerate(steps):
        ref = (
            s.get("source", "main")
            if "emit" in s
            else next((s[k] for k in ("flush", "close", "abandon") if k in s), None)
        )
        if ref is not None and not isinstance(ref, str):
            raise CaseError(f"{where}.steps[{i}]: source must be a string")
        if ref is not None:
            sources.setdefault(ref, {})
    for options in sources.values():
        for key, value in SOURCE_DEFAULTS.items():
            options.setdefault(key, value)
        options.setdefault("partitions", partitions)
    env = raw.get("aggregator_env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise CaseError(f"{where}.aggregator_env: an object of strings")
    later: list[tuple[float, Expectation]] = []
    for i, item in enumerate(raw.get("later", [])):
        _keys(item, {"after_s", "expect"}, f"{where}.later[{i}]", {"after_s", "expect"})
        later.append((float(item["after_s"]), _expectation(item["expect"], f"{where}.later[{i}].expect")))
    return Case(
        name=raw["name"],
        description=raw["description"],
        path=path,
        kind=kind,
        steps=steps,
        sources=sources if kind == "emit" else {},
        partitions=partitions,
        aggregator_env=env,
        expect=_expectation(raw["expect"], f"{where}.expect"),
        later=tuple(later),
        known_issue=raw.get("known_issue"),
    )


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    return [load_case(p) for p in sorted(directory.glob("*.json"))]


# ---- raw entries: JSON values with tags, encoded exactly -------------------------------------------

#: Placeholder ext type for float32 values: msgpack-python writes a float32 only with a global option,
#: so a 4-byte ext (fixext 4: d6 <type> <4 bytes>) is written and then rewritten as ca <4 bytes>.
_F32_EXT = 77
_F32_MARKER = bytes([0xD6, _F32_EXT])


def _value(spec: Any, now: float) -> Any:
    """A case's JSON value as the Python value msgpack encodes as the contract's reader sees it."""
    if isinstance(spec, list):
        out: list[Any] = []
        for item in spec:
            if isinstance(item, dict) and set(item) == {"$repeat"}:
                rep = item["$repeat"]
                out.extend(_value(rep["item"], now) for _ in range(rep["count"]))
            else:
                out.append(_value(item, now))
        return out
    if isinstance(spec, dict):
        if len(spec) == 1:
            ((tag, arg),) = spec.items()
            if tag == "$float64":
                return float(arg)  # "nan", "inf" or a number
            if tag == "$float32":
                return msgpack.ExtType(_F32_EXT, struct.pack(">f", float(arg)))
            if tag == "$bin":
                return bytes.fromhex(arg)
            if tag == "$now":
                return now + float(arg)
            if tag == "$map":
                return {_key(_value(k, now)): _value(v, now) for k, v in arg}
            if tag.startswith("$"):
                raise CaseError(f"unknown tag {tag}")
        return {k: _value(v, now) for k, v in spec.items()}
    return spec


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


def encode_value(spec: Any, now: float | None = None) -> bytes:
    """msgpack of a tagged JSON value: ints stay ints, JSON numbers with a fraction or exponent are float64."""
    packed = msgpack.packb(_value(spec, time.time() if now is None else now), use_bin_type=True)
    wanted = _count_float32(spec)
    if wanted:
        if packed.count(_F32_MARKER) != wanted:  # the marker bytes also occur elsewhere: ambiguous
            raise CaseError("cannot place $float32 values unambiguously in this value")
        packed = _rewrite_float32(packed)
    return packed


def _count_float32(spec: Any) -> int:
    if isinstance(spec, list):
        return sum(_count_float32(x) for x in spec)
    if isinstance(spec, dict):
        if set(spec) == {"$float32"}:
            return 1
        return sum(_count_float32(v) for v in spec.values())
    return 0


def _rewrite_float32(packed: bytes) -> bytes:
    out = bytearray()
    i = 0
    while True:
        j = packed.find(_F32_MARKER, i)
        if j < 0:
            out += packed[i:]
            return bytes(out)
        out += packed[i:j] + b"\xca" + packed[j + 2 : j + 6]
        i = j + 6


def entry_fields(xadd: dict[str, Any], now: float | None = None) -> dict[bytes, bytes]:
    """The fields of one raw stream entry: ``batch`` is encoded as field ``b``; ``fields`` are given
    one by one, each either ``{"$raw": hex}``, ``{"$zeros": n}`` (n zero bytes) or a tagged value."""
    if "batch" in xadd:
        return {b"b": encode_value(xadd["batch"], now)}
    out: dict[bytes, bytes] = {}
    for name, spec in xadd["fields"].items():
        if isinstance(spec, dict) and set(spec) == {"$raw"}:
            out[name.encode()] = bytes.fromhex(spec["$raw"])
        elif isinstance(spec, dict) and set(spec) == {"$zeros"}:
            out[name.encode()] = bytes(spec["$zeros"])
        else:
            out[name.encode()] = encode_value(spec, now)
    return out
