"""Clocks for pool and container timing: the system clock, and a manual clock that tests advance."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    """Monotonic time and sleeping, the one clock of the API's components (pools, containers, sync).

    Injected so that timing logic can be tested without real waiting (:class:`ManualClock`).
    ``monotonic()`` is in seconds; ``sleep()`` suspends the caller for ``seconds`` of this clock's time.
    """

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass(order=True, slots=True)
class _Sleeper:
    """A sleeper of a :class:`ManualClock`, ordered by deadline, then by arrival."""

    deadline: float
    order: int
    future: asyncio.Future[None] = field(compare=False)


class ManualClock:
    """A clock that only moves when :meth:`advance` is called.

    Sleepers wake (in deadline order) once the time they wait for has passed. ``sleep(0)`` or a
    negative sleep yields to the event loop once and returns.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[_Sleeper] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, _Sleeper(self._now + seconds, next(self._order), fut))
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._now += seconds
        while self._sleepers and self._sleepers[0].deadline <= self._now:
            fut = heapq.heappop(self._sleepers).future
            if not fut.done():
                fut.set_result(None)

    @property
    def sleepers(self) -> int:
        """Sleepers still waiting (cancelled ones included until their deadline passes)."""
        return sum(1 for s in self._sleepers if not s.future.done())

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
