"""A progress bar on stderr for long runs (replay, rebuild, events range/stats).

Hand-written rather than tqdm or rich, for three reasons measured against them: tqdm writes carriage
returns into non-terminal streams (a log file gets one ever-growing line) and its clock cannot be
injected (it binds ``time.time`` in ``__init__``), and rich's progress shows nothing on a non-terminal
until the end. Here a terminal gets a bar redrawn in place, a log gets a line every few seconds, a
short run gets nothing, and tests drive the clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


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
