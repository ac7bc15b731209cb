"""The exposition written from the fold state (render.py) against prometheus_client over StateCollector.

The library's output is the reference: on the same state, the renderer must write the same bytes in
both formats, whatever the label values, numbers, partitions and series added between scrapes.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

from services.aggregator.exposition import StateCollector
from services.aggregator.fold import HANDLERS, Source, State, apply_batch
from services.aggregator.metrics import METRICS, Kind, PartitionReading
from services.aggregator.render import Renderer, go_float
from shared.events.codec import Batch

NOW = 1_767_225_600.0
TTL = 30.0
PARTITIONS = {0: PartitionReading(lag=3, pending=1, checkpoint_age_s=0.25), 1: PartitionReading(lag=0)}


def library(state: State, openmetrics: bool, prefix: str = "boilerhouse_") -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(lambda: state, prefix, TTL, lambda: PARTITIONS, clock=lambda: NOW))
    render = generate_openmetrics if openmetrics else generate_latest
    return bytes(render(registry)).decode()


def ours(renderer: Renderer, states: list[State], openmetrics: bool) -> str:
    cap = renderer.capture(states, 1, NOW, exemplars=openmetrics)
    readings = cap.readings(PARTITIONS)
    text = "".join(renderer.lines(cap, readings, openmetrics))
    return text + "# EOF\n" if openmetrics else text


def assert_same(states: list[State], renderer: Renderer | None = None, prefix: str = "boilerhouse_") -> None:
    renderer = renderer or Renderer(prefix, TTL)
    merged = State.merge([s.copy() for s in states]) if len(states) > 1 else states[0]
    for openmetrics in (False, True):
        assert ours(renderer, states, openmetrics) == library(merged, openmetrics, prefix)


# ---- states ---------------------------------------------------------------------------------------

label_values = st.text(max_size=6) | st.sampled_from(['a"b', "a\\b", "line\nbreak", "ü€", "", "__overflow__"])
counts = st.integers(0, 20) | st.integers(0, 3_000_000)
numbers = (
    counts
    | st.floats(0, 1e7, allow_nan=False)
    | st.floats(0, 1e30, allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.1, 1e-7, 123456.789, 999999.9999, 1e6, 2.5e16])
)
SOURCES = {
    "live:h:1:00": Source("api", "1.0", NOW - 1.0),
    "live:h:2:00": Source("api", 'v"2\\x', NOW - 29.0),
    "silent:h:3:00": Source("sync", "3", NOW - 31.0),  # vanished (no source.stopped)
    "rejected:h:5:00": Source("api", "5", 0.0),  # seen only through rejected events
    "stopped:h:4:00": Source("api", "4", NOW, stopped=True),
}


trace_ids = st.binary(min_size=16, max_size=16).filter(any).map(bytes.hex)
#: Values and timestamps as events carry them: floats, or ints (msgpack ints are valid numbers).
exemplars = st.tuples(
    trace_ids,
    st.floats(0, 1e7, allow_nan=False) | st.sampled_from([0.0, 1e-7, 2.5e16]) | st.integers(0, 10**8),
    st.floats(0, 2e9, allow_nan=False) | st.sampled_from([NOW, NOW - 0.125, 1e9]) | st.integers(0, 2 * 10**9),
)


def exemplar_rows(width: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.none() | exemplars, min_size=width, max_size=width)


@st.composite
def states(draw: Any) -> State:
    state = State()
    state.sources = {
        s: Source(i.service, i.version, i.last_seen, i.last_seq, i.stopped) for s, i in SOURCES.items()
    }
    state.newest_entry_s = draw(st.sampled_from([0.0, NOW - 2.5]))
    for m in METRICS:
        if not m.stateful:
            continue
        keys = draw(st.lists(st.tuples(*[label_values] * len(m.labels)), max_size=4, unique=True))
        for key in keys:
            if m.snapshot:
                srcs = draw(st.lists(st.sampled_from(sorted(SOURCES)), max_size=4, unique=True))
                state.gauges[m.name][key] = {s: draw(numbers) for s in srcs}
            elif m.kind is Kind.HISTOGRAM:
                buckets = draw(
                    st.lists(counts, min_size=len(m.buckets or ()) + 1, max_size=len(m.buckets or ()) + 1)
                )
                state.hists[m.name][key] = [*buckets, draw(numbers)]
                if draw(st.booleans()):
                    state.exemplars[m.name][key] = draw(exemplar_rows(len(buckets)))
            else:
                state.counters[m.name][key] = draw(numbers)
    return state


@settings(max_examples=60, deadline=None)
@given(states())
def test_same_bytes_as_prometheus_client_on_any_state(state: State) -> None:
    assert_same([state])


@settings(max_examples=30, deadline=None)
@given(states(), states())
def test_partitions_are_combined_as_state_merge_does(a: State, b: State) -> None:
    # Each source writes to one partition: give the second state other sources' gauge values.
    b.sources = {}
    for per_labels in b.gauges.values():
        for per_src in per_labels.values():
            per_src.clear()
    assert_same([a, b])


@settings(max_examples=200, deadline=None)
@given(numbers | st.floats(allow_nan=True) | st.integers(-(10**20), 10**20))
def test_numbers_are_written_as_the_library_writes_them(v: float) -> None:
    assert go_float(v) == floatToGoString(v)


def folded() -> State:
    """A state the fold made, from every histogram, counter and gauge handler."""
    state = State()
    ts = NOW - 1
    HANDLERS["source.started"](
        state, "a:h:1:00", {"service": "a", "version": 'x"y\\z\n', "ts": ts, "start_time_s": ts}
    )
    state.sources["a:h:1:00"].last_seen = ts
    for i in range(40):
        HANDLERS["http.request"](
            state,
            "a:h:1:00",
            {"method": "GET", "path": f"/r/{i % 7}", "status": 200 + i % 3, "duration_s": i / 7},
        )
        HANDLERS["sync.finished"](
            state,
            "a:h:1:00",
            {
                "workload_id": f"w{i % 3}",
                "direction": "upload",
                "mode": "sync",
                "status": "success" if i % 4 else "failure",
                "duration_s": i * 3.3,
                "bytes": 10**6 * i,
                "files": i,
                "error_type": None,
            },
        )
        HANDLERS["pool.state"](
            state,
            "a:h:1:00",
            {
                "pool_id": f"p{i % 5}",
                "workload_id": "echo",
                **dict.fromkeys(
                    ("size", "available", "borrowed", "pending", "min_size", "max_size", "target_size"), i
                ),
                "affinity_reservations": 1,
            },
        )
    return state


@pytest.mark.parametrize("prefix", ["boilerhouse_", "acme_"])
def test_same_bytes_on_a_folded_state_with_any_prefix(prefix: str) -> None:
    assert_same([folded()], prefix=prefix)


def test_series_added_between_scrapes_keep_the_output_exact() -> None:
    """The sorted order and label strings are cached; new series are inserted (a few) or the order is
    rebuilt (many), a restored state starts again, and a removed series is noticed."""
    renderer = Renderer("boilerhouse_", TTL)
    state = folded()
    assert_same([state], renderer)
    handle = HANDLERS["http.request"]
    for burst in (1, 3, 300):
        for i in range(burst):
            handle(
                state,
                "a:h:1:00",
                {"method": "POST", "path": f"/new/{burst}/{i}", "status": 201, "duration_s": 0.2},
            )
        assert_same([state], renderer)
    restored = state.copy()  # equal keys, other objects
    assert_same([restored], renderer)
    table = restored.hists["http_request_duration_seconds"]
    del table[next(iter(table))]  # series never disappear in the fold today; if they ever do
    handle(restored, "a:h:1:00", {"method": "PUT", "path": "/x", "status": 200, "duration_s": 1.0})
    assert_same([restored], renderer)


def test_output_parses_sample_for_sample_as_the_library_output() -> None:
    state = folded()
    renderer = Renderer("boilerhouse_", TTL)
    for openmetrics, parse in ((False, parse_text), (True, parse_openmetrics)):
        mine = {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in parse(ours(renderer, [state], openmetrics))
            for s in f.samples
        }
        theirs = {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in parse(library(state, openmetrics))
            for s in f.samples
        }
        assert mine == theirs and len(mine) > 100


def test_names_the_renderer_does_not_write_go_through_the_library() -> None:
    assert Renderer("boilerhouse_").handles("underscores") and Renderer("boilerhouse_").handles("allow-utf-8")
    assert not Renderer("boilerhouse_").handles("dots") and not Renderer("boilerhouse_").handles("values")
    assert not Renderer("acme:").handles("underscores"), "a colon is escaped differently per format"
    assert not Renderer("acme-").handles("underscores")


def test_histogram_sums_and_counts_stay_exact_past_the_fast_paths() -> None:
    state = State()
    name = "container_acquire_duration_seconds"
    width = len(next(m for m in METRICS if m.name == name).buckets or ()) + 2
    state.hists[name][("p", "success")] = [7] * (width - 1) + [math.pi * 1e7]
    state.hists[name][("q", "success")] = [400_000] * (width - 1) + [-0.0]
    state.hists[name][("r", "success")] = [1.5e20] + [1] * (width - 2) + [2**60]
    assert_same([state])


# ---- exemplars (OpenMetrics only) ---------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


def _request(state: State, duration: float, trace_id: str | None, ts: float = NOW - 1) -> None:
    ev: dict[str, Any] = {"method": "GET", "path": "/x", "status": 200, "duration_s": duration, "ts": ts}
    if trace_id is not None:
        ev["trace_id"] = trace_id
    state.entry_s = NOW  # what apply_batch sets: the entry's time
    HANDLERS["http.request"](state, "a:h:1:00", ev)


def test_exemplars_go_on_their_bucket_line_in_openmetrics_only() -> None:
    state = folded()
    _request(state, 0.07, TRACE, NOW - 0.5)  # HTTP buckets: 0.01, 0.05, 0.1, ... -> le="0.1"
    _request(state, 0.1, OTHER, NOW - 0.25)  # exactly a bound: that bucket (le >= value)
    _request(state, 0.03, None)  # no trace id: counted, no exemplar
    renderer = Renderer("boilerhouse_", TTL)
    om = ours(renderer, [state], True)
    text = ours(renderer, [state], False)
    assert " # {" not in text and "trace_id" not in text
    line = next(x for x in om.splitlines() if 'le="0.1"' in x and 'path="/x"' in x)
    assert line.endswith(f' # {{trace_id="{OTHER}"}} 0.1 {NOW - 0.25!r}'), line
    assert sum(1 for x in om.splitlines() if "trace_id" in x) == 1, "the later exemplar replaced the earlier"
    _request(state, 0.07, TRACE, NOW - 0.5)
    om = ours(renderer, [state], True)
    assert [x.split(" # ")[1] for x in om.splitlines() if "trace_id" in x] == [
        f'{{trace_id="{TRACE}"}} 0.07 {NOW - 0.5!r}'
    ], "one bucket, one exemplar, the latest"
    assert_same([state], renderer)
    families = {f.name: f for f in parse_openmetrics(om)}
    buckets = [s for s in families["boilerhouse_http_request_duration_seconds"].samples if s.exemplar]
    assert [
        (b.labels["le"], b.exemplar.labels, b.exemplar.value, float(b.exemplar.timestamp)) for b in buckets
    ] == [("0.1", {"trace_id": TRACE}, 0.07, NOW - 0.5)]


def test_an_exemplar_of_a_skewed_clock_carries_the_entrys_time() -> None:
    """Prometheus drops an exemplar older than the series' last one: one timestamp days ahead would hide
    the series' exemplars until then. Beyond the clock-skew limit the entry's time stands in."""
    state = State()
    base = {"type": "http.request", "method": "GET", "path": "/x", "status": 200}
    skew = state.limits.clock_skew_s
    events = [
        {**base, "seq": 1, "ts": NOW + 2 * 86_400, "duration_s": 0.001, "trace_id": TRACE},  # 2 days ahead
        {**base, "seq": 2, "ts": NOW - 2 * 86_400, "duration_s": 0.03, "trace_id": OTHER},  # 2 days behind
        {**base, "seq": 3, "ts": NOW - skew + 1, "duration_s": 0.07, "trace_id": TRACE},  # within the limit
    ]
    assert apply_batch(state, Batch("a:h:1:00", 1, events), NOW) == []
    row = state.exemplars["http_request_duration_seconds"][("GET", "/x", "200")]
    assert [e for e in row if e is not None] == [
        (TRACE, 0.001, NOW),
        (OTHER, 0.03, NOW),
        (TRACE, 0.07, NOW - skew + 1),
    ]
    assert state.counters["aggregator_clock_skew_events_total"] == {("ahead",): 1, ("behind",): 1}


def test_exemplars_are_kept_per_bucket_per_series_and_bounded_by_the_series_cap() -> None:
    state = State(series_cap=3)
    state.entry_s = NOW
    for i in range(10):
        HANDLERS["http.request"](
            state,
            "a:h:1:00",
            {
                "method": "GET",
                "path": f"/p/{i}",
                "status": 200,
                "duration_s": 0.001 * 10**i,
                "ts": NOW,
                "trace_id": f"{i + 1:032x}",
            },
        )
    hists, rows = (
        state.hists["http_request_duration_seconds"],
        state.exemplars["http_request_duration_seconds"],
    )
    assert set(rows) <= set(hists) and len(hists) == 4  # 3 series and the overflow series
    overflow = rows[("__overflow__",) * 3]
    # Events 3..9 fell into the overflow series, each on the bucket of its value (0.001 * 10**i).
    assert [e[0] if e else None for e in overflow] == [
        *[None] * 5,
        f"{4:032x}",  # 1.0: le="1.0"
        None,
        None,
        f"{5:032x}",  # 10.0: le="10.0"
        f"{10:032x}",  # 100.0 ... 1e6: +Inf, the latest
    ]
    assert rows[("GET", "/p/0", "200")][0] == (f"{1:032x}", 0.001, NOW)
    assert_same([state])


def test_exemplars_of_partitions_merge_by_timestamp_and_copies_are_independent() -> None:
    a, b = State(), State()
    _request(a, 0.07, TRACE, NOW - 5)
    _request(b, 0.07, OTHER, NOW - 1)
    _request(b, 3.0, OTHER, NOW - 9)
    _request(a, 3.0, TRACE, NOW - 2)
    merged = State.merge([a.copy(), b.copy()])
    row = merged.exemplars["http_request_duration_seconds"][("GET", "/x", "200")]
    assert [e[0] for e in row if e] == [OTHER, TRACE]
    assert_same([a, b])
    copy = a.copy()
    _request(a, 0.07, OTHER, NOW)
    assert copy.exemplars["http_request_duration_seconds"][("GET", "/x", "200")][2] == (TRACE, 0.07, NOW - 5)


def test_exemplars_are_not_checkpointed() -> None:
    """A checkpoint holds the histogram's counts and no trace id; restored, the series has no exemplars
    until new events bring them (docs/metrics.md, *Exemplars*)."""
    from services.aggregator import checkpoint
    from services.aggregator.fold import TrimWindow

    state = State()
    _request(state, 0.07, TRACE)
    write = checkpoint.complete(state, TrimWindow(), NOW)
    assert not any(TRACE.encode() in k or TRACE.encode() in v for k, v in write.fields.items())
    restored = checkpoint.load(write.fields, state.limits).state
    assert restored.hists == state.hists and state.exemplars["http_request_duration_seconds"]
    assert restored.exemplars == {name: {} for name in state.exemplars}
    _request(restored, 0.07, OTHER)
    assert restored.exemplars["http_request_duration_seconds"][("GET", "/x", "200")][2] == (
        OTHER,
        0.07,
        NOW - 1,
    )


def test_exemplar_texts_kept_between_scrapes_follow_every_change() -> None:
    """The renderer keeps each exemplar's text while the bucket's exemplar is the same; a new exemplar in
    the bucket, a new bucket, a new series and a restored state are all written as they are."""
    renderer = Renderer("boilerhouse_", TTL)
    state = folded()
    _request(state, 0.07, TRACE, NOW - 3)
    assert_same([state], renderer)
    _request(state, 0.08, OTHER, NOW - 2)  # same bucket, new exemplar
    _request(state, 3.0, TRACE, NOW - 2)  # another bucket
    HANDLERS["http.request"](
        state,
        "a:h:1:00",
        {"method": "PUT", "path": "/y", "status": 201, "duration_s": 0.5, "ts": NOW, "trace_id": OTHER},
    )
    assert_same([state], renderer)
    om = ours(renderer, [state], True)
    assert f'{{trace_id="{OTHER}"}} 0.08 {NOW - 2!r}' in om and f'{TRACE}"}} 0.07 ' not in om
    restored = state.copy()
    restored.exemplars["http_request_duration_seconds"].clear()  # as after a restart: none
    _request(restored, 0.07, TRACE, NOW - 1)
    assert_same([restored], renderer)
    assert ours(renderer, [restored], True).count("trace_id") == 1


# ---- rendered lines kept between scrapes ---------------------------------------------------------------


def _fresh(states: list[State], openmetrics: bool) -> str:
    return ours(Renderer("boilerhouse_", TTL), states, openmetrics)


def assert_scrape(renderer: Renderer, states: list[State]) -> None:
    """What ``renderer`` (which kept series' lines from earlier scrapes) writes now is what a fresh
    renderer and prometheus_client write on the same state."""
    merged = State.merge([s.copy() for s in states]) if len(states) > 1 else states[0]
    for openmetrics in (False, True):
        mine = ours(renderer, states, openmetrics)
        assert mine == _fresh(states, openmetrics)
        assert mine == library(merged, openmetrics)


#: The same number written otherwise: an equal float for an int, the other zero for a zero.
def _retyped(v: Any, zeros: bool = True) -> Any:
    if v == 0 and zeros:
        return -0.0 if math.copysign(1.0, v) > 0 else 0
    return float(v) if type(v) is int else v


@st.composite
def changes(draw: Any, state: State, zeros: bool = True) -> None:
    """Change, remove or add a few series of ``state`` in place (as the fold, a restore or a test would);
    or nothing. ``zeros``: also flip zeros to ``-0.0`` and back (not for partitions: merged, a -0.0 from
    one partition is written as ``State.merge`` makes it, which no fold state has; see
    test_series_lines_kept_between_scrapes_tell_the_zeros_apart)."""
    for _ in range(draw(st.integers(0, 4))):
        m = draw(st.sampled_from([m for m in METRICS if m.stateful]))
        kind = draw(st.sampled_from(["change", "retype", "remove", "add", "exemplar", "liveness"]))
        if m.snapshot:
            table: dict[Any, Any] = state.gauges[m.name]
        elif m.kind is Kind.HISTOGRAM:
            table = state.hists[m.name]
        else:
            table = state.counters[m.name]
        keys = sorted(table)
        if kind == "liveness":
            src = draw(st.sampled_from(sorted(state.sources)))
            state.sources[src].last_seen = draw(st.sampled_from([NOW - 1.0, NOW - 31.0]))
            continue
        if kind == "add" or not keys:
            key = draw(st.tuples(*[label_values] * len(m.labels)))
            if m.snapshot:
                table[key] = {draw(st.sampled_from(sorted(SOURCES))): draw(numbers)}
            elif m.kind is Kind.HISTOGRAM:
                table[key] = [
                    *draw(
                        st.lists(counts, min_size=len(m.buckets or ()) + 1, max_size=len(m.buckets or ()) + 1)
                    ),
                    draw(numbers),
                ]
            else:
                table[key] = draw(numbers)
            continue
        key = draw(st.sampled_from(keys))
        if kind == "remove":
            del table[key]
            if m.kind is Kind.HISTOGRAM:
                state.exemplars[m.name].pop(key, None)
        elif m.snapshot:
            per_src = table[key]
            src = draw(st.sampled_from(sorted(SOURCES)))
            old = per_src.get(src, 0)
            per_src[src] = _retyped(old, zeros) if kind == "retype" else draw(numbers)
        elif m.kind is Kind.HISTOGRAM:
            h = table[key]
            if kind == "exemplar":
                rows = state.exemplars[m.name]
                if key in rows and draw(st.booleans()):
                    row = rows[key]
                    j = draw(st.integers(0, len(row) - 1))
                    e = row[j]
                    equal = None if e is None else (e[0], e[1], e[2])  # an equal tuple, another object
                    row[j] = draw(st.sampled_from([None, e, equal]) | exemplars)
                else:
                    rows[key] = draw(exemplar_rows(len(h) - 1))
            elif kind == "retype":  # equal counts as floats (written alike), the sum's zero flipped
                h[:-1] = [float(c) for c in h[:-1]]
                h[-1] = _retyped(h[-1], zeros)
            else:
                j = draw(st.integers(0, len(h) - 2))
                h[j] += 1
                h[-1] = draw(numbers)
        else:
            table[key] = _retyped(table[key], zeros) if kind == "retype" else draw(numbers)


@settings(max_examples=60, deadline=None)
@given(states(), st.data())
def test_series_lines_kept_between_scrapes_follow_every_change(state: State, data: Any) -> None:
    """A sequence of scrapes by one renderer, some series changed, retyped (equal numbers, other zeros),
    removed or added, exemplars replaced (also by equal tuples) in between: every scrape is what a fresh
    renderer and the library write."""
    renderer = Renderer("boilerhouse_", TTL)
    assert_scrape(renderer, [state])
    for _ in range(4):
        data.draw(changes(state))
        assert_scrape(renderer, [state])
    restored = state.copy()  # equal keys and numbers, other objects
    data.draw(changes(restored))
    assert_scrape(renderer, [restored])


@settings(max_examples=20, deadline=None)
@given(states(), states(), st.data())
def test_series_lines_kept_between_scrapes_of_partitions(a: State, b: State, data: Any) -> None:
    b.sources = {}
    for per_labels in b.gauges.values():
        for per_src in per_labels.values():
            per_src.clear()
    renderer = Renderer("boilerhouse_", TTL)
    assert_scrape(renderer, [a, b])
    for _ in range(3):
        data.draw(changes(a, zeros=False))
        assert_scrape(renderer, [a, b])


def test_series_lines_are_reused_while_unchanged_and_bounded_by_the_series() -> None:
    """A scrape with nothing changed writes no series anew; a changed series is written anew, a removed
    one forgotten: the kept lines never outnumber the series."""
    state = folded()
    _request(state, 0.07, TRACE, NOW - 3)
    renderer = Renderer("boilerhouse_", TTL)
    assert_scrape(renderer, [state])
    name = "http_request_duration_seconds"
    order = renderer._orders[name]
    kept, with_rows = list(order.rendered[name]), list(order.rendered[name + "#exemplars"])
    assert all(e is not None for e in kept) and len(kept) == len(state.hists[name])
    x = order.keys.index(("GET", "/x", "200"))
    assert [n for n, e in enumerate(with_rows) if e is not None] == [x], "OpenMetrics: kept apart"
    assert_scrape(renderer, [state])
    assert all(a is b for a, b in zip(kept, order.rendered[name], strict=True)), "nothing changed"
    assert all(a is b for a, b in zip(with_rows, order.rendered[name + "#exemplars"], strict=True))
    _request(state, 0.07, OTHER, NOW - 2)  # that series: new count, new exemplar
    assert_scrape(renderer, [state])
    changed = [n for n, (a, b) in enumerate(zip(kept, order.rendered[name], strict=True)) if a is not b]
    assert changed == [x]
    state.exemplars[name][("GET", "/x", "200")][3] = (OTHER, 0.07, NOW - 2)  # an equal exemplar, new tuple
    assert_scrape(renderer, [state])
    table = state.hists[name]
    for key in list(table)[:3]:
        del table[key]
    state.exemplars[name].clear()
    assert_scrape(renderer, [state])
    assert renderer._orders[name].keys == list(table)
    assert all(len(entries) == len(table) for entries in renderer._orders[name].rendered.values())


def test_series_lines_kept_between_scrapes_tell_the_zeros_apart() -> None:
    """Equal numbers are written alike, but for the zeros: ``0.0`` and ``-0.0`` (and int 0) compare
    equal and are written differently, so a kept line is reused for a zero only if it is the same
    object."""
    renderer = Renderer("boilerhouse_", TTL)
    state = State()
    state.sources = {"live:h:1:00": Source("api", "1.0", NOW - 1.0)}
    hist = "container_acquire_duration_seconds"
    width = len(next(m for m in METRICS if m.name == hist).buckets or ()) + 2
    state.hists[hist][("p", "success")] = [0] * (width - 1) + [0.0]
    state.hists[hist][("q", "success")] = [0] * width
    state.counters["affinity_hits_total"][("p",)] = 0.0
    state.gauges["pool_size"][("p", "echo")] = {"live:h:1:00": 0.0}
    assert_scrape(renderer, [state])
    state.hists[hist][("p", "success")][-1] = -0.0
    state.hists[hist][("q", "success")][-1] = -0.0
    state.counters["affinity_hits_total"][("p",)] = -0.0
    state.gauges["pool_size"][("p", "echo")]["live:h:1:00"] = -0.0
    assert_scrape(renderer, [state])
    text = ours(renderer, [state], False)
    assert text.count(" -0.0\n") >= 3, text
    for h in state.hists[hist].values():
        h[-1] = 0
    state.counters["affinity_hits_total"][("p",)] = 0
    assert_scrape(renderer, [state])
    # Float counts: equal to the ints, but a -0.0 count is written as itself. (The library adds the
    # counts up from 0.0 and writes 0.0 there: such a state is no fold's, so only a fresh renderer is
    # the reference here.)
    state.hists[hist][("p", "success")][:-1] = [-0.0] + [0.0] * (width - 2)
    for openmetrics in (False, True):
        assert ours(renderer, [state], openmetrics) == _fresh([state], openmetrics)
    assert "-0.0" in ours(renderer, [state], False)
