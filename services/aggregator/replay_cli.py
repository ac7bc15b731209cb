"""The ``boilerhouse events tail|range|stats`` and ``boilerhouse replay`` subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import redis

from shared.events.schema import EVENT_TYPES_BY_NAME
from shared.events.streams import dead_letter_key, parse_id

from .replay import (
    MAX_SEQ,
    TIME_FORMS,
    Entry,
    EventFilter,
    OpenMetricsWriter,
    Progress,
    Replayer,
    ReplayError,
    StreamReader,
    TimePoint,
    decode_entry,
    format_ts,
    parse_duration_ms,
    parse_time,
    replay_range,
    step_times,
)
from .settings import AggregatorSettings, SettingsError

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_BUS = 1
MAX_STEPS = 200_000
#: Rows buffered to size the table's columns before streaming the rest with the same widths.
TABLE_BLOCK = 500
TYPE_WIDTH = max(len(n) for n in EVENT_TYPES_BY_NAME)
#: Entries per XREAD while following.
PAGE_FOLLOW = 500


class UsageError(Exception):
    """Bad arguments: printed as ``boilerhouse: error: ...`` with exit status 2."""


# ---- argument parsing -----------------------------------------------------------------------------

#: argparse takes "-15m" for an option; treat relative times (and negative numbers) as values.
_NEGATIVE_VALUE = re.compile(r"^-\d+(?:\.\d+)?(?:ms|s|m|h|d|w)?(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))*$")


def _parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    p._negative_number_matcher = _NEGATIVE_VALUE  # type: ignore[attr-defined]
    p.add_argument("--redis-url", help="event bus (default: $BOILERHOUSE_REDIS_URL)")
    p.add_argument("--partitions", type=_positive_int, help="partition streams in use (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


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


def register(subparsers: Any) -> None:
    """Add ``events`` (tail, range, stats) and ``replay`` to the ``boilerhouse`` command."""
    events = subparsers.add_parser("events", help="read the event streams: tail, range, stats")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")

    tail = _parser(ev_sub, "tail", help="the newest events; --follow keeps printing new ones")
    _filters(tail)
    tail.add_argument("--count", "-n", type=_positive_int, default=20, help="events to show first (20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing events as they arrive")
    tail.set_defaults(func=cmd_tail)

    rng = _parser(
        ev_sub,
        "range",
        help="the events between two times or stream ids",
        epilog=f"T: {TIME_FORMS}. Entries are selected by stream id (when Redis accepted them).",
    )
    _filters(rng)
    rng.add_argument("--from", dest="start", metavar="T", help="first time or stream id (default: oldest)")
    rng.add_argument("--to", dest="end", metavar="T", default="now", help="last time or stream id (now)")
    rng.add_argument("--count", "-n", type=_positive_int, help="stop after this many events")
    rng.set_defaults(func=cmd_range)

    stats = _parser(
        ev_sub,
        "stats",
        help="counts and rates per type, producers, consumer groups, dead letters",
        epilog=f"T: {TIME_FORMS}.",
    )
    stats.add_argument("--from", dest="start", metavar="T", help="window start (default: oldest entry)")
    stats.add_argument("--to", dest="end", metavar="T", help="window end (default: now)")
    stats.add_argument("--recent", type=int, default=5, help="recent dead letters to show (5)")
    stats.set_defaults(func=cmd_stats)

    replay = _parser(
        subparsers,
        "replay",
        help="metrics as they were: at an instant, or a window as OpenMetrics",
        epilog=f"T: {TIME_FORMS}. See docs/debugging.md.",
    )
    replay.add_argument("--at", metavar="T", help="print the /metrics exposition as it was at T")
    replay.add_argument("--from", dest="start", metavar="T", help="window start (with --openmetrics)")
    replay.add_argument("--to", dest="end", metavar="T", help="window end (default now)")
    replay.add_argument("--step", default="15s", help="resolution of the window (15s)")
    replay.add_argument(
        "--openmetrics",
        metavar="FILE",
        help="write timestamped OpenMetrics here ('-' for stdout), for promtool tsdb "
        "create-blocks-from openmetrics",
    )
    replay.add_argument(
        "--format", choices=["text", "openmetrics"], default="text", help="exposition format of --at (text)"
    )
    replay.set_defaults(func=cmd_replay)


# ---- plumbing ---------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> AggregatorSettings:
    return AggregatorSettings.from_env().with_(redis_url=args.redis_url, partitions=args.partitions)


def _guard(
    body: Callable[[argparse.Namespace, AggregatorSettings, redis.Redis], int],
) -> Callable[[argparse.Namespace], int]:
    """Bad arguments exit 2 with a message, an unreachable bus exits 1; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            settings = _settings(args)
        except SettingsError as exc:
            return _fail(str(exc), EXIT_USAGE)
        client = redis.Redis.from_url(settings.redis_url, protocol=2, socket_connect_timeout=5.0)
        try:
            return body(args, settings, client)
        except (UsageError, ReplayError) as exc:
            return _fail(str(exc), EXIT_USAGE)
        except redis.RedisError as exc:
            return _fail(f"event bus {_safe_url(settings.redis_url)}: {exc}", EXIT_BUS)
        except BrokenPipeError:  # `| head`
            return 0
        finally:
            client.close()

    run.__doc__ = body.__doc__
    return run


