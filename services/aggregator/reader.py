"""Reading ranges of the partition streams (XRANGE pages, merged in id order) as decoded entries."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from shared.events import bounded
from shared.events.bus import Client, is_cluster
from shared.events.codec import ENTRY_FIELD, Batch, EventDecodeError, decode_batch
from shared.events.replies import RawEntry, StreamInfo, entries, read_reply
from shared.events.streams import DEFAULT_PREFIX, StreamId, format_id, parse_id, stream_key

from .filters import EventFilter
from .fold import TrimWindow
from .times import MAX_SEQ

PAGE = 1000
#: Entries of the first page read, and the bytes a page should hold: the next page holds as many entries
#: as fit at the size of the largest of the previous page (entries hold up to 1 MiB; one too large to hold
#: is read again with its payload skipped on the wire, see :func:`_page`).
FIRST_PAGE = 16
PAGE_BYTES = 8 << 20
#: The id after every id.
END: StreamId = (MAX_SEQ, MAX_SEQ)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its partition and id, its fields as read, and the decoded batch or the reason it
    is unusable."""

    partition: int
    id: StreamId
    fields: dict[bytes, bytes] | None
    batch: Batch | None
    error: EventDecodeError | None = None

    @property
    def id_str(self) -> str:
        return format_id(self.id)


def decode_entry(partition: int, raw: RawEntry) -> Entry:
    raw_id, fields = raw
    sid = parse_id(raw_id)
    try:
        return Entry(partition, sid, fields, decode_batch((fields or {}).get(ENTRY_FIELD), format_id(sid)))
    except EventDecodeError as exc:
        return Entry(partition, sid, fields, None, exc)


def trim_window(info: StreamInfo | None) -> TrimWindow:
    """For a fold from the start of a stream: a trim window open up to the stream's last entry if entries
    were removed from it (trimmed or deleted), closed otherwise."""
    window = TrimWindow()
    if info is not None and info.entries_removed:
        window.start((), info.last_generated_id)
    return window


def _page(client: Client, key: str, lo: str, hi: str, count: int, reverse: bool) -> list[RawEntry]:
    """One XRANGE (XREVRANGE) page. A page holding an entry too large for this process's memory is read
    again with values longer than an entry may be skipped on the wire: that entry comes with an
    :class:`~shared.events.codec.Oversized` payload, which the ingest step dead-letters as ``too_large``
    (as the live consumer does), instead of failing the read each time it is tried."""
    try:
        if reverse:
            return entries(client.xrevrange(key, max=hi, min=lo, count=count))
        return entries(client.xrange(key, min=lo, max=hi, count=count))
    except bounded.OUT_OF_MEMORY as exc:
        bounded.reraise_unless_out_of_memory(exc)
        args = ("XREVRANGE", key, hi, lo) if reverse else ("XRANGE", key, lo, hi)
        return entries(bounded.call(client, key, *args, "COUNT", count))


