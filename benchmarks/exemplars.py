"""The cost of exemplars (issue 13): emit with a trace id against without, the fold of events that carry
one against events that do not, and an OpenMetrics scrape with exemplars against one without, each pair
measured in the same run, repetitions interleaved (so the machine's load changes both sides alike).

- **emit**: thread CPU per ``emit()`` call into a publisher connected to a real Redis (steady state: a
  pause after every chunk, the flusher running), for ``Publisher.emit`` as before, for the API's
  ``traced(emit)`` outside a request (no trace id in the context) and inside one (the wrapper adds the
  context's trace id), and for a dict that already carries ``trace_id`` (the ``http.request`` of the
  middleware); and the producer process's CPU per event until Redis has every event (emit, encode,
  send), and the bytes per event on the stream.
- **fold**: the aggregator's ingest of the same events (decode, validate, fold), ``http.request``
  events over 60 series of one histogram, with or without a (distinct) ``trace_id`` each.
- **scrape**: ``Renderer`` capture and OpenMetrics rendering of 10,000 histogram series without
  exemplars, and with an exemplar on 3 buckets of every series.

``python -m benchmarks.exemplars`` runs it alone (``--write`` replaces the *Exemplars* section of
docs/performance.md); ``make bench`` runs it with everything else.
"""

from __future__ import annotations

import argparse
import contextvars
import datetime as dt
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from services.aggregator.fold import HANDLERS, State, apply_batch
from services.aggregator.render import Renderer
from services.embedded import EmbeddedRedis
from shared.events.codec import decode_batch, encode_batch
from shared.events.publisher import Publisher
from shared.events.trace import TRACE_ID, new_trace_id, traced

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Exemplars"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
FIELDS = {"method": "GET", "path": "/api/v1/pools/{pool_id}", "status": 200}


@dataclass
class Pair:
    """Seconds per unit, one value per repetition, for the baseline and the variant."""

    base: list[float]
    other: list[float]

    @property
    def ratio(self) -> float:
        """Median of the per-repetition ratios (each against the baseline timed next to it)."""
        return statistics.median(o / b for o, b in zip(self.other, self.base, strict=True))


@dataclass
class ExemplarResult:
    n_emit: int
    n_fold: int
    series_scrape: int
    reps: int
    #: emit variant -> thread CPU per call per repetition
    emit: dict[str, list[float]]
    #: producer CPU per event (emit + encode + send), without / with a trace id
    producer: Pair
    bytes_per_event: tuple[float, float]
    fold: Pair
    scrape: Pair
    capture: Pair
    #: capture + render with every exemplar new since the previous scrape (no text cached)
    scrape_new: list[float]
    measured: str = ""


# ---- emit ---------------------------------------------------------------------------------------------


def _emit_loops(pub: Publisher) -> dict[str, Callable[[int], None]]:
    raw, wrapped = pub.emit, traced(pub.emit)

    def plain(k: int) -> None:
        for _ in range(k):
            raw("http.request", {**FIELDS, "duration_s": 0.004})

    def traced_outside(k: int) -> None:
        for _ in range(k):
            wrapped("http.request", {**FIELDS, "duration_s": 0.004})

    def traced_inside(k: int) -> None:
        token = TRACE_ID.set(TRACE)
        try:
            for _ in range(k):
                wrapped("http.request", {**FIELDS, "duration_s": 0.004})
        finally:
            TRACE_ID.reset(token)

    def explicit(k: int) -> None:
        for _ in range(k):
            raw("http.request", {**FIELDS, "duration_s": 0.004, "trace_id": TRACE})

    return {
        "Publisher.emit, no trace id (before)": plain,
        "traced(emit), no trace id in the context": traced_outside,
        "traced(emit), trace id in the context": traced_inside,
        "Publisher.emit, trace_id in the dict": explicit,
    }


