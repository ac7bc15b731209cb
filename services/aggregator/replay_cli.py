"""The ``boilerhouse replay`` subcommand: metrics as they were at an instant, or a window as OpenMetrics."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from shared.events.bus import Client

from .commands import UsageError, add_command, guarded, time_arg, window_args
from .progress import Progress
from .reader import StreamReader
from .replay import Replayer, TimestampedOpenMetrics, replay_range, step_times
from .settings import AggregatorSettings
from .times import MAX_SEQ, TIME_FORMS, ArgumentError, TimePoint, format_ts, parse_duration_ms

MAX_STEPS = 200_000


def register(subparsers: Any) -> None:
    """Add ``replay`` to the ``boilerhouse`` command."""
    replay = add_command(
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
        help="write timestamped OpenMetrics here ('-' for stdout), for promtool tsdb create-blocks-from openmetrics",
    )
    replay.add_argument(
        "--format", choices=["text", "openmetrics"], default="text", help="exposition format of --at (text)"
    )
    replay.set_defaults(func=guarded(_replay))


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


def _replay(args: argparse.Namespace, settings: AggregatorSettings, client: Client) -> int:
    """Metrics as they were at --at T, or every --step of --from..--to as timestamped OpenMetrics."""
    now = time.time()
    if args.at is not None and (args.start is not None or args.end is not None):
        raise UsageError("--at replays one instant; --from/--to a window: give one or the other")
    if args.at is None and args.start is None:
        raise UsageError("give --at T, or --from T [--to T] --openmetrics FILE")
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    replayer = Replayer(reader, settings)
    bounds = reader.bounds()
    if args.at is not None:
        at = time_arg(args.at, "--at", now)
        assert at is not None
        _fold_before(replayer, bounds, at.end_id(), args.quiet)
        text = replayer.exposition(at.seconds, openmetrics=args.format == "openmetrics")
        if args.openmetrics:
            with _output(args.openmetrics) as fh:
                writer = TimestampedOpenMetrics()
                writer.add(replayer.families(at.seconds), at.ms)
                writer.write(fh)
        else:
            sys.stdout.write(text)
        return 0
    if not args.openmetrics:
        raise UsageError(
            "a window (--from/--to) is written as timestamped OpenMetrics: add --openmetrics FILE"
        )
    start, end = window_args(args, now)
    assert start is not None
    end = end or TimePoint(round(now * 1000))
    try:
        step_ms = parse_duration_ms(args.step)
    except ArgumentError as exc:
        raise UsageError(f"--step: {exc}") from None
    count = (end.ms - start.ms) // step_ms + 1
    if count > MAX_STEPS:
        raise UsageError(
            f"--from..--to at --step {args.step} is {count} steps (max {MAX_STEPS}): use a larger step"
        )
    _fold_before(replayer, bounds, (start.ms - 1, MAX_SEQ), args.quiet)
    writer = TimestampedOpenMetrics()
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
