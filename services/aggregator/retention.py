"""Retention: trimming streams by age, and telling from XINFO whether entries were removed unread.

Streams are trimmed by age (``MINID``) for the replay window, plus a producer-side length cap as a
memory safety valve. Entries removed before the consumer group read them are detected here and their
events counted as lost (``events_lost_total{reason="trimmed"}``), never silently skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from shared.events.bus import Client
from shared.events.replies import GroupInfo, StreamInfo
from shared.events.streams import StreamId, format_id


@dataclass(frozen=True, slots=True)
class Removal:
    """Entries the group had not read were removed: ``why`` for the log; ``deleted`` is the stream's
    ``max-deleted-entry-id`` when an XDEL did it (to account for it once); ``entries_read`` is the
    group's true read counter to set when a trim left Redis' counter too high (None: leave it)."""

    why: str
    deleted: StreamId | None = None
    entries_read: int | None = None


def removed_unread(info: StreamInfo, group: GroupInfo, handled_deleted: StreamId, read: int) -> list[Removal]:
    """What ``info``/``group`` (taken atomically with a read that returned ``read`` entries) say about
    entries removed after the group's last delivered id L, before that read.

    Everything up to L was delivered (folded, or pending and seen when drained). Entries were lost
    unread when an entry after L was deleted (``max-deleted-entry-id`` > L), or when the stream's first
    entry is after L and the group's lag (entries added minus entries read) exceeds what is left in the
    stream — for a group that has delivered nothing: when the stream holds fewer entries than were
    ever added.
    """
    found: list[Removal] = []
    last_delivered = group.last_delivered_id
    if info.max_deleted_id > last_delivered and info.max_deleted_id > handled_deleted:
        found.append(
            Removal(f"entry {format_id(info.max_deleted_id)} was deleted unread", info.max_deleted_id)
        )
    if info.first_id is not None and info.first_id <= last_delivered:
        return found  # everything removed had been delivered
    if last_delivered == (0, 0):
        lost = info.entries_removed
    elif info.entries_added is not None and group.entries_read is not None:
        lost = info.entries_added - group.entries_read > info.length
    else:
        lost = group.lag is None and info.length > 0
    if lost:
        # Redis keeps counting the trimmed entries as unread: the group's read counter is set to the
        # truth (all removed entries, plus those this read returned) so the lag gauge is right again.
        entries_read = (info.entries_added or 0) - info.length + read
        found.append(
            Removal(f"entries after {format_id(last_delivered)} were trimmed unread", None, entries_read)
        )
    return found


def trim_by_age(client: Client, stream: str, retention_s: float, now: float, approximate: bool = True) -> int:
    """Remove entries older than ``retention_s`` before ``now`` (Redis' clock, as the entry ids are);
    returns how many."""
    min_ms = int((now - retention_s) * 1000)
    return int(client.xtrim(stream, minid=f"{min_ms}-0", approximate=approximate))


class RedisClock:
    """Redis' clock, read with ``TIME`` and carried forward on this process's monotonic clock.

    Entry ids are stamped by Redis' clock, so liveness, staleness and retention compare against it, not
    against this host's wall clock: an NTP step or a drifting clock here changes nothing, and a
    producer's clock never enters. Until the first :meth:`sync`, the wall clock stands in.
    """

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._anchor: tuple[float, float] | None = None

    def sync(self, client: Client) -> None:
        sec, usec = client.time()
        self._anchor = (sec + usec / 1e6, self._monotonic())

    def now(self) -> float:
        if self._anchor is None:
            return self._wall()
        redis_s, at = self._anchor
        return redis_s + (self._monotonic() - at)
