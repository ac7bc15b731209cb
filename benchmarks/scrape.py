"""Scrape cost: the exposition written from the fold state (render.py) against prometheus_client.

In process, on the same state (HTTP histogram series, the largest family): prometheus_client's
``generate_latest`` over :class:`StateCollector` (the aggregator's collector before render.py), and the
:class:`Exposer` the app serves (capture under a lock, render, standard collectors; identity and gzip).
Times are CPU time of the scraping thread (``time.thread_time``; gzip runs in the same thread). The
renderer keeps series' lines between scrapes: scrapes are timed with nothing changed since the previous
one, and with 1 % and all of the series changed in between (:func:`change`, outside the timing). Also:
what the consumer's lock is held for per scrape (the capture, against the full state copy it replaced),
the checkpoint's pack (which the consumer does under the same lock), and snapshot gauges from many
sources against prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from services.aggregator import checkpoint
from services.aggregator.app import standard_collectors
from services.aggregator.exposition import StateCollector
from services.aggregator.fold import HANDLERS, State, TrimWindow
from services.aggregator.render import Renderer
from services.aggregator.scrape import Exposer, negotiate

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def http_state(series: int, per_series: int = 3, seed: int = 1) -> State:
    """``series`` HTTP histogram series (and their request counters), ``per_series`` requests each."""
    state = State(series_cap=max(10_000, series + 1))
    rnd = random.Random(seed)
    handle = HANDLERS["http.request"]
    methods = ("GET", "POST", "PUT", "DELETE")
    for i in range(series):
        ev = {"method": methods[i % 4], "path": f"/api/v1/r{i // 4}/{{id}}", "status": 200, "duration_s": 0.0}
        for _ in range(per_series):
            ev["duration_s"] = rnd.expovariate(10.0)
            handle(state, "bench:h:1:00", ev)
    return state


@dataclass
class Timing:
    """Seconds per repetition."""

    runs: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def change(state: State, every: int, rep: int) -> None:
    """An observation in every ``every``-th HTTP series (another set each repetition): a bucket and the
    sum, so also the series' ``_count`` counter line."""
    hists = state.hists["http_request_duration_seconds"]
    for n, h in enumerate(hists.values()):
        if (n + rep) % every == 0:
            h[3] += 1
            h[-1] += 0.07


def timed(fn: Any, reps: int, between: Any = None) -> Timing:
    """``between(rep)``, if given, runs before each repetition, outside the timing."""
    t = Timing()
    for rep in range(reps):
        if between is not None:
            between(rep)
        t0 = time.thread_time()
        fn()
        t.runs.append(time.thread_time() - t0)
    return t


@dataclass
class SizeResult:
    series: int
    library_text: Timing | None
    library_om: Timing | None
    ours_text: Timing  # steady: no series changed since the previous scrape
    ours_text_1pct: Timing  # 1 % of the series changed since the previous scrape
    ours_text_all: Timing  # every series changed since the previous scrape
    ours_om: Timing
    ours_gzip: Timing
    cold_text: float  # first scrape: every label string and series' lines built
    bytes_text: int
    bytes_gzip: int
    lock_capture: Timing  # what the consumer's lock is held for per scrape now
    lock_copy: Timing  # ... and before: State.copy() + State.merge
    checkpoint_complete: Timing  # the checkpoint the consumer writes first (under the same lock)
    checkpoint_complete_bytes: int
    checkpoint_changes: Timing  # a later one, after 1 % of the series changed
    checkpoint_changes_bytes: int


def _exposer(state: State, renderer: Renderer) -> Exposer:
    lock = threading.Lock()
    version = [0]

    def capture(take: Any) -> Any:
        with lock:
            return take([state], version[0])

    def next_version() -> int:  # every scrape its own rendering (no sharing inflates nothing here)
        version[0] += 1
        return version[0]

    return Exposer(
        renderer,
        capture,
        next_version,
        dict,
        standard_collectors(CollectorRegistry(auto_describe=False)),
        CollectorRegistry(auto_describe=False),
    )


