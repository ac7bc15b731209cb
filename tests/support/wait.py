"""The one way tests wait: poll a condition until it holds or a deadline passes, then say what was awaited.

Only for the effects of real processes and servers (an OS process exiting, a scrape showing a value,
a file appearing). Logic that runs on an injected clock is advanced with the clock, never polled;
"X does not happen" is checked by advancing that clock, never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How often conditions are polled: often enough not to slow tests, rarely enough not to load the machine.
POLL_S = 0.02


class NotReached(AssertionError):
    """A condition that did not hold in time; the message says what and shows the last value seen."""


def _fail(what: str, within_s: float, last: object, show: Callable[[Any], str] = str) -> NotReached:
    shown = "" if last is None else f"; last seen:\n{show(last)[-3000:]}"
    return NotReached(f"{what}: not reached within {within_s:g}s{shown}")


def wait_until(check: Callable[[], bool], what: str, within_s: float = 20.0, poll_s: float = POLL_S) -> None:
    """Poll ``check()`` until it is true."""
    wait_for(lambda: True if check() else None, what, within_s, poll_s)


def wait_for(
    probe: Callable[[], T | None],
    what: str,
    within_s: float = 20.0,
    poll_s: float = POLL_S,
    accept: Callable[[T], bool] | None = None,
    show: Callable[[T], str] = str,
) -> T:
    """Poll ``probe()`` until it returns a value that is not None (and that ``accept`` takes); return it.

    The last value seen (formatted by ``show``) is in the failure, so it says where things stood.
    """
    deadline = time.monotonic() + within_s
    last: T | None = None
    while True:
        value = probe()
        if value is not None:
            last = value
            if accept is None or accept(value):
                return value
        if time.monotonic() > deadline:
            raise _fail(what, within_s, last, show)
        time.sleep(poll_s)


async def until(check: Callable[[], bool], what: str, within_s: float = 10.0, poll_s: float = POLL_S) -> None:
    """Let the event loop run until ``check()`` holds (tasks of the test's loop, or real processes)."""
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise _fail(what, within_s, None)
        await asyncio.sleep(poll_s)


async def until_async(
    check: Callable[[], Awaitable[bool]], what: str, within_s: float = 10.0, poll_s: float = POLL_S
) -> None:
    """As :func:`until` for a check that must itself be awaited (a runtime's health check)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise _fail(what, within_s, None)
        await asyncio.sleep(poll_s)
