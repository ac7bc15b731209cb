"""The one ingest step: decode → validate → dedupe → trim attribution → fold → forget, per stream entry.

The live consumer, replay and rebuild all fold entries through :class:`PartitionIngest`, so "replay
equals live" holds by construction: the only thing that differs between them is where the entries
come from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

import msgspec

from shared.events.codec import ENTRY_FIELD, Batch, EventDecodeError, Oversized, decode_batch
from shared.events.replies import text
from shared.events.streams import StreamId, format_id, parse_id

from .fold import State, TrimWindow, apply_batch, record_dead_letter

#: Sources silent for longer than the forget horizon (by entry time: when Redis accepted their entries)
#: are forgotten at most this often, on a fixed grid of entry time, so that every fold of the same
#: entries forgets at the same points.
FORGET_GRID_S = 5.0
#: Bytes of an entry's payload kept in its dead letter (with the dead-letter stream's length cap, this
#: bounds its memory: see docs/reliability.md).
DEAD_LETTER_PAYLOAD_BYTES = 4_096

_encode_rejected = msgspec.msgpack.Encoder(enc_hook=repr).encode


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry, or one event of it, that could not be used: written to the partition's dead letters."""

    entry_id: str
    reason: str
    detail: str
    payload: bytes

    def fields(self) -> dict[bytes, bytes]:
        """The dead-letter stream entry (documented in docs/events.md)."""
        return {
            b"entry_id": self.entry_id.encode(),
            b"reason": self.reason.encode(),
            b"detail": self.detail[:500].encode(errors="replace"),
            b"payload": self.payload[:DEAD_LETTER_PAYLOAD_BYTES],
        }


class Outcome(Enum):
    """What happened to one entry."""

    FOLDED = "folded"  # decoded (its valid events applied, invalid ones dead-lettered)
    UNUSABLE = "unusable"  # could not be decoded: dead-lettered whole
    COVERED = "covered"  # at or before the position already folded (a redelivery): skipped
    DELETED = "deleted"  # deleted while pending: its events are lost (the caller opens a trim window)


@dataclass
class PartitionIngest:
    """Folds the entries of one partition, in stream order, into ``state``.

    Parameters:
        partition: the partition number (``state.positions`` is kept under it).
        state: the fold state, restored or new.
        trim: the trim window (gaps of sources whose history was trimmed unread count as ``trimmed``).
        forget_after_s: sources silent for longer (entry time) are forgotten (``BOILERHOUSE_SOURCE_FORGET_S``).
    """

    partition: int
    state: State
    trim: TrimWindow = field(default_factory=TrimWindow)
    forget_after_s: float = 86_400.0
    #: The last stream id folded (or covered).
    position: StreamId = (0, 0)
    #: Events seen in folded entries (valid or not), and sources forgotten.
    events: int = 0
    forgotten: int = 0

    #: The event time at which sources are next checked for forgetting (a point of the grid).
    _next_forget: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        saved = self.state.positions.get(self.partition)
        if saved:
            self.position = parse_id(saved)
        if self.state.newest_entry_s:  # restored: the grid goes on where the saved fold left it
            self._next_forget = self._grid_after(self.state.newest_entry_s)

    def entry(
        self,
        sid: StreamId,
        fields: Mapping[bytes, bytes] | None,
        dead: list[DeadLetter] | None = None,
        decoded: Batch | EventDecodeError | None = None,
    ) -> Outcome:
        """Fold one entry (id ``sid``, its fields as read). Dead letters are appended to ``dead``.

        ``decoded``: the entry's payload already decoded (or the decoding error) by a caller that also
        shows it, so it is not decoded twice.
        """
        if sid <= self.position:
            return Outcome.COVERED
        self.position = sid
        entry_id = format_id(sid)
        state = self.state
        state.positions[self.partition] = entry_id
        if not fields:
            return Outcome.DELETED
        payload = fields.get(ENTRY_FIELD)
        try:
            if isinstance(decoded, EventDecodeError):
                raise decoded
            batch = decoded if decoded is not None else decode_batch(payload, entry_id)
        except EventDecodeError as exc:
            record_dead_letter(state, exc.reason)
            if dead is not None:
                if isinstance(payload, bytes):
                    raw = payload
                elif isinstance(payload, Oversized):
                    raw = b""  # never held (too large to read): dead-lettered by id, the detail says why
                else:
                    raw = _encode_rejected({text(k): v for k, v in fields.items()})
                dead.append(DeadLetter(entry_id, exc.reason, exc.detail, raw))
            return Outcome.UNUSABLE
        self.trim.attribute(state, batch, sid)
        for reason, detail, ev in apply_batch(state, batch, sid[0] / 1000):
            record_dead_letter(state, reason)
            if dead is not None:
                dead.append(
                    DeadLetter(entry_id, reason, detail, _encode_rejected({"src": batch.src, "event": ev}))
                )
        self.events += len(batch.events)
        self._maybe_forget()
        return Outcome.FOLDED

    def open_trim_window(self, until: StreamId) -> None:
        """Entries this partition had not read were removed: the next gap of every source known now,
        or first seen before the fold reaches ``until``, counts as ``trimmed``."""
        self.trim.start(self.state.sources, max(until, self.position))

    def _maybe_forget(self) -> None:
        """On a grid of entry time (Redis' clock, never a producer's): forget sources silent for longer
        than the horizon, and the longest silent past the sources cap."""
        newest = self.state.newest_entry_s
        if newest < self._next_forget:
            return
        self._next_forget = self._grid_after(newest)
        gone = self.state.forget_sources(newest - self.forget_after_s) | self.state.evict_sources()
        if gone:
            self.trim.forget(gone)
            self.forgotten += len(gone)

    @staticmethod
    def _grid_after(ts: float) -> float:
        return (math.floor(ts / FORGET_GRID_S) + 1) * FORGET_GRID_S