def measure_size(series: int, reps: int, library: bool) -> SizeResult:
    state = http_state(series)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(lambda: state))
    renderer = Renderer()
    ex = _exposer(state, renderer)
    text, om, zipped = negotiate("", "identity"), negotiate(OPENMETRICS, "identity"), negotiate("", "gzip")
    t0 = time.thread_time()
    body = ex.render(text)
    cold = time.thread_time() - t0
    result = SizeResult(
        series=series,
        library_text=timed(lambda: generate_latest(registry), reps) if library else None,
        library_om=timed(lambda: generate_openmetrics(registry), reps) if library else None,
        ours_text=timed(lambda: ex.render(text), reps),
        ours_text_1pct=timed(lambda: ex.render(text), reps, lambda rep: change(state, 100, rep)),
        ours_text_all=timed(lambda: ex.render(text), reps, lambda rep: change(state, 1, rep)),
        ours_om=timed(lambda: ex.render(om), reps),
        ours_gzip=timed(lambda: ex.render(zipped), reps),
        cold_text=cold,
        bytes_text=len(body),
        bytes_gzip=len(ex.render(zipped)),
        lock_capture=timed(lambda: renderer.capture([state], 0, time.time()), reps),
        lock_copy=timed(lambda: State.merge([state.copy()]), reps),
        checkpoint_complete=timed(lambda: checkpoint.complete(state, TrimWindow()), reps),
        checkpoint_complete_bytes=checkpoint.complete(state, TrimWindow()).size,
        **_checkpoint_changes(state, series, reps),
    )
    return result


def _checkpoint_changes(state: State, series: int, reps: int) -> dict[str, Any]:
    """``checkpoint.changes`` after 1 % of the series changed since the previous checkpoint."""
    handle = HANDLERS["http.request"]
    methods = ("GET", "POST", "PUT", "DELETE")
    t = Timing()
    size = 0
    for r in range(reps):
        state.take_dirty()
        for i in range(r, series, 100):
            ev = {
                "method": methods[i % 4],
                "path": f"/api/v1/r{i // 4}/{{id}}",
                "status": 200,
                "duration_s": 0.1,
            }
            handle(state, "bench:h:1:00", ev)
        dirty, sources = state.take_dirty()
        t0 = time.thread_time()
        write = checkpoint.changes(state, TrimWindow(), dirty, sources)
        t.runs.append(time.thread_time() - t0)
        size = write.size
    return {"checkpoint_changes": t, "checkpoint_changes_bytes": size}


# ---- snapshot gauges from many producer processes ------------------------------------------------------

POOLS = 10


def sources_state(sources: int) -> State:
    """Every source reports ``pool.state`` for the same ``POOLS`` pools (the gauges sum over sources)."""
    state = State()
    now = time.time()
    for s in range(sources):
        src = f"api:h:{s}:00"
        HANDLERS["source.started"](
            state, src, {"service": "api", "version": "1", "ts": now, "start_time_s": now}
        )
        state.sources[src].last_seen = now
        for p in range(POOLS):
            HANDLERS["pool.state"](
                state,
                src,
                {
                    "pool_id": f"pool-{p}",
                    "workload_id": "echo",
                    **dict.fromkeys(
                        ("size", "available", "borrowed", "pending", "min_size", "max_size", "target_size"), s
                    ),
                    "affinity_reservations": 1,
                },
            )
    return state


#: Run in a child process with PROMETHEUS_MULTIPROC_DIR set (the value class is chosen at import):
#: N processes set the same pool gauges (livesum), then one scrape collects every file.
_MULTIPROCESS = r"""
import json, os, sys, time
n, pools, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
names = ["size", "available", "borrowed", "pending", "min_size", "max_size", "target_size"]
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        reg = CollectorRegistry()
        gauges = [Gauge("pool_" + x, x, ["pool_id", "workload_id"], registry=reg, multiprocess_mode="livesum") for x in names]
        for p in range(pools):
            for g in gauges:
                g.labels(f"pool-{p}", "echo").set(1)
        os._exit(0)
    os.waitpid(pid, 0)
registry = CollectorRegistry()
MultiProcessCollector(registry)
runs = []
for _ in range(reps):
    t0 = time.thread_time()
    generate_latest(registry)
    runs.append(time.thread_time() - t0)
print(json.dumps(runs))
"""


def multiprocess_scrape(processes: int, reps: int) -> Timing:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", _MULTIPROCESS, str(processes), str(POOLS), str(reps)],
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": d},
            capture_output=True,
            text=True,
            check=True,
        )
    return Timing(json.loads(out.stdout))


@dataclass
class SourcesResult:
    sources: int
    ours: Timing
    multiprocess: Timing


def measure_sources(sources: int, reps: int) -> SourcesResult:
    state = sources_state(sources)
    ex = _exposer(state, Renderer())
    fmt = negotiate("", "identity")
    return SourcesResult(sources, timed(lambda: ex.render(fmt), reps), multiprocess_scrape(sources, reps))


@dataclass
class ScrapeResult:
    sizes: list[SizeResult]
    sources: list[SourcesResult]


def run(
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000),
    reps: int = 5,
    library_max: int = 10_000,
    sources: tuple[int, ...] = (1, 8, 64),
) -> ScrapeResult:
    return ScrapeResult(
        [measure_size(n, reps, n <= library_max) for n in sizes],
        [measure_sources(n, reps) for n in sources],
    )
