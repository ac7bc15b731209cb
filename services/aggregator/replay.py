"""Replay: read ranges of the event streams, filter events, fold up to any instant, write timestamped OpenMetrics.

Replay is the live aggregator's fold (``fold.apply_batch``) run over ``XRANGE`` pages instead of a
consumer group. Entries are selected by stream id, i.e. by the time Redis accepted them, which is
also when the live aggregator could first have seen them: folding the entries with id <= T gives the
state the live aggregator had at instant T (less its read lag).
"""

from __future__ import annotations

import fnmatch
import heapq
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_latest_openmetrics
from prometheus_client.utils import floatToGoString

from shared.events.codec import ENTRY_FIELD, Batch, EventDecodeError, decode_batch
from shared.events.schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, ID_PATTERN
from shared.events.streams import DEFAULT_PREFIX, StreamId, entries_removed, format_id, parse_id, stream_key

from .exposition import StateCollector
from .fold import DEFAULT_SERIES_CAP, State, TrimWindow, apply_batch, merge_states, record_dead_letter

logger = logging.getLogger(__name__)

MAX_SEQ = 2**64 - 1
PAGE = 1000
#: Entries of the first page read, and the bytes a page should hold at most.
FIRST_PAGE = 16
PAGE_BYTES = 8 << 20

TIME_FORMS = (
    "RFC 3339 / ISO 8601 (2026-11-27T03:00:00Z; no zone means UTC), unix seconds (1795748400), "
    "relative to now (-15m, now-2h, -1h30m), 'now', or a stream id (1795748400000-0)"
)


class ReplayError(ValueError):
    """A bad argument (time, duration, filter); the message says what was expected."""


