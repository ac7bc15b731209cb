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
from services.aggregator.fold import HANDLERS, Source, State
from services.aggregator.metrics import METRICS, Kind, PartitionReading
from services.aggregator.render import Renderer, go_float

NOW = 1_767_225_600.0
TTL = 30.0
PARTITIONS = {0: PartitionReading(lag=3, pending=1, checkpoint_age_s=0.25), 1: PartitionReading(lag=0)}


def library(state: State, openmetrics: bool, prefix: str = "boilerhouse_") -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(lambda: state, prefix, TTL, lambda: PARTITIONS, clock=lambda: NOW))
    render = generate_openmetrics if openmetrics else generate_latest
    return bytes(render(registry)).decode()


def ours(renderer: Renderer, states: list[State], openmetrics: bool) -> str:
    cap = renderer.capture(states, 1, NOW)
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