def measure_emit(
    redis_url: str, n: int, reps: int, chunk: int = 2_000
) -> tuple[dict[str, list[float]], Pair, tuple[float, float]]:
    pub = Publisher(
        redis_url, "bench-ex", buffer_size=n + 10_000, heartbeat_interval_s=3600, stream_maxlen=10 * n
    )
    admin = redis.Redis.from_url(redis_url, protocol=2)
    loops = _emit_loops(pub)
    thread: dict[str, list[float]] = {name: [] for name in loops}
    producer: dict[str, list[float]] = {name: [] for name in loops}
    sizes: dict[str, float] = {}
    try:
        for i in range(reps + 1):  # the first round warms up
            for name, loop in loops.items():
                admin.delete(pub.stream)
                cpu = 0.0
                p0 = time.process_time()
                for _ in range(n // chunk):
                    t0 = time.thread_time()
                    loop(chunk)
                    cpu += time.thread_time() - t0
                    time.sleep(0.001)
                if not pub.flush(120):
                    raise RuntimeError("benchmark publisher did not flush within 120 s")
                p1 = time.process_time()
                done = n // chunk * chunk
                if i:
                    thread[name].append(cpu / done)
                    producer[name].append((p1 - p0) / done)
                    entries = admin.xrange(pub.stream)
                    sizes[name] = sum(len(f[b"b"]) for _, f in entries) / done
    finally:
        pub.close(10)
        admin.delete(pub.stream)
        admin.close()
    names = list(loops)
    return thread, Pair(producer[names[0]], producer[names[2]]), (sizes[names[0]], sizes[names[2]])


# ---- fold ---------------------------------------------------------------------------------------------


def _payloads(n: int, with_trace: bool, src: str, per_entry: int = 500) -> list[bytes]:
    events: list[dict[str, Any]] = []
    for i in range(n):
        ev = {
            "type": "http.request",
            "ts": 1_767_225_600.0 + i / 1000,
            "method": "GET",
            "path": f"/r{i % 20}",
            "status": 200 + i % 3,
            "duration_s": (i % 97) / 50,  # spread over the buckets, 0 .. 1.92 s
        }
        if with_trace:
            ev["trace_id"] = new_trace_id()
        events.append(ev)
    return [encode_batch(src, events[a : a + per_entry], a + 1) for a in range(0, n, per_entry)]


def _fold(payloads: list[bytes]) -> float:
    state = State()
    t0 = time.thread_time()
    for k, payload in enumerate(payloads):
        apply_batch(state, decode_batch(payload), 1_767_225_600.0 + k)
    return time.thread_time() - t0


def measure_fold(n: int, reps: int) -> Pair:
    without, with_ = _payloads(n, False, "bench:h:1:00"), _payloads(n, True, "bench:h:1:00")
    base, other = [], []
    for i in range(reps + 1):
        a, b = _fold(without), _fold(with_)
        if i:
            base.append(a / n)
            other.append(b / n)
    return Pair(base, other)


# ---- scrape -------------------------------------------------------------------------------------------


def _scrape_state(series: int, with_exemplars: bool) -> State:
    state = State()
    state.entry_s = 1_767_225_600.0  # as apply_batch sets it: the events' ts are within the skew limit
    handle = HANDLERS["http.request"]
    for i in range(series):
        path = f"/p{i}"
        for j, d in enumerate((0.004, 0.2, 3.0)):
            ev = {"method": "GET", "path": path, "status": 200, "duration_s": d, "ts": 1_767_225_600.0 + j}
            if with_exemplars:
                ev["trace_id"] = new_trace_id()
            handle(state, "bench:h:1:00", ev)
    return state


def _render(r: Renderer, state: State) -> tuple[float, float]:
    t0 = time.thread_time()
    cap = r.capture([state], 0, time.time(), exemplars=True)
    t1 = time.thread_time()
    size = sum(len(chunk) for chunk in r.lines(cap, openmetrics=True))
    t2 = time.thread_time()
    if size <= 0:
        raise AssertionError("nothing rendered")
    return t1 - t0, t2 - t0


def measure_scrape(series: int, reps: int) -> tuple[Pair, Pair, list[float]]:
    states = {False: _scrape_state(series, False), True: _scrape_state(series, True)}
    renderers = {k: Renderer("boilerhouse_") for k in states}
    capture: dict[bool, list[float]] = {False: [], True: []}
    render: dict[bool, list[float]] = {False: [], True: []}
    new: list[float] = []
    for i in range(reps + 1):
        for k, state in states.items():
            c, t = _render(renderers[k], state)
            if i:
                capture[k].append(c)
                render[k].append(t)
        # Every exemplar new since the previous scrape: none of their texts is cached.
        fresh = Renderer("boilerhouse_")
        _render(fresh, states[True])
        fresh._exemplar_texts = {name: {} for name in fresh._exemplar_texts}
        fresh.forget_rendered()  # nor any series' lines
        if i:
            new.append(_render(fresh, states[True])[1])
    return Pair(render[False], render[True]), Pair(capture[False], capture[True]), new


# ---- the report ---------------------------------------------------------------------------------------


def run(redis_url: str, quick: bool, reps: int) -> ExemplarResult:
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    n_emit, n_fold, series = (10_000, 10_000, 500) if quick else (200_000, 200_000, 10_000)
    # Measured in a context of its own: a trace id set by a caller must not leak into the baseline.
    thread, producer, sizes = contextvars.Context().run(measure_emit, redis_url, n_emit, reps)
    fold = measure_fold(n_fold, reps)
    scrape, capture, new = measure_scrape(series, reps)
    return ExemplarResult(
        n_emit, n_fold, series, reps, thread, producer, sizes, fold, scrape, capture, new, started
    )


def _ns(s: float) -> str:
    return f"{s * 1e9:,.0f} ns"


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms"


def section(r: ExemplarResult, command: str) -> str:
    names = list(r.emit)
    base = r.emit[names[0]]
    lines = [
        SECTION,
        "",
        f"Measured {r.measured} by `{command}` (benchmarks/exemplars.py). Each pair measured in the same run, "
        "repetitions",
        f"interleaved; median of {r.reps} (best in parentheses); ratios are medians of per-repetition ratios.",
        "",
        f"**emit** ({r.n_emit:,} `http.request` events per repetition into a publisher on a real Redis, a 1 ms",
        "pause every 2,000; thread CPU per call):",
        "",
        "| emit | per call | vs before |",
        "| --- | ---: | ---: |",
    ]
    for name in names:
        runs = r.emit[name]
        ratio = Pair(base, runs).ratio
        lines.append(f"| {name} | {_ns(statistics.median(runs))} ({_ns(min(runs))}) | {ratio:.2f}x |")
    lines += [
        "",
        "| producer, per event (emit + encode + send, process CPU) | without trace id | with | with / without |",
        "| --- | ---: | ---: | ---: |",
        f"| CPU | {_ns(statistics.median(r.producer.base))} | {_ns(statistics.median(r.producer.other))} "
        f"| {r.producer.ratio:.2f}x |",
        f"| bytes on the stream | {r.bytes_per_event[0]:.1f} | {r.bytes_per_event[1]:.1f} "
        f"| {r.bytes_per_event[1] / r.bytes_per_event[0]:.2f}x |",
        "",
        f"**fold** ({r.n_fold:,} `http.request` events over 60 series, entries of 500: decode, validate, fold;",
        "with: a distinct `trace_id` on every event, kept as the exemplar of its bucket):",
        "",
        "| aggregator, per event | without trace id | with (exemplars) | with / without |",
        "| --- | ---: | ---: | ---: |",
        f"| decode + validate + fold | {_ns(statistics.median(r.fold.base))} ({_ns(min(r.fold.base))}) "
        f"| {_ns(statistics.median(r.fold.other))} ({_ns(min(r.fold.other))}) | {r.fold.ratio:.2f}x |",
        "",
        f"**scrape** ({r.series_scrape:,} HTTP histogram series, 3 observations each; with: an exemplar on",
        "each of the 3 buckets they fell in; OpenMetrics, thread CPU):",
        "",
        "| scrape | no exemplars | exemplars | with / without |",
        "| --- | ---: | ---: | ---: |",
        f"| capture (under the consumer's lock) | {_ms(statistics.median(r.capture.base))} "
        f"| {_ms(statistics.median(r.capture.other))} | {r.capture.ratio:.2f}x |",
        f"| capture + render | {_ms(statistics.median(r.scrape.base))} ({_ms(min(r.scrape.base))}) "
        f"| {_ms(statistics.median(r.scrape.other))} ({_ms(min(r.scrape.other))}) | {r.scrape.ratio:.2f}x |",
        f"| capture + render, every exemplar new since the previous scrape | "
        f"{_ms(statistics.median(r.scrape.base))} | {_ms(statistics.median(r.scrape_new))} "
        f"| {statistics.median(r.scrape_new) / statistics.median(r.scrape.base):.2f}x |",
        "",
        *_analysis(r),
    ]
    return "\n".join(lines)


def _analysis(r: ExemplarResult) -> list[str]:
    names = list(r.emit)
    med = {name: statistics.median(runs) for name, runs in r.emit.items()}
    wrapper = med[names[1]] - med[names[0]]
    traced_ = med[names[2]] - med[names[0]]
    producer = statistics.median(r.producer.other) - statistics.median(r.producer.base)
    fold = statistics.median(r.fold.other) - statistics.median(r.fold.base)
    per_series = (statistics.median(r.scrape.other) - statistics.median(r.scrape.base)) / r.series_scrape
    return [
        "What it costs (medians of this run; the machine is shared, so differences of a few hundred ns are",
        "within its noise — the ratios, taken per repetition, are the better guide):",
        "",
        f"- **Producer**: the API's `traced(emit)` wrapper costs {_ns(wrapper)} per call without a trace id "
        f"(a set lookup and a call), {_ns(traced_)} with one (a context-variable read and a dict insert); "
        f"the whole producer (emit, encode, send) {_ns(producer)} more CPU per event with a trace id "
        f"({r.producer.ratio:.2f}x), and {r.bytes_per_event[1] - r.bytes_per_event[0]:.0f} more bytes per "
        "event on the stream (the key and 32 characters). Without a trace id, encoding and stream are as before.",
        f"- **Aggregator**: {_ns(fold)} more per event that carries a trace id ({r.fold.ratio:.2f}x of the "
        "decode, validation and fold), mostly the validation's regular expression over the 32 characters and "
        "the new tuple kept per exemplar; events without one pay one `dict.get`.",
        f"- **Scrape**: {_ns(per_series)} more per histogram series with exemplars on 3 of its buckets "
        f"({r.scrape.ratio:.2f}x of an OpenMetrics scrape; such a series takes the slower line-by-line branch; "
        "an exemplar's text is kept while it stays the bucket's latest, so a scrape after a burst of new "
        "exemplars costs more, as the last row shows). Each series' lines are kept between scrapes "
        "(render.py): a series with exemplars is reused like any other while its numbers and every bucket's "
        "exemplar stay the same objects, so the first rows are scrapes with nothing changed, and the last "
        "row, every series written anew, is what a changed series costs. "
        "The text format is unchanged: it captures and writes no exemplars, and series without exemplars "
        "keep the fast path.",
        "- **Memory**: at most one exemplar (a tuple of trace id, value and timestamp, ~200 bytes) per "
        "bucket of each existing series, bounded by the series cap; nothing in the checkpoint.",
    ]


def replace_section(document: str, text: str) -> str:
    """``document`` with its *Exemplars* section (to the next ``## `` heading) replaced, or appended."""
    if SECTION not in document:
        return document.rstrip("\n") + "\n\n" + text + "\n"
    start = document.index(SECTION)
    nxt = document.find("\n## ", start + len(SECTION))
    end = len(document) if nxt < 0 else nxt + 1
    return document[:start] + text + "\n" + ("\n" if nxt >= 0 else "") + document[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.exemplars", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument(
        "--write", action="store_true", help="replace the Exemplars section of docs/performance.md"
    )
    args = parser.parse_args(argv)
    binary = shutil.which("redis-server")
    if binary is None:
        print("benchmarks need Debian's redis-server (make test installs it)", file=sys.stderr)
        return 2
    with EmbeddedRedis(binary=binary, allow_fake=False) as server:
        result = run(server.url, args.quick, 2 if args.quick else args.reps)
    command = "python -m benchmarks.exemplars" + (" --quick" if args.quick else "")
    text = section(result, command)
    print(text)
    if args.write and not args.quick:
        path = ROOT / "docs" / "performance.md"
        path.write_text(replace_section(path.read_text(), text))
        print(f"wrote the Exemplars section of {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
