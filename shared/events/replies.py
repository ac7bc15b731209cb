"""Typed views of the Redis stream replies the code reads (XINFO, XPENDING, XREADGROUP, XRANGE).

redis-py returns these as loosely typed dicts and lists whose values are bytes (binary clients, RESP2).
Parsing them once here lets mypy check every caller and keeps the bytes-or-str handling in one place.

Inside a transaction on a Redis Cluster redis-py does not parse replies at all (only ``CLUSTER ...``
callbacks run there): ``XINFO`` and ``XPENDING`` arrive as flat RESP2 lists, entries' fields as
``[field, value, ...]``. Every view here accepts both shapes, so callers need not know which bus
answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .streams import StreamId, parse_id

#: One stream entry as redis-py returns it: id and fields (empty or None once deleted while pending).
RawEntry = tuple[bytes, dict[bytes, bytes] | None]


def text(value: object) -> str:
    """A reply value as text: bytes decoded (invalid UTF-8 replaced), anything else via ``str``."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    return str(value)


def optional_int(value: object) -> int | None:
    """An integer reply that may be nil."""
    if value is None:
        return None
    return value if isinstance(value, int) else int(text(value))


def as_map(reply: object) -> Mapping[Any, Any]:
    """A reply that is a map: as parsed (a dict, str keys) or raw (``[key, value, key, value ...]``,
    bytes keys, from a cluster transaction); keys of a raw one are decoded."""
    if isinstance(reply, Mapping):
        return reply
    if isinstance(reply, list | tuple):
        return {text(k): v for k, v in zip(reply[::2], reply[1::2], strict=True)}
    return {}


def fields_map(fields: object) -> dict[bytes, bytes] | None:
    """An entry's fields: a dict as parsed, a flat list raw; None (or empty) for an entry deleted while
    pending."""
    if fields is None:
        return {}  # as redis-py parses it outside a transaction
    if isinstance(fields, dict):
        return fields
    if isinstance(fields, list | tuple):
        return dict(zip(fields[::2], fields[1::2], strict=True))
    return None


def _entry(raw: Any) -> RawEntry:
    entry_id, fields = raw
    return entry_id, fields_map(fields)


def _entries(raw: Any) -> list[RawEntry]:
    """Entries as redis-py parsed them (fields in dicts: taken as they are, the hot path of every read)
    or raw from a cluster transaction (fields in flat lists: converted)."""
    if isinstance(raw[0][1], dict):
        return list(raw)
    return [_entry(e) for e in raw]


def _id(value: object, default: StreamId = (0, 0)) -> StreamId:
    return parse_id(value) if isinstance(value, bytes | str) and value else default


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """``XINFO STREAM``. ``entries_added`` is None on servers older than Redis 7."""

    length: int
    first_id: StreamId | None
    last_generated_id: StreamId
    max_deleted_id: StreamId
    entries_added: int | None

    @classmethod
    def parse(cls, raw: object) -> StreamInfo:
        reply = as_map(raw)
        first = reply.get("first-entry")
        return cls(
            length=int(reply.get("length", 0)),
            first_id=parse_id(first[0]) if first else None,
            last_generated_id=_id(reply.get("last-generated-id")),
            max_deleted_id=_id(reply.get("max-deleted-entry-id")),
            entries_added=optional_int(reply.get("entries-added")),
        )

    @property
    def entries_removed(self) -> bool:
        """Whether entries were ever removed (trimmed or deleted); False where the server cannot tell."""
        return self.entries_added is not None and self.entries_added > self.length


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One element of ``XINFO GROUPS``. ``entries_read`` and ``lag`` are None when Redis cannot tell."""

    name: str
    consumers: int
    pending: int
    last_delivered_id: StreamId
    entries_read: int | None
    lag: int | None

    @classmethod
    def parse(cls, raw: object) -> GroupInfo:
        reply = as_map(raw)
        return cls(
            name=text(reply.get("name")),
            consumers=int(reply.get("consumers", 0)),
            pending=int(reply.get("pending", 0)),
            last_delivered_id=_id(reply.get("last-delivered-id")),
            entries_read=optional_int(reply.get("entries-read")),
            lag=optional_int(reply.get("lag")),
        )


def groups(reply: object) -> list[GroupInfo]:
    """Every group of an ``XINFO GROUPS`` reply."""
    return [GroupInfo.parse(raw) for raw in cast("Sequence[object]", reply or [])]


def find_group(reply: object, name: str) -> GroupInfo | None:
    """The group called ``name`` in an ``XINFO GROUPS`` reply."""
    for group in groups(reply):
        if group.name == name:
            return group
    return None


@dataclass(frozen=True, slots=True)
class PendingSummary:
    """``XPENDING key group`` (the summary form); ``consumers``: (name, pending entries) of each."""

    count: int
    min_id: StreamId | None
    max_id: StreamId | None
    consumers: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, reply: object) -> PendingSummary:
        if isinstance(reply, list | tuple):  # raw: [count, min, max, [[consumer, count], ...]]
            count, lo, hi, per = reply
            consumers = tuple((text(name), int(n)) for name, n in per or ())
        else:
            parsed = cast("Mapping[str, Any]", reply)
            count, lo, hi = parsed.get("pending", 0), parsed.get("min"), parsed.get("max")
            consumers = tuple(
                (text(c.get("name")), int(c.get("pending", 0))) for c in parsed.get("consumers") or ()
            )
        return cls(
            count=int(count or 0),
            min_id=parse_id(lo) if lo else None,
            max_id=parse_id(hi) if hi else None,
            consumers=consumers,
        )


def entries(reply: object) -> list[RawEntry]:
    """``XRANGE``/``XREVRANGE``: the entries, oldest (or newest) first; an empty list for nil."""
    return _entries(reply) if reply else []


def read_reply(reply: object) -> list[tuple[str, list[RawEntry]]]:
    """``XREAD``/``XREADGROUP``: ``[(stream key, entries)]`` for streams that returned entries.

    Accepts both reply shapes: a list of ``[key, entries]`` pairs (RESP2) and a mapping of key to
    entries (RESP3).
    """
    if not reply:
        return []
    pairs: Iterable[Any] = reply.items() if isinstance(reply, Mapping) else cast("Iterable[Any]", reply)
    out: list[tuple[str, list[RawEntry]]] = []
    for key, raw in pairs:
        if raw:
            out.append((text(key), _entries(raw)))
    return out