def _fail(message: str, code: int) -> int:
    print(f"boilerhouse: error: {message}", file=sys.stderr)
    return code


def _safe_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def _time(value: str | None, flag: str, now: float) -> TimePoint | None:
    if value is None:
        return None
    try:
        return parse_time(value, now)
    except ReplayError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _window(args: argparse.Namespace, now: float) -> tuple[TimePoint | None, TimePoint | None]:
    start = _time(args.start, "--from", now)
    end = _time(args.end, "--to", now)
    if start is not None and end is not None and start.start_id() > end.end_id():
        raise UsageError(f"--from {args.start} is after --to {args.end}")
    return start, end


def _filter(args: argparse.Namespace) -> EventFilter:
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


def _tail(args: argparse.Namespace, settings: AggregatorSettings, client: redis.Redis) -> int:
    """Print the newest events, then (with --follow) new ones as they arrive."""
    flt = _filter(args)
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    out = sys.stdout
    printer = EventPrinter(out, args.json, flush=args.follow)
    # Positions to follow from: the newest entry of each partition *before* reading the tail.
    last: dict[int, str] = {}
    for p in reader.partitions:
        newest = client.xrevrange(reader.key(p), count=1)
        last[p] = newest[0][0].decode() if newest else "0-0"
    for entry, ev in reader.last_events(args.count, flt):
        if entry.id <= parse_id(last[entry.partition]):
            printer.add(entry, ev)
    if not args.follow:
        printer.close()
        return 0
    printer.header_now()
    out.flush()
    by_key = {reader.key(p).encode(): p for p in reader.partitions}
    while True:
        reply = client.xread(
            {reader.key(p): last[p] for p in reader.partitions}, count=PAGE_FOLLOW, block=1000
        )
        for key, rows in reply or []:
            p = by_key[key]
            for raw_id, fields in rows:
                last[p] = raw_id.decode()
                for e, ev in _events_of([decode_entry(p, raw_id, fields)], flt):
                    printer.add(e, ev)


def _range(args: argparse.Namespace, settings: AggregatorSettings, client: redis.Redis) -> int:
    """Print the events between --from and --to."""
    now = time.time()
    start, end = _window(args, now)
    flt = _filter(args)
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    lo = start.start_id() if start else (0, 0)
    hi = end.end_id() if end else (MAX_SEQ, MAX_SEQ)
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


cmd_tail = _guard(_tail)
cmd_range = _guard(_range)


# ---- events stats -----------------------------------------------------------------------------------


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


