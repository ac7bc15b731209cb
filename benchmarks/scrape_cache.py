"""Scrapes with each series' rendered lines kept (render.py now) against the renderer of another
revision (by default the one before they were kept), in the same process, on the same states.

Three cases per size: steady (nothing changed between scrapes), 1 % of the series changed, all of
them changed (the worst case: every series written anew). A change is an observation in the series'
histogram (a bucket and the sum, so also its ``_count`` counter line), made between scrapes, outside
the timing. The two renderers alternate, each with its own exposer (capture under a lock, render,
standard collectors). CPU time of the scraping thread, and wall time (gzip compresses in a worker).

    python -m benchmarks.scrape_cache [--before REV] [--sizes 10000,100000] [--reps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from services.aggregator.render import Renderer
from services.aggregator.scrape import negotiate

from .scrape import OPENMETRICS, _exposer, change, http_state

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "c9c81c4"  # main before the rendered lines were kept


def renderer_of(rev: str) -> ModuleType:
    """services/aggregator/render.py as of ``rev``, imported as a module of the package (its relative
    imports resolve to today's modules, which it was written against)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:services/aggregator/render.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    name = "services.aggregator._render_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "services.aggregator"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:render.py", "exec"), module.__dict__)  # our own source, from git
    return module


def measure(series: int, reps: int, before: ModuleType) -> dict[str, dict[str, list[tuple[float, float]]]]:
    state = http_state(series)
    exposers = {"before": _exposer(state, before.Renderer()), "now": _exposer(state, Renderer())}
    formats = {
        "text": negotiate("", "identity"),
        "openmetrics": negotiate(OPENMETRICS, "identity"),
        "gzip": negotiate("", "gzip"),
    }
    cases: list[tuple[str, int, tuple[str, ...]]] = [
        ("steady", 0, ("text", "openmetrics", "gzip")),
        ("1 % changed", 100, ("text",)),
        ("all changed", 1, ("text", "gzip")),
    ]
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for ex in exposers.values():  # first scrapes: label strings (and lines) built
        ex.render(formats["text"])
    cap = Renderer().capture([state], 0, 0.0)
    if "".join(before.Renderer().lines(cap)) != "".join(Renderer().lines(cap)):
        raise AssertionError("the renderers disagree")
    for case, every, fmts in cases:
        for fmt in fmts:
            runs: dict[str, list[tuple[float, float]]] = {"before": [], "now": []}
            for rep in range(reps):
                if every:  # between the previous scrapes and these two
                    change(state, every, rep)
                for ex_name in ("before", "now") if rep % 2 else ("now", "before"):
                    ex, name = exposers[ex_name], ex_name
                    t0, w0 = time.thread_time(), time.perf_counter()
                    ex.render(formats[fmt])
                    runs[name].append((time.thread_time() - t0, time.perf_counter() - w0))
            out[f"{case}, {fmt}"] = runs
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:,.0f} ms" if s >= 0.01 else f"{s * 1e3:.1f} ms"


def med(runs: list[tuple[float, float]], k: int) -> float:
    return statistics.median(x[k] for x in runs)


def best(runs: list[tuple[float, float]]) -> float:
    return min(x[0] for x in runs)


def report(series: int, results: dict[str, dict[str, list[tuple[float, float]]]]) -> str:
    lines = [
        f"{series:,} histogram series: median (best) CPU, median wall; now / before (medians)",
        "| case | before: CPU | before: wall | now: CPU | now: wall | now / before CPU | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case, runs in results.items():
        b, n = runs["before"], runs["now"]
        lines.append(
            f"| {case} | {_ms(med(b, 0))} ({_ms(best(b))}) | {_ms(med(b, 1))} | {_ms(med(n, 0))} ({_ms(best(n))}) "
            f"| {_ms(med(n, 1))} | {med(n, 0) / med(b, 0):.3f}x | {med(n, 1) / med(b, 1):.3f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scrape_cache", description=__doc__)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    before = renderer_of(args.before)
    for series in (int(s) for s in args.sizes.split(",")):
        print(report(series, measure(series, args.reps, before)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = []
