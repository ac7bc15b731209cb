"""``events stats``: what a window of the streams holds, computed as data, then rendered as text.

Producers' liveness, service and version come from the aggregator's own fold of the window (the same
ingest step as the live consumer), so the command and the ``aggregator_live_sources`` gauge agree.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

from shared.events.bus import ERRORS, Client, is_cluster, node_name
from shared.events.replies import GroupInfo, RawEntry, entries, text
from shared.events.streams import StreamId, dead_letter_key, format_id, parse_id

from .fold import State
from .ingest import PartitionIngest
from .progress import Progress
from .reader import END, StreamReader
from .settings import AggregatorSettings
from .times import TimePoint, format_ts


@dataclass(frozen=True, slots=True)
class Producer:
    """One source seen in the window."""

    src: str
    service: str
    version: str
    events: int
    last_seen_s: float | None
    state: str  # live | stopped | silent


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    partition: int
    id: StreamId
    entry_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a partition lives on a Redis Cluster: the master serving its slot, its length, each
    consumer group's lag."""

    partition: int
    node: str
    slot: int
    length: int
    last_id: StreamId | None
    lags: dict[str, int | None]


@dataclass
class StreamStats:
    """Everything ``events stats`` reports."""

    partitions: int
    window_ms: tuple[int, int] | None  # None: no entries
    entries: int
    undecodable: int
    by_type: Counter[str]
    producers: list[Producer]
    ttl_s: float
    live_at_s: float
    groups: list[tuple[int, GroupInfo]]
    dead_letters: int
    dead_by_reason: Counter[str]
    recent_dead: list[DeadLetterRow] = field(default_factory=list)
    #: On a Redis Cluster, one row per partition (empty on a single Redis: everything is on one node).
    placement: list[Placement] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return max(0.0, (self.window_ms[1] - self.window_ms[0]) / 1000) if self.window_ms else 0.0

    @property
    def events(self) -> int:
        return sum(self.by_type.values())

    @property
    def live(self) -> int:
        return sum(1 for p in self.producers if p.state == "live")


def collect_stats(
    client: Client,
    settings: AggregatorSettings,
    start: TimePoint | None,
    end: TimePoint | None,
    recent: int = 5,
    show_progress: bool = True,
    now: float | None = None,
) -> StreamStats:
    now = time.time() if now is None else now
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    lo = start.start_id() if start else (0, 0)
    hi = end.end_id() if end else END
    live_at = end.seconds if end else now  # "live" is judged at the end of the window
    parts = {
        p: PartitionIngest(p, State(limits=settings.limits), forget_after_s=settings.source_forget_s)
        for p in reader.partitions
    }
    by_type: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    entries = undecodable = 0
    first = last = None
    bounds = reader.bounds()
    if bounds is not None:
        base = max(lo[0], bounds[0][0])
        progress = Progress(
            "events stats",
            max(0.0, (min(hi[0], bounds[1][0]) - base) / 1000),
            "s of stream",
            enabled=show_progress,
        )
        for entry in reader.range(lo, hi):
            entries += 1
            first = first or entry.id
            last = entry.id
            parts[entry.partition].entry(entry.id, entry.fields, decoded=entry.batch or entry.error)
            if entry.batch is None:
                undecodable += 1
                continue
            per_source[entry.batch.src] += len(entry.batch.events)
            for ev in entry.batch.events:
                by_type[str(ev.get("type")) if type(ev) is dict else "<not a map>"] += 1
            progress.update((entry.id[0] - base) / 1000, len(entry.batch.events))
        progress.finish()
    window = None
    if start is not None and end is not None:
        window = (start.ms, end.ms)
    elif first is not None and last is not None:
        window = (start.ms if start else first[0], end.ms if end else last[0])
    state = State.merge([part.state for part in parts.values()])
    live = state.live_sources(live_at, settings.source_ttl_s)
    producers = []
    for src, n in sorted(per_source.items()):
        info = state.sources.get(src)
        status = "live" if src in live else "stopped" if info is not None and info.stopped else "silent"
        producers.append(
            Producer(
                src,
                info.service if info else src.split(":", 1)[0],
                info.version if info else "",
                n,
                info.last_seen if info else None,
                status,
            )
        )
    stats = StreamStats(
        len(reader.partitions),
        window,
        entries,
        undecodable,
        by_type,
        producers,
        settings.source_ttl_s,
        live_at,
        [],
        0,
        Counter(),
    )
    for p in reader.partitions:
        try:
            groups = client.xinfo_groups(reader.key(p))
        except redis.ResponseError:  # no such stream
            groups = []
        stats.groups += [(p, GroupInfo.parse(g)) for g in groups]
    if is_cluster(client):
        stats.placement = _placement(client, reader, stats.groups)
    _dead_letters(client, stats, reader.partitions, settings.key_prefix, recent)
    return stats