def _stats(args: argparse.Namespace, settings: AggregatorSettings, client: redis.Redis) -> int:
    """Counts and rates per type, producers, consumer groups' lag and pending, dead letters."""
    now = time.time()
    start, end = _window(args, now)
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    lo = start.start_id() if start else (0, 0)
    hi = end.end_id() if end else (MAX_SEQ, MAX_SEQ)
    ref_s = end.seconds if end else now  # "live" is judged at the end of the window
    bounds = reader.bounds()
    by_type: Counter[str] = Counter()
    sources: dict[str, dict[str, Any]] = {}
    entries = undecodable = 0
    first = last = None
    if bounds is not None:
        base = max(lo[0], bounds[0][0])
        span = max(0.0, (min(hi[0], bounds[1][0]) - base) / 1000)
        progress = Progress("events stats", span, "s of stream", enabled=not args.quiet)
        for entry in reader.range(lo, hi):
            entries += 1
            first = first or entry.id
            last = entry.id
            if entry.batch is None:
                undecodable += 1
                continue
            src = entry.batch.src
            info = sources.setdefault(
                src,
                {
                    "service": src.split(":", 1)[0],
                    "version": "",
                    "events": 0,
                    "last_ts": 0.0,
                    "stopped": False,
                },
            )
            for ev in entry.batch.events:
                info["events"] += 1
                if type(ev) is not dict:
                    by_type["<not a map>"] += 1
                    continue
                type_ = str(ev.get("type"))
                by_type[type_] += 1
                ts = ev.get("ts")
                if isinstance(ts, int | float) and ts > info["last_ts"]:
                    info["last_ts"] = float(ts)
                if type_ == "source.started":
                    info["service"], info["version"] = str(ev.get("service")), str(ev.get("version"))
                    info["stopped"] = False
                elif type_ == "source.stopped":
                    info["stopped"] = True
            progress.update((entry.id[0] - base) / 1000, len(entry.batch.events))
        progress.finish()
    out: list[str] = []
    total = sum(by_type.values())
    if start is not None and end is not None:
        w_lo, w_hi = start.ms, end.ms
    elif first is not None and last is not None:
        w_lo = start.ms if start else first[0]
        w_hi = end.ms if end else last[0]
    else:
        w_lo = w_hi = 0
    seconds = max(0.0, (w_hi - w_lo) / 1000)
    parts = len(reader.partitions)
    if first is None:
        out.append(f"no entries in {parts} partition{'s' if parts != 1 else ''}")
    else:
        out.append(
            f"window: {format_ts(w_lo / 1000)} .. {format_ts(w_hi / 1000)} ({seconds:g}s), "
            f"{entries} entries, {total} events, {parts} partition{'s' if parts != 1 else ''}"
        )
        if undecodable:
            out.append(f"undecodable entries: {undecodable}")
    out.append("")
    rows = [[t, str(n), _rate(n, seconds)] for t, n in sorted(by_type.items())]
    rows.append(["total", str(total), _rate(total, seconds)])
    out += _table(["TYPE", "EVENTS", "RATE/S"], rows, {1, 2})
    out.append("")
    ttl = settings.source_ttl_s
    live = 0
    prow = []
    for src, info in sorted(sources.items()):
        if info["stopped"]:
            state = "stopped"
        elif info["last_ts"] >= ref_s - ttl:
            state = "live"
            live += 1
        else:
            state = "silent"
        prow.append(
            [
                src,
                info["service"],
                info["version"] or "-",
                str(info["events"]),
                format_ts(info["last_ts"]) if info["last_ts"] else "-",
                state,
            ]
        )
    out.append(f"PRODUCERS: {live} live (an event within {ttl:g}s of {format_ts(ref_s)}, not stopped)")
    out += _table(["SOURCE", "SERVICE", "VERSION", "EVENTS", "LAST EVENT", "STATE"], prow, {3})
    out.append("")
    out.append("CONSUMER GROUPS")
    grows = []
    for p in reader.partitions:
        try:
            groups = client.xinfo_groups(reader.key(p))
        except redis.ResponseError:  # no such stream
            groups = []
        for g in groups:
            name = _s(g.get("name"))
            lag = g.get("lag")
            grows.append(
                [
                    str(p),
                    name,
                    str(g.get("consumers", 0)),
                    "?" if lag is None else str(lag),
                    str(g.get("pending", 0)),
                    _s(g.get("last-delivered-id")),
                ]
            )
    out += _table(
        ["PARTITION", "GROUP", "CONSUMERS", "LAG", "PENDING", "LAST DELIVERED"], grows, {0, 2, 3, 4}
    )
    out.append("")
    out += _dead_letters(client, reader.partitions, settings.key_prefix, args.recent)
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _dead_letters(client: redis.Redis, partitions: list[int], prefix: str, recent: int) -> list[str]:
    total = 0
    reasons: Counter[str] = Counter()
    latest: list[tuple[tuple[int, int], list[str]]] = []
    for p in partitions:
        key = dead_letter_key(p, prefix)
        total += client.xlen(key)
        for raw_id, f in _scan(client, key):
            reasons[_s(f.get(b"reason", b"?"))] += 1
            entry_id = _s(f.get(b"entry_id", b"?"))
            try:
                when = format_ts(parse_id(entry_id)[0] / 1000)
            except ValueError:
                when = "?"
            latest.append(
                (
                    parse_id(raw_id),
                    [when, str(p), entry_id, _s(f.get(b"reason", b"?")), _s(f.get(b"detail", b""))[:80]],
                )
            )
    lines = [
        f"DEAD LETTERS: {total}"
        + (" (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")" if reasons else "")
    ]
    if latest and recent > 0:
        latest.sort(key=lambda x: x[0])
        lines += _table(
            ["ENTRY TIME", "PARTITION", "ENTRY", "REASON", "DETAIL"], [r for _, r in latest[-recent:]], {1}
        )
    return lines