def _partition_entries(
    client: Client, key: str, partition: int, start: StreamId, end: StreamId, page: int, reverse: bool = False
) -> Iterator[tuple[int, RawEntry]]:
    """Pages of at most ``page`` entries and about :data:`PAGE_BYTES`; the first page is small (a tail
    usually needs a few entries, and entries hold up to 1 MiB)."""
    lo, hi = format_id(start), format_id(end)
    count = min(page, FIRST_PAGE)
    while True:
        rows = _page(client, key, lo, hi, count, reverse)
        largest = 64
        for raw in rows:
            payload = (raw[1] or {}).get(ENTRY_FIELD)
            if isinstance(payload, bytes):
                largest = max(largest, len(payload))
            yield partition, raw
        if len(rows) < count:
            return
        count = max(1, min(page, count * 4, PAGE_BYTES // largest))
        last = rows[-1][0].decode()
        if reverse:
            hi = "(" + last
        else:
            lo = "(" + last


class StreamReader:
    """Reads the partition streams of one deployment.

    Parameters:
        client: a client from :func:`shared.events.bus.connect`.
        partitions: number of partition streams.
        key_prefix: stream key prefix (``BOILERHOUSE_STREAM_PREFIX``).
    """

    def __init__(
        self, client: Client, partitions: int = 1, key_prefix: str = DEFAULT_PREFIX, page: int = PAGE
    ) -> None:
        self.client = client
        self.partitions = list(range(partitions))
        self.key_prefix = key_prefix
        self.page = page
        self._turn = -1

    def key(self, partition: int) -> str:
        return stream_key(partition, self.key_prefix)

    def raw(
        self, start: StreamId = (0, 0), end: StreamId = END, partitions: Iterable[int] | None = None
    ) -> Iterator[tuple[int, RawEntry]]:
        """``(partition, entry)`` with start <= id <= end of all partitions, merged in id order, undecoded."""
        parts = list(self.partitions if partitions is None else partitions)
        iters = [_partition_entries(self.client, self.key(p), p, start, end, self.page) for p in parts]
        if len(iters) == 1:
            return iters[0]
        return heapq.merge(*iters, key=lambda e: (parse_id(e[1][0]), e[0]))

    def range(
        self, start: StreamId = (0, 0), end: StreamId = END, partitions: Iterable[int] | None = None
    ) -> Iterator[Entry]:
        """Entries with start <= id <= end of all partitions, merged in id order, decoded."""
        for partition, raw in self.raw(start, end, partitions):
            yield decode_entry(partition, raw)

    def last_events(self, count: int, flt: EventFilter) -> list[tuple[Entry, dict[str, Any]]]:
        """The newest ``count`` events that match ``flt``, oldest first."""
        found: list[tuple[tuple[StreamId, int, int], Entry, dict[str, Any]]] = []
        for p in self.partitions:
            got: list[tuple[tuple[StreamId, int, int], Entry, dict[str, Any]]] = []
            for _, raw in _partition_entries(
                self.client, self.key(p), p, (0, 0), END, self.page, reverse=True
            ):
                entry = decode_entry(p, raw)
                if entry.batch is None:
                    continue
                for i in range(len(entry.batch.events) - 1, -1, -1):
                    ev = entry.batch.events[i]
                    if flt.matches(entry.batch.src, ev):
                        got.append(((entry.id, p, i), entry, ev))
                if len(got) >= count:
                    break
            found.extend(got[:count])
        found.sort(key=lambda x: x[0])
        return [(e, ev) for _, e, ev in found[-count:]] if count else []

    def read_after(
        self, after: dict[int, StreamId], count: int, block_ms: int
    ) -> list[tuple[int, list[RawEntry]]]:
        """Entries after ``after[p]`` of each partition, waiting up to ``block_ms`` when there are none.

        One XREAD on a single Redis. On a cluster an XREAD's streams must share a slot: one non-blocking
        XREAD per partition, and when all are empty a wait on one partition (in turn) for a slice.
        """
        by_key = {self.key(p): p for p in after}
        if not is_cluster(self.client) or len(after) == 1:
            reply = self._xread({self.key(p): format_id(sid) for p, sid in after.items()}, count, block_ms)
            return [(by_key[key], rows) for key, rows in read_reply(reply)]
        got = []
        for p, sid in after.items():
            for key, rows in read_reply(self._xread({self.key(p): format_id(sid)}, count, None)):
                got.append((by_key[key], rows))
        if got:
            return got
        self._turn = (self._turn + 1) % len(after)
        p = sorted(after)[self._turn]
        reply = self._xread({self.key(p): format_id(after[p])}, count, max(10, block_ms // len(after)))
        return [(by_key[key], rows) for key, rows in read_reply(reply)]

    def _xread(self, after: dict[str, str], count: int, block_ms: int | None) -> object:
        """XREAD; read again with values too long to hold skipped on the wire if the reply ran out of
        memory (as :func:`_page`)."""
        try:
            return self.client.xread(after, count=count, block=block_ms)  # type: ignore[arg-type]  # redis-py types streams as dict[KeyT, StreamIdT]; str keys are fine
        except bounded.OUT_OF_MEMORY as exc:
            bounded.reraise_unless_out_of_memory(exc)
            block = ("BLOCK", block_ms) if block_ms is not None else ()
            keys = list(after)
            return bounded.call(
                self.client, keys[0], "XREAD", "COUNT", count, *block, "STREAMS", *keys, *after.values()
            )

    def info(self, partition: int) -> StreamInfo | None:
        """``XINFO STREAM`` of the partition's stream, or None if there is no such stream."""
        key = self.key(partition)
        try:
            try:
                return StreamInfo.parse(self.client.xinfo_stream(key))
            except (
                bounded.OUT_OF_MEMORY
            ) as exc:  # it shows the first and last entries: one is too large to hold
                bounded.reraise_unless_out_of_memory(exc)
                return StreamInfo.parse(bounded.call(self.client, key, "XINFO", "STREAM", key))
        except redis.ResponseError:
            return None

    def trim_window(self, partition: int) -> TrimWindow:
        """The :func:`trim_window` of the partition's stream as it is now."""
        return trim_window(self.info(partition))

    def newest_ids(self) -> dict[int, StreamId]:
        """Each partition's newest entry id ((0, 0) for an empty stream)."""
        out = {}
        for p in self.partitions:
            newest = _page(self.client, self.key(p), "-", "+", 1, reverse=True)
            out[p] = parse_id(newest[0][0]) if newest else (0, 0)
        return out

    def bounds(self) -> tuple[StreamId, StreamId] | None:
        """First and last ids over all partitions, or None if every stream is empty."""
        firsts, lasts = [], []
        for p in self.partitions:
            head = _page(self.client, self.key(p), "-", "+", 1, reverse=False)
            tail = _page(self.client, self.key(p), "-", "+", 1, reverse=True)
            if head:
                firsts.append(parse_id(head[0][0]))
                lasts.append(parse_id(tail[0][0]))
        return (min(firsts), max(lasts)) if firsts else None
