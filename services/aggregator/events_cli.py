"""The ``boilerhouse events tail|range|stats`` subcommands: read the event streams as a person would."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from shared.events.bus import Client
from shared.events.schema import EVENT_TYPES_BY_NAME

from .commands import add_command, guarded, positive_int, window_args
from .filters import EventFilter
from .progress import Progress
from .reader import END, Entry, StreamReader, decode_entry
from .settings import AggregatorSettings
from .stats import collect_stats, render_stats
from .times import TIME_FORMS, format_ts

#: Rows buffered to size the table's columns before streaming the rest with the same widths.
TABLE_BLOCK = 500
TYPE_WIDTH = max(len(n) for n in EVENT_TYPES_BY_NAME)
#: Entries per XREAD while following.
PAGE_FOLLOW = 500


def register(subparsers: Any) -> None:
    """Add ``events`` (tail, range, stats) to the ``boilerhouse`` command."""
    events = subparsers.add_parser("events", help="read the event streams: tail, range, stats")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")

    tail = add_command(ev_sub, "tail", help="the newest events; --follow keeps printing new ones")
    _filters(tail)
    tail.add_argument("--count", "-n", type=positive_int, default=20, help="events to show first (20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing events as they arrive")
    tail.set_defaults(func=guarded(_tail))

    rng = add_command(
        ev_sub,
        "range",
        help="the events between two times or stream ids",
        epilog=f"T: {TIME_FORMS}. Entries are selected by stream id (when Redis accepted them).",
    )
    _filters(rng)
    rng.add_argument("--from", dest="start", metavar="T", help="first time or stream id (default: oldest)")
    rng.add_argument("--to", dest="end", metavar="T", default="now", help="last time or stream id (now)")
    rng.add_argument("--count", "-n", type=positive_int, help="stop after this many events")
    rng.set_defaults(func=guarded(_range))

    stats = add_command(
        ev_sub,
        "stats",
        help="counts and rates per type, producers, consumer groups, dead letters",
        epilog=f"T: {TIME_FORMS}.",
    )
    stats.add_argument("--from", dest="start", metavar="T", help="window start (default: oldest entry)")
    stats.add_argument("--to", dest="end", metavar="T", help="window end (default: now)")
    stats.add_argument("--recent", type=int, default=5, help="recent dead letters to show (5)")
    stats.set_defaults(func=guarded(_stats))


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type",
        dest="type_pattern",
        metavar="PATTERN",
        help="event type glob, e.g. 'container.*' or pool.state",
    )
    p.add_argument("--pool", metavar="ID", help="only events of this pool_id")
    p.add_argument("--workload", metavar="ID", help="only events of this workload_id")
    p.add_argument("--source", metavar="SRC", help="only events whose source id contains SRC")
    p.add_argument("--json", action="store_true", help="one JSON object per event instead of a table")


def event_filter(args: argparse.Namespace) -> EventFilter:
    return EventFilter(args.type_pattern, args.pool, args.workload, args.source)


# ---- event rows -------------------------------------------------------------------------------------


def _value(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str) and (not v or " " in v):
        return json.dumps(v)
    return str(v)


def event_fields(ev: dict[str, Any]) -> str:
    """``k=v`` of the event's fields in catalogue order (unknown keys after, sorted)."""
    type_ = ev.get("type")
    et = EVENT_TYPES_BY_NAME.get(type_) if isinstance(type_, str) else None
    names = [f.name for f in et.fields] if et else []
    rest = sorted((k for k in ev if k not in names and k not in ("type", "seq", "ts")), key=str)
    return " ".join(f"{k}={_value(ev[k])}" for k in [*names, *rest] if k in ev and ev[k] is not None)


def _event_time(ev: dict[str, Any], entry: Entry) -> str:
    ts = ev.get("ts")
    if isinstance(ts, int | float) and 0 <= ts < 1e11:
        return format_ts(float(ts))
    return format_ts(entry.id[0] / 1000)


def json_line(entry: Entry, ev: dict[str, Any]) -> str:
    assert entry.batch is not None
    doc = {
        "id": entry.id_str,
        "partition": entry.partition,
        "src": entry.batch.src,
        **{k if isinstance(k, str) else repr(k): v for k, v in ev.items()},
    }
    return json.dumps(doc, default=repr)


