"""Times and durations as the command-line tools take them, and stream ids as times."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.events.streams import StreamId

#: The largest sequence number of a stream id (``ms-seq``): the end of a millisecond.
MAX_SEQ = 2**64 - 1

TIME_FORMS = (
    "RFC 3339 / ISO 8601 (2026-11-27T03:00:00Z; no zone means UTC), unix seconds (1795748400), "
    "relative to now (-15m, now-2h, -1h30m), 'now', or a stream id (1795748400000-0)"
)


class ArgumentError(ValueError):
    """A bad argument (time, duration, filter); the message says what was expected."""


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_STREAM_ID = re.compile(r"^(\d+)-(\d+)$")
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


def parse_duration_ms(text: str) -> int:
    """``15s``, ``1m30s``, ``500ms`` or plain seconds (``15``) as milliseconds (> 0)."""
    raw = text.strip()
    if _SECONDS.match(raw):
        ms = round(float(raw) * 1000)
    elif _DURATION.match(raw):
        ms = round(sum(float(n) * _UNITS_MS[u] for n, u in _DURATION_PART.findall(raw)))
    else:
        raise ArgumentError(f"cannot parse duration {text!r}: expected e.g. 15s, 1m, 1h30m, 500ms")
    if ms <= 0:
        raise ArgumentError(f"duration {text!r} must be positive")
    return ms


@dataclass(frozen=True, slots=True)
class TimePoint:
    """A parsed time: milliseconds since the epoch, and a stream sequence if given as a stream id."""

    ms: int
    seq: int | None = None

    @property
    def seconds(self) -> float:
        return self.ms / 1000

    def start_id(self) -> StreamId:
        """As the first id of a range (inclusive)."""
        return self.ms, self.seq or 0

    def end_id(self) -> StreamId:
        """As the last id of a range (inclusive): a time covers every entry of its millisecond."""
        return self.ms, MAX_SEQ if self.seq is None else self.seq


def parse_time(text: str, now: float | None = None) -> TimePoint:
    """Parse a time argument (see :data:`TIME_FORMS`); ``now`` is unix seconds (default: the clock)."""
    raw = text.strip()
    now_ms = round((time.time() if now is None else now) * 1000)
    if raw.lower() == "now":
        return TimePoint(now_ms)
    rel = raw[3:].lstrip() if raw.lower().startswith("now") else raw
    if rel.startswith("-") and _DURATION.match(rel[1:].strip()):
        return TimePoint(now_ms - parse_duration_ms(rel[1:].strip()))
    m = _STREAM_ID.match(raw)
    if m:
        return TimePoint(int(m.group(1)), int(m.group(2)))
    if _SECONDS.match(raw):
        seconds = float(raw)
        if seconds >= 1e11:
            raise ArgumentError(
                f"time {text!r} looks like milliseconds; give seconds or a stream id ({raw}-0)"
            )
        return TimePoint(round(seconds * 1000))
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ArgumentError(f"cannot parse time {text!r}: expected {TIME_FORMS}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ms = round(dt.timestamp() * 1000)
    if ms < 0:
        raise ArgumentError(f"time {text!r} is before 1970")
    return TimePoint(ms)


def format_ts(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds."""
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
