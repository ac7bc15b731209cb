"""The progress bar: silent for short runs, lines when not a terminal, redrawn in place on one."""

from __future__ import annotations

import io

from services.aggregator.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_short_runs_draw_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("replay", 10, "entries", stream=out, clock=clock)
    clock.now += 0.5
    p.update(10, 1000)
    p.finish()
    assert out.getvalue() == ""


def test_lines_every_five_seconds_when_not_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("rebuild partition 0", 200, "entries", stream=out, clock=clock)
    clock.now += 1.0
    p.update(50, 5000)  # drawn: past the 1 s delay
    clock.now += 1.0
    p.update(100, 5000)  # not drawn: within 5 s of the previous line
    clock.now += 4.0
    p.update(150, 5000)
    clock.now += 2.0
    p.finish()
    assert out.getvalue().splitlines() == [
        "rebuild partition 0: [#######                       ]  25.0% 50/200 entries, 5,000 events/s, "
        "1.0s elapsed, ETA 3s",
        "rebuild partition 0: [######################        ]  75.0% 150/200 entries, 2,500 events/s, "
        "6.0s elapsed, ETA 2s",
        "rebuild partition 0: [##############################] 100.0% 200/200 entries, 1,875 events/s, "
        "8.0s elapsed, ETA 0s",
    ]


def test_redrawn_in_place_on_a_terminal_and_quiet_draws_nothing() -> None:
    out, clock = Terminal(), Clock()
    p = Progress("replay window", 0, "steps", stream=out, clock=clock)
    clock.now += 2.0
    p.update(3, 30)
    clock.now += 0.5
    p.update(4, 10)
    p.finish()
    assert out.getvalue() == (
        "\rreplay window: 3 steps, 15 events/s, 2.0s elapsed"
        "\rreplay window: 4 steps, 16 events/s, 2.5s elapsed"
        "\rreplay window: 4 steps, 16 events/s, 2.5s elapsed\n"
    )
    quiet, clock = io.StringIO(), Clock()
    q = Progress("x", 1, stream=quiet, enabled=False, clock=clock)
    clock.now += 10
    q.update(1, 1)
    q.finish()
    assert quiet.getvalue() == ""
