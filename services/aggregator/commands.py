"""Plumbing shared by the read-only subcommands (``events …``, ``replay``): arguments, settings, exit codes.

Bad arguments exit 2 with ``boilerhouse: error: …``, an unreachable bus exits 1; never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from shared.events.bus import ERRORS, Client, connect, diagnose

from .settings import AggregatorSettings, SettingsError
from .times import ArgumentError, TimePoint, parse_time

EXIT_BUS = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments: printed as ``boilerhouse: error: ...`` with exit status 2."""


#: argparse takes "-15m" for an option; treat relative times (and negative numbers) as values.
_NEGATIVE_VALUE = re.compile(r"^-\d+(?:\.\d+)?(?:ms|s|m|h|d|w)?(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))*$")


def add_command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that reads the event bus: ``--redis-url``, ``--partitions`` and ``--quiet``."""
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    # argparse has no public hook for this; the attribute is stable since Python 3.2.
    p._negative_number_matcher = _NEGATIVE_VALUE
    p.add_argument("--redis-url", help="event bus (default: $BOILERHOUSE_REDIS_URL)")
    p.add_argument("--partitions", type=positive_int, help="partition streams in use (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


Body = Callable[[argparse.Namespace, AggregatorSettings, Client], int]


def guarded(body: Body) -> Callable[[argparse.Namespace], int]:
    """The command ``body`` with settings from the environment and flags, a read-only client, and every
    expected failure turned into a message and an exit status."""

    def run(args: argparse.Namespace) -> int:
        try:
            settings = AggregatorSettings.from_env().with_(
                redis_url=args.redis_url, partitions=args.partitions
            )
        except SettingsError as exc:
            return fail(str(exc), EXIT_USAGE)
        client: Client | None = None
        try:
            client = connect(settings.redis, "tool")
            return body(args, settings, client)
        except (UsageError, ArgumentError, SettingsError) as exc:
            return fail(str(exc), EXIT_USAGE)
        except ERRORS as exc:
            return fail(str(diagnose(exc, settings.redis)), EXIT_BUS)
        except BrokenPipeError:  # `| head`
            return 0
        finally:
            if client is not None:
                client.close()

    run.__doc__ = body.__doc__
    return run


def fail(message: str, code: int) -> int:
    print(f"boilerhouse: error: {message}", file=sys.stderr)
    return code


def time_arg(value: str | None, flag: str, now: float) -> TimePoint | None:
    if value is None:
        return None
    try:
        return parse_time(value, now)
    except ArgumentError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def window_args(
    args: argparse.Namespace, now: float | None = None
) -> tuple[TimePoint | None, TimePoint | None]:
    """``--from``/``--to`` as times (either may be absent)."""
    now = time.time() if now is None else now
    start = time_arg(args.start, "--from", now)
    end = time_arg(args.end, "--to", now)
    if start is not None and end is not None and start.start_id() > end.end_id():
        raise UsageError(f"--from {args.start} is after --to {args.end}")
    return start, end
