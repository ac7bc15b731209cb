"""No metric is defined that nothing produces, and every defined metric is asserted by some test.

The real Boilerhouse once shipped dashboards querying metrics its code never produced. Here every metric
in ``services/aggregator/metrics.py`` must be driven by events that producer code really emits (found by
reading the source: calls of ``emit``-like functions with the event type as first argument), or be
computed by the aggregator itself; and its name must appear in a test's assertions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from services.aggregator.metrics import METRICS, Group, MetricDef
from shared.events.schema import EVENT_TYPES_BY_NAME

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "tests" / "e2e" / "test_every_seed_metric.py"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def python_files(*dirs: str) -> Iterator[Path]:
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def producer_files() -> list[Path]:
    """Code that publishes events: services (the aggregator excluded) and the shared publisher."""
    files = [p for p in python_files("services") if "aggregator" not in p.relative_to(ROOT).parts]
    return [*files, ROOT / "shared" / "events" / "publisher.py"]


def emitted_event_types() -> dict[str, list[str]]:
    """Event type -> where producer code emits it (``file:line``).

    An emission is a call of a function whose name contains ``emit`` with the type as a string literal
    first argument, or a ``(type, ts, fields)`` tuple put straight into the publisher's buffer.
    """
    found: dict[str, list[str]] = {}
    for path in producer_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            first: ast.expr | None = None
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if "emit" in name and node.args:
                    first = node.args[0]
            elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
                first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value in EVENT_TYPES_BY_NAME:
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.setdefault(first.value, []).append(where)
    return found


def string_constants(path: Path) -> set[str]:
    """Every string literal of a module, f-string pieces included."""
    tree = ast.parse(path.read_text(), str(path))
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def names_metric(constant: str, m: MetricDef) -> bool:
    """True if a string literal names the metric: exactly (prefix and histogram suffix optional), or as
    ``boilerhouse_<name>`` inside a longer text (a PromQL query, an exposition line)."""
    bare = constant.removeprefix("boilerhouse_")
    for suffix in HISTOGRAM_SUFFIXES:
        if m.kind == "histogram" and bare.endswith(suffix):
            bare = bare.removesuffix(suffix)
    if bare == m.name:
        return True
    suffix = "(_bucket|_count|_sum)?" if m.kind == "histogram" else ""
    return re.search(rf"boilerhouse_{re.escape(m.name)}{suffix}(?![A-Za-z0-9_])", constant) is not None


def test_every_event_type_is_emitted_by_producer_code() -> None:
    emitted = emitted_event_types()
    missing = sorted(set(EVENT_TYPES_BY_NAME) - set(emitted))
    assert not missing, f"event types in the catalogue that no producer emits: {missing}"


def test_every_metric_is_produced() -> None:
    emitted = emitted_event_types()
    aggregator_code = [
        p for p in python_files("services/aggregator") if p.name not in ("metrics.py", "docs.py")
    ]
    aggregator_strings = set().union(*(string_constants(p) for p in aggregator_code))
    orphans = []
    for m in METRICS:
        if m.events:
            # every event that drives it must really be emitted (a gauge needs its removal events too)
            silent = [e for e in m.events if e not in emitted]
            if silent:
                orphans.append(f"{m.name}: driven by {silent}, which nothing emits")
        elif m.read is None and m.name not in aggregator_strings:
            # Scrape-time metrics carry their read function; bookkeeping counters must be kept by name.
            orphans.append(f"{m.name}: no events, no read function, and the aggregator never counts it")
    assert not orphans, "metrics defined that nothing produces:\n  " + "\n  ".join(orphans)


def test_every_seed_metric_is_asserted_by_the_end_to_end_test() -> None:
    constants = string_constants(E2E)
    seed = [m for m in METRICS if m.group is not Group.PIPELINE]
    unasserted = [m.name for m in seed if not any(names_metric(c, m) for c in constants)]
    assert not unasserted, (
        f"seed metrics the end-to-end test (tests/e2e/test_every_seed_metric.py) never names: {unasserted}"
    )


def test_every_metric_is_exercised_by_some_test() -> None:
    this = Path(__file__).resolve()
    constants: set[str] = set()
    for path in python_files("tests"):
        if path.resolve() != this:
            constants |= string_constants(path)
    unexercised = [m.name for m in METRICS if not any(names_metric(c, m) for c in constants)]
    assert not unexercised, f"metrics no test asserts: {unexercised}"


def test_the_scanner_finds_what_it_should() -> None:
    """The source scan itself: known emission sites are found, and a metric name test is not fooled."""
    emitted = emitted_event_types()
    assert any(w.startswith("services/api/middleware.py") for w in emitted["http.request"])
    assert any(w.startswith("shared/events/publisher.py") for w in emitted["events.dropped"])
    assert any(w.startswith("services/api/containers.py") for w in emitted["container.created"])
    info = next(m for m in METRICS if m.name == "info")
    assert names_metric("boilerhouse_info", info) and names_metric("info", info)
    assert not names_metric("log level info", info) and not names_metric("boilerhouse_information", info)
    hist = next(m for m in METRICS if m.name == "http_request_duration_seconds")
    assert names_metric("http_request_duration_seconds_bucket", hist)
    assert names_metric("rate(boilerhouse_http_request_duration_seconds_bucket[5m])", hist)