def _placement(client: Client, reader: StreamReader, groups: list[tuple[int, GroupInfo]]) -> list[Placement]:
    rows = []
    for p in reader.partitions:
        key = reader.key(p)
        info = reader.info(p)
        try:
            node = node_name(client, key)
        except ERRORS:  # the slot is not served right now (a failover in progress)
            node = "?"
        rows.append(
            Placement(
                p,
                node,
                key_slot(key.encode()),
                info.length if info else 0,
                info.last_generated_id if info and info.length else None,
                {g.name: g.lag for gp, g in groups if gp == p},
            )
        )
    return rows


def _dead_letters(
    client: Client, stats: StreamStats, partitions: list[int], prefix: str, recent: int
) -> None:
    rows = []
    for p in partitions:
        key = dead_letter_key(p, prefix)
        stats.dead_letters += client.xlen(key)
        for raw_id, f in _scan(client, key):
            fields = f or {}
            reason = text(fields.get(b"reason", b"?"))
            stats.dead_by_reason[reason] += 1
            rows.append(
                DeadLetterRow(
                    p,
                    parse_id(raw_id),
                    text(fields.get(b"entry_id", b"?")),
                    reason,
                    text(fields.get(b"detail", b"")),
                )
            )
    rows.sort(key=lambda r: r.id)
    stats.recent_dead = rows[-recent:] if recent > 0 else []


def _scan(client: Client, key: str) -> Iterator[RawEntry]:
    lo = "-"
    while True:
        rows = entries(client.xrange(key, min=lo, count=1000))
        yield from rows
        if len(rows) < 1000:
            return
        lo = "(" + rows[-1][0].decode()


# ---- rendering --------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = []
    for row in [headers, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.3f}" if seconds > 0 else "-"


def _entry_time(entry_id: str) -> str:
    try:
        return format_ts(parse_id(entry_id)[0] / 1000)
    except ValueError:
        return "?"


def render_stats(stats: StreamStats) -> list[str]:
    out: list[str] = []
    plural = "s" if stats.partitions != 1 else ""
    if not stats.entries:
        out.append(f"no entries in {stats.partitions} partition{plural}")
    else:
        assert stats.window_ms is not None
        lo, hi = stats.window_ms
        out.append(
            f"window: {format_ts(lo / 1000)} .. {format_ts(hi / 1000)} ({stats.seconds:g}s), "
            f"{stats.entries} entries, {stats.events} events, {stats.partitions} partition{plural}"
        )
        if stats.undecodable:
            out.append(f"undecodable entries: {stats.undecodable}")
    out.append("")
    rows = [[t, str(n), _rate(n, stats.seconds)] for t, n in sorted(stats.by_type.items())]
    rows.append(["total", str(stats.events), _rate(stats.events, stats.seconds)])
    out += _table(["TYPE", "EVENTS", "RATE/S"], rows, {1, 2})
    out.append("")
    out.append(
        f"PRODUCERS: {stats.live} live (an entry within {stats.ttl_s:g}s of {format_ts(stats.live_at_s)}, not stopped)"
    )
    prows = [
        [
            p.src,
            p.service,
            p.version or "-",
            str(p.events),
            format_ts(p.last_seen_s) if p.last_seen_s else "-",
            p.state,
        ]
        for p in stats.producers
    ]
    out += _table(["SOURCE", "SERVICE", "VERSION", "EVENTS", "LAST SEEN", "STATE"], prows, {3})
    out.append("")
    if stats.placement:
        names = sorted({name for row in stats.placement for name in row.lags})
        nodes = len({row.node for row in stats.placement})
        out.append(f"PARTITIONS (Redis Cluster: {nodes} node{'s' if nodes != 1 else ''} serve them)")
        prow = [
            [
                str(r.partition),
                r.node,
                str(r.slot),
                str(r.length),
                _entry_time(format_id(r.last_id)) if r.last_id else "-",
                *("-" if r.lags.get(n, None) is None else str(r.lags[n]) for n in names),
            ]
            for r in stats.placement
        ]
        headers = ["PARTITION", "NODE", "SLOT", "ENTRIES", "LAST ENTRY", *(f"LAG {n}" for n in names)]
        out += _table(headers, prow, {0, 2, 3, *range(5, 5 + len(names))})
        out.append("")
    out.append("CONSUMER GROUPS")
    grows = [
        [
            str(p),
            g.name,
            str(g.consumers),
            "?" if g.lag is None else str(g.lag),
            str(g.pending),
            format_id(g.last_delivered_id),
        ]
        for p, g in stats.groups
    ]
    out += _table(
        ["PARTITION", "GROUP", "CONSUMERS", "LAG", "PENDING", "LAST DELIVERED"], grows, {0, 2, 3, 4}
    )
    out.append("")
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(stats.dead_by_reason.items()))
    out.append(f"DEAD LETTERS: {stats.dead_letters}" + (f" ({reasons})" if reasons else ""))
    if stats.recent_dead:
        drows = [
            [_entry_time(r.entry_id), str(r.partition), r.entry_id, r.reason, r.detail[:80]]
            for r in stats.recent_dead
        ]
        out += _table(["ENTRY TIME", "PARTITION", "ENTRY", "REASON", "DETAIL"], drows, {1})
    return out