# ---- times ------------------------------------------------------------------------------------------

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
        raise ReplayError(f"cannot parse duration {text!r}: expected e.g. 15s, 1m, 1h30m, 500ms")
    if ms <= 0:
        raise ReplayError(f"duration {text!r} must be positive")
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
            raise ReplayError(f"time {text!r} looks like milliseconds; give seconds or a stream id ({raw}-0)")
        return TimePoint(round(seconds * 1000))
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ReplayError(f"cannot parse time {text!r}: expected {TIME_FORMS}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ms = round(dt.timestamp() * 1000)
    if ms < 0:
        raise ReplayError(f"time {text!r} is before 1970")
    return TimePoint(ms)


def format_ts(seconds: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds."""
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# ---- filters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """Which events to show: a glob over event types, a pool id, a workload id, a source substring."""

    type_pattern: str | None = None
    pool: str | None = None
    workload: str | None = None
    source: str | None = None
    types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        known = [t.name for t in EVENT_TYPES]
        if self.type_pattern is None:
            types = frozenset(known)
        else:
            types = frozenset(fnmatch.filter(known, self.type_pattern))
            if not types:
                raise ReplayError(
                    f"--type {self.type_pattern!r} matches no event type; known types: " + ", ".join(known)
                )
        for flag, value, name in (
            ("--pool", self.pool, "pool_id"),
            ("--workload", self.workload, "workload_id"),
        ):
            if value is not None and not ID_PATTERN.match(value):
                raise ReplayError(f"{flag} {value!r} is not a valid identifier")
            if value is not None and not any(
                name in {f.name for f in EVENT_TYPES_BY_NAME[t].fields} for t in types
            ):
                raise ReplayError(f"{flag} given, but none of the selected event types has a {name}")
        if self.source is not None and not self.source:
            raise ReplayError("--source must not be empty")
        object.__setattr__(self, "types", types)

    def matches(self, src: str, ev: Any) -> bool:
        if type(ev) is not dict:
            return False
        if self.type_pattern is not None:
            type_ = ev.get("type")
            if not isinstance(type_, str) or type_ not in self.types:
                return False
        if self.pool is not None and ev.get("pool_id") != self.pool:
            return False
        if self.workload is not None and ev.get("workload_id") != self.workload:
            return False
        return self.source is None or self.source in src


# ---- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its partition and id, and the decoded batch or the reason it is unusable."""

    partition: int
    id: StreamId
    batch: Batch | None
    error: EventDecodeError | None = None

    @property
    def id_str(self) -> str:
        return format_id(self.id)


def trim_window(xinfo_stream: dict[str, Any]) -> TrimWindow:
    """For a fold from the start of a stream (its ``XINFO STREAM``): a trim window open up to the stream's
    last entry if entries were removed from it (trimmed or deleted), closed otherwise."""
    window = TrimWindow()
    if entries_removed(xinfo_stream):
        window.start(set(), parse_id(xinfo_stream.get("last-generated-id") or b"0-0"))
    return window


def decode_entry(partition: int, raw_id: bytes, fields: dict[bytes, bytes] | None) -> Entry:
    sid = parse_id(raw_id)
    try:
        return Entry(partition, sid, decode_batch((fields or {}).get(ENTRY_FIELD), format_id(sid)))
    except EventDecodeError as exc:
        return Entry(partition, sid, None, exc)


def _partition_entries(
    client: redis.Redis,
    key: str,
    partition: int,
    start: StreamId,
    end: StreamId,
    page: int,
    reverse: bool = False,
) -> Iterator[Entry]:
    """Pages of at most ``page`` entries and about :data:`PAGE_BYTES`; the first page is small (a tail
    usually needs a few entries, and entries hold up to 1 MiB)."""
    lo, hi = format_id(start), format_id(end)
    count = min(page, FIRST_PAGE)
    while True:
        if reverse:
            rows = client.xrevrange(key, max=hi, min=lo, count=count)
        else:
            rows = client.xrange(key, min=lo, max=hi, count=count)
        size = 0
        for raw_id, fields in rows:
            size += len((fields or {}).get(ENTRY_FIELD) or b"")
            yield decode_entry(partition, raw_id, fields)
        if len(rows) < count:
            return
        count = max(1, min(page, count * 4, PAGE_BYTES * len(rows) // max(size, 1)))
        last = rows[-1][0].decode()
        if reverse:
            hi = "(" + last
        else:
            lo = "(" + last


class StreamReader:
    """Reads the partition streams of one deployment.

    Parameters:
        client: a redis client (``protocol=2``, binary replies).
        partitions: number of partition streams.
        key_prefix: stream key prefix (``BOILERHOUSE_STREAM_PREFIX``).
    """

    def __init__(
        self, client: redis.Redis, partitions: int = 1, key_prefix: str = DEFAULT_PREFIX, page: int = PAGE
    ) -> None:
        self.client = client
        self.partitions = list(range(partitions))
        self.key_prefix = key_prefix
        self.page = page

    def key(self, partition: int) -> str:
        return stream_key(partition, self.key_prefix)

    def range(
        self,
        start: StreamId = (0, 0),
        end: StreamId = (MAX_SEQ, MAX_SEQ),
        partitions: Iterable[int] | None = None,
    ) -> Iterator[Entry]:
        """Entries with start <= id <= end of all partitions, merged in id order."""
        parts = list(self.partitions if partitions is None else partitions)
        iters = [_partition_entries(self.client, self.key(p), p, start, end, self.page) for p in parts]
        if len(iters) == 1:
            return iters[0]
        return heapq.merge(*iters, key=lambda e: (e.id, e.partition))

    def last_events(self, count: int, flt: EventFilter) -> list[tuple[Entry, dict[str, Any]]]:
        """The newest ``count`` events that match ``flt``, oldest first."""
        found: list[tuple[tuple[StreamId, int, int], Entry, dict[str, Any]]] = []
        for p in self.partitions:
            got: list[tuple[tuple[StreamId, int, int], Entry, dict[str, Any]]] = []
            for entry in _partition_entries(
                self.client, self.key(p), p, (0, 0), (MAX_SEQ, MAX_SEQ), self.page, reverse=True
            ):
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

    def trim_window(self, partition: int) -> TrimWindow:
        """The :func:`trim_window` of the partition's stream as it is now."""
        try:
            return trim_window(self.client.xinfo_stream(self.key(partition)))
        except redis.ResponseError:  # no such stream
            return TrimWindow()

    def bounds(self) -> tuple[StreamId, StreamId] | None:
        """First and last ids over all partitions, or None if every stream is empty."""
        firsts, lasts = [], []
        for p in self.partitions:
            head = self.client.xrange(self.key(p), count=1)
            tail = self.client.xrevrange(self.key(p), count=1)
            if head:
                firsts.append(parse_id(head[0][0]))
                lasts.append(parse_id(tail[0][0]))
        return (min(firsts), max(lasts)) if firsts else None


# ---- progress ---------------------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr for long runs: redrawn in place on a terminal, a line every few seconds
    otherwise, and nothing at all for runs shorter than ``delay_s``.

    Parameters:
        label: what is being done, e.g. ``replay``.
        total: the amount of work (entries, or milliseconds of stream time); 0 if unknown.
        unit: the unit of ``total`` shown after the counts.
        stream: where to draw (default stderr).
        enabled: False draws nothing (``--quiet``).
    """

    def __init__(
        self,
        label: str,
        total: float,
        unit: str = "entries",
        stream: TextIO | None = None,
        enabled: bool = True,
        delay_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.delay_s = delay_s
        self.clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = clock()
        self.done = 0.0
        self.events = 0
        self.shown = False
        self._next = self.started + delay_s

    def update(self, done: float, events: int = 0) -> None:
        self.done = done
        self.events += events
        if self.enabled:
            now = self.clock()
            if now >= self._next:
                self._draw(now, final=False)
                self._next = now + (0.2 if self.tty else 5.0)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = f"{self.events / elapsed:,.0f} events/s"
        if self.total > 0:
            frac = min(1.0, max(0.0, self.done / self.total))
            bar = "#" * int(frac * 30)
            eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
            return (
                f"{self.label}: [{bar:<30}] {frac * 100:5.1f}% {self.done:,.0f}/{self.total:,.0f} "
                f"{self.unit}, {rate}, {elapsed:.1f}s elapsed, ETA {eta:.0f}s"
            )
        return f"{self.label}: {self.done:,.0f} {self.unit}, {rate}, {elapsed:.1f}s elapsed"

    def _draw(self, now: float, final: bool) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def finish(self) -> None:
        """Draw the final line if anything was drawn before (short runs stay silent)."""
        if self.enabled and self.shown:
            self.done = self.total or self.done
            self._draw(self.clock(), final=True)


# ---- fold -------------------------------------------------------------------------------------------


def fold_entry(state: State, entry: Entry, trim: TrimWindow | None = None) -> int:
    """Fold one entry the way the live consumer does (dead letters are counted, not written).

    ``trim``: the partition's window from :meth:`StreamReader.trim_window`; while it is open, a source's
    missing history before its first retained entry counts as ``events_lost_total{reason="trimmed"}``,
    as in the live aggregator. Returns the number of events in the entry.
    """
    state.positions[entry.partition] = entry.id_str
    if entry.batch is None:
        assert entry.error is not None
        record_dead_letter(state, entry.error.reason)
        return 0
    if trim is not None:
        trim.attribute(state, entry.batch, entry.id)
    for reason, _detail, _ev in apply_batch(state, entry.batch):
        record_dead_letter(state, reason)
    return len(entry.batch.events)


class Replayer:
    """Folds the streams forward in time, one :class:`State` per partition as the live consumer keeps.

    Parameters:
        reader: where the entries come from.
        series_cap: per-metric series cap (``BOILERHOUSE_SERIES_CAP``).
        metrics_prefix: metric name prefix (``BOILERHOUSE_METRICS_PREFIX``).
        source_ttl_s: a source silent for longer stops contributing to gauges (``BOILERHOUSE_SOURCE_TTL_S``).
    """

    def __init__(
        self,
        reader: StreamReader,
        series_cap: int = DEFAULT_SERIES_CAP,
        metrics_prefix: str = "boilerhouse_",
        source_ttl_s: float = 30.0,
    ) -> None:
        self.reader = reader
        self.states = {p: State(series_cap) for p in reader.partitions}
        self.metrics_prefix = metrics_prefix
        self.source_ttl_s = source_ttl_s
        self.position: StreamId = (0, 0)  # everything <= position has been folded
        #: Per partition: where gaps count as trimmed (its stream lost entries before the fold).
        self.trims = {p: reader.trim_window(p) for p in reader.partitions}
        self.entries = 0
        self.events = 0

    def advance_to(self, end: StreamId, progress: Progress | None = None, base_ms: int = 0) -> int:
        """Fold every entry with position < id <= end; returns the entries folded.

        ``progress`` is advanced in seconds of stream time since ``base_ms``.
        """
        if end <= self.position:
            return 0
        start = (
            (self.position[0], self.position[1] + 1)
            if self.position[1] < MAX_SEQ
            else (self.position[0] + 1, 0)
        )
        if self.position == (0, 0):
            start = (0, 0)
        n = 0
        for entry in self.reader.range(start, end):
            events = fold_entry(self.states[entry.partition], entry, self.trims[entry.partition])
            n += 1
            self.events += events
            if progress is not None:
                progress.update((entry.id[0] - base_ms) / 1000, events)
        self.entries += n
        self.position = end
        return n

    def state(self) -> State:
        """The merged state (the same object for one partition: render it before advancing again)."""
        return merge_states(list(self.states.values()))

    def collector(self, at_s: float) -> StateCollector:
        """A collector rendering the state as the exposition at ``at_s`` (no runtime gauges)."""
        state = self.state()
        return StateCollector(lambda: state, self.metrics_prefix, self.source_ttl_s, clock=lambda: at_s)

    def families(self, at_s: float) -> list[Metric]:
        return list(self.collector(at_s).collect())

    def exposition(self, at_s: float, openmetrics: bool = False) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector(at_s))
        render = generate_latest_openmetrics if openmetrics else generate_latest
        return render(registry).decode()


# ---- timestamped OpenMetrics ------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items()) + "}"


def format_ts_seconds(ts_ms: int) -> str:
    return f"{ts_ms // 1000}.{ts_ms % 1000:03d}"


@dataclass
class _Family:
    name: str
    type: str
    help: str
    #: metric (labels without ``le``) -> [(timestamp ms, sample lines without the timestamp)]
    points: dict[tuple[tuple[str, str], ...], list[tuple[int, list[str]]]] = field(default_factory=dict)


class OpenMetricsWriter:
    """Collects metric families at several instants and writes them as one timestamped OpenMetrics text.

    OpenMetrics wants each family in one block and each metric's points in increasing time order, so
    samples are held until :meth:`write` (memory grows with steps x series).
    """

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}
        self.points = 0

    def add(self, families: Iterable[Metric], ts_ms: int) -> None:
        for fam in families:
            if not fam.samples:
                continue
            target = self.families.get(fam.name)
            if target is None:
                target = self.families[fam.name] = _Family(fam.name, fam.type, fam.documentation)
            grouped: dict[tuple[tuple[str, str], ...], list[str]] = {}
            for s in fam.samples:
                key = tuple((k, v) for k, v in s.labels.items() if k != "le")
                value = s.value
                text = (
                    floatToGoString(value) if not (isinstance(value, float) and math.isnan(value)) else "NaN"
                )
                grouped.setdefault(key, []).append(f"{s.name}{_labels(s.labels)} {text}")
            for key, lines in grouped.items():
                target.points.setdefault(key, []).append((ts_ms, lines))
                self.points += 1

    def write(self, out: TextIO) -> int:
        """Write everything, ending in ``# EOF``; returns the sample lines written."""
        n = 0
        for fam in self.families.values():
            out.write(f"# HELP {fam.name} {_escape_help(fam.help)}\n")
            out.write(f"# TYPE {fam.name} {fam.type}\n")
            for key in sorted(fam.points):
                for ts_ms, lines in fam.points[key]:
                    stamp = format_ts_seconds(ts_ms)
                    for line in lines:
                        out.write(f"{line} {stamp}\n")
                        n += 1
        out.write("# EOF\n")
        return n


def step_times(start_ms: int, end_ms: int, step_ms: int) -> list[int]:
    """start, start+step, ... up to end (inclusive)."""
    return list(range(start_ms, end_ms + 1, step_ms))


def replay_range(
    replayer: Replayer,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    writer: OpenMetricsWriter,
    progress: Progress | None = None,
) -> int:
    """Fold to each step time and add its families to ``writer``; returns the number of steps."""
    steps = step_times(start_ms, end_ms, step_ms)
    for i, t in enumerate(steps):
        before = replayer.events
        replayer.advance_to((t, MAX_SEQ))
        writer.add(replayer.families(t / 1000), t)
        if progress is not None:
            progress.update(i + 1, replayer.events - before)
    return len(steps)