class EventPrinter:
    """Prints events as an aligned table (columns sized on the first block of rows) or JSON lines."""

    def __init__(self, out: TextIO, as_json: bool, flush: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self.flush = flush
        self.rows: list[tuple[str, str, str, str]] = []
        self.widths: tuple[int, int] | None = None
        self.count = 0

    def add(self, entry: Entry, ev: dict[str, Any]) -> None:
        self.count += 1
        if self.as_json:
            self.out.write(json_line(entry, ev) + "\n")
        else:
            assert entry.batch is not None
            self.rows.append((_event_time(ev, entry), str(ev.get("type")), entry.batch.src, event_fields(ev)))
            if self.widths is None and len(self.rows) < TABLE_BLOCK and not self.flush:
                return
            self._emit()
        if self.flush:
            self.out.flush()

    def _emit(self) -> None:
        if self.widths is None:
            type_w = max([4, *(len(r[1]) for r in self.rows)])
            src_w = max([6, *(len(r[2]) for r in self.rows)])
            if self.flush:  # following: later rows are unknown, leave room
                type_w = max(type_w, TYPE_WIDTH)
            self.widths = (type_w, src_w)
            self._line(("TIME", "TYPE", "SOURCE", "FIELDS"))
        for row in self.rows:
            self._line(row)
        self.rows = []

    def _line(self, row: tuple[str, str, str, str]) -> None:
        assert self.widths is not None
        t, s = self.widths
        self.out.write(f"{row[0]:<24}  {row[1]:<{t}}  {row[2]:<{s}}  {row[3]}".rstrip() + "\n")

    def header_now(self) -> None:
        """For --follow with nothing to show yet: print the header so the table starts."""
        if not self.as_json and self.widths is None:
            self._emit()

    def close(self) -> None:
        if not self.as_json and (self.rows or self.widths is None) and self.count:
            self._emit()
        self.out.flush()


def _events_of(entries: Iterable[Entry], flt: EventFilter) -> Iterator[tuple[Entry, dict[str, Any]]]:
    for entry in entries:
        if entry.batch is None:
            continue
        for ev in entry.batch.events:
            if flt.matches(entry.batch.src, ev):
                yield entry, ev


# ---- events tail / range ----------------------------------------------------------------------------


def _tail(args: argparse.Namespace, settings: AggregatorSettings, client: Client) -> int:
    """Print the newest events, then (with --follow) new ones as they arrive."""
    flt = event_filter(args)
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    out = sys.stdout
    printer = EventPrinter(out, args.json, flush=args.follow)
    # Positions to follow from: the newest entry of each partition *before* reading the tail.
    last = reader.newest_ids()
    for entry, ev in reader.last_events(args.count, flt):
        if entry.id <= last[entry.partition]:
            printer.add(entry, ev)
    if not args.follow:
        printer.close()
        return 0
    printer.header_now()
    out.flush()
    while True:
        for p, rows in reader.read_after(last, PAGE_FOLLOW, block_ms=1000):
            for raw in rows:
                entry = decode_entry(p, raw)
                last[p] = entry.id
                for e, ev in _events_of([entry], flt):
                    printer.add(e, ev)


def _range(args: argparse.Namespace, settings: AggregatorSettings, client: Client) -> int:
    """Print the events between --from and --to."""
    now = time.time()
    start, end = window_args(args, now)
    flt = event_filter(args)
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    lo = start.start_id() if start else (0, 0)
    hi = end.end_id() if end else END
    bounds = reader.bounds()
    printer = EventPrinter(sys.stdout, args.json)
    if bounds is None:
        printer.close()
        return 0
    base = max(lo[0], bounds[0][0])
    span = max(0.0, (min(hi[0], bounds[1][0]) - base) / 1000)
    progress = Progress("events range", span, "s of stream", enabled=not args.quiet)
    skipped = 0
    for entry in reader.range(lo, hi):
        n = 0
        if entry.batch is None:
            skipped += 1
        else:
            for ev in entry.batch.events:
                if flt.matches(entry.batch.src, ev):
                    printer.add(entry, ev)
                    if args.count and printer.count >= args.count:
                        break
            n = len(entry.batch.events)
        progress.update((entry.id[0] - base) / 1000, n)
        if args.count and printer.count >= args.count:
            break
    printer.close()
    progress.finish()
    if skipped:
        print(
            f"{skipped} undecodable entr{'y' if skipped == 1 else 'ies'} skipped "
            "(see `boilerhouse events stats`)",
            file=sys.stderr,
        )
    return 0


def _stats(args: argparse.Namespace, settings: AggregatorSettings, client: Client) -> int:
    """Counts and rates per type, producers, consumer groups' lag and pending, dead letters."""
    start, end = window_args(args)
    stats = collect_stats(client, settings, start, end, recent=args.recent, show_progress=not args.quiet)
    sys.stdout.write("\n".join(render_stats(stats)) + "\n")
    return 0