def _scan(client: redis.Redis, key: str) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    lo = "-"
    while True:
        rows = client.xrange(key, min=lo, count=1000)
        yield from rows
        if len(rows) < 1000:
            return
        lo = "(" + rows[-1][0].decode()


cmd_stats = _guard(_stats)


# ---- replay -----------------------------------------------------------------------------------------


@contextmanager
def _output(path: str) -> Iterator[TextIO]:
    if path == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    tmp = target.with_name(target.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        yield fh
    tmp.replace(target)


def _replay(args: argparse.Namespace, settings: AggregatorSettings, client: redis.Redis) -> int:
    """Metrics as they were at --at T, or every --step of --from..--to as timestamped OpenMetrics."""
    now = time.time()
    if args.at is not None and (args.start is not None or args.end is not None):
        raise UsageError("--at replays one instant; --from/--to a window: give one or the other")
    if args.at is None and args.start is None:
        raise UsageError("give --at T, or --from T [--to T] --openmetrics FILE")
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    replayer = Replayer(reader, settings.series_cap, settings.metrics_prefix, settings.source_ttl_s)
    bounds = reader.bounds()
    if args.at is not None:
        at = _time(args.at, "--at", now)
        assert at is not None
        _fold_before(replayer, bounds, at.end_id(), args.quiet)
        text = replayer.exposition(at.seconds, openmetrics=args.format == "openmetrics")
        if args.openmetrics:
            with _output(args.openmetrics) as fh:
                writer = OpenMetricsWriter()
                writer.add(replayer.families(at.seconds), at.ms)
                writer.write(fh)
        else:
            sys.stdout.write(text)
        return 0
    if not args.openmetrics:
        raise UsageError(
            "a window (--from/--to) is written as timestamped OpenMetrics: add --openmetrics FILE"
        )
    start, end = _window(args, now)
    assert start is not None
    end = end or TimePoint(round(now * 1000))
    try:
        step_ms = parse_duration_ms(args.step)
    except ReplayError as exc:
        raise UsageError(f"--step: {exc}") from None
    count = (end.ms - start.ms) // step_ms + 1
    if count > MAX_STEPS:
        raise UsageError(
            f"--from..--to at --step {args.step} is {count} steps (max {MAX_STEPS}): use a larger step"
        )
    _fold_before(replayer, bounds, (start.ms - 1, MAX_SEQ), args.quiet)
    writer = OpenMetricsWriter()
    progress = Progress("replay window", count, "steps", enabled=not args.quiet)
    steps = replay_range(replayer, start.ms, end.ms, step_ms, writer, progress)
    with _output(args.openmetrics) as fh:
        samples = writer.write(fh)
    progress.finish()
    times = step_times(start.ms, end.ms, step_ms)
    print(
        f"replay: {steps} steps {format_ts(times[0] / 1000)} .. {format_ts(times[-1] / 1000)} every "
        f"{step_ms / 1000:g}s, {samples} samples, {replayer.entries} entries / {replayer.events} events folded "
        f"-> {args.openmetrics}",
        file=sys.stderr,
    )
    return 0


def _fold_before(
    replayer: Replayer,
    bounds: tuple[tuple[int, int], tuple[int, int]] | None,
    end: tuple[int, int],
    quiet: bool,
) -> None:
    """Fold the history up to ``end`` with progress (this is the long part of a replay)."""
    if bounds is None:
        return
    base = bounds[0][0]
    span = max(0.0, (min(end[0], bounds[1][0]) - base) / 1000)
    progress = Progress("replay: folding history", span, "s of stream", enabled=not quiet)
    replayer.advance_to(end, progress, base)
    progress.finish()


cmd_replay = _guard(_replay)

__all__ = ["register"]
