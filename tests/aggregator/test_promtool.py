"""The exposition passes the real ``promtool check metrics`` (Debian's prometheus package)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.aggregator.harness import Producer, aggregator, emit_every_type, publisher, wait_applied


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (make test does)")
    return binary


def check_metrics(exposition: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("prefix", ["boilerhouse_", "acme_"])
def test_promtool_check_metrics_passes_with_every_metric_populated(redis_url: str, prefix: str) -> None:
    pub = publisher(redis_url)
    p = Producer(pub)
    emit_every_type(p)
    try:
        with aggregator(redis_url, metrics_prefix=prefix) as agg:
            assert pub.flush(10)
            wait_applied(agg.url, len(p.events) + 1, prefix=prefix)
            text = httpx.get(agg.url + "/metrics").text
            openmetrics = httpx.get(
                agg.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            ).text
    finally:
        pub.close()
    assert f"{prefix}container_acquire_duration_seconds_bucket" in text
    result = check_metrics(text)
    assert result.returncode == 0, f"promtool exit {result.returncode}:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
    # The OpenMetrics rendering parses with the strict OpenMetrics parser.
    families = {f.name for f in parse_openmetrics(openmetrics)}
    assert f"{prefix}container_acquire_duration_seconds" in families
    assert f"{prefix}http_requests" in families  # OpenMetrics counter family names drop _total


def test_promtool_check_metrics_passes_on_empty_state(redis_url: str) -> None:
    with aggregator(redis_url) as agg:
        text = httpx.get(agg.url + "/metrics").text
    result = check_metrics(text)
    assert result.returncode == 0, f"promtool exit {result.returncode}:\n{result.stdout}{result.stderr}"


def test_promtool_detects_a_lint_problem() -> None:
    """The check is real: promtool flags a counter without _total (exit 3), so a pass above means something"""
    bad = "# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n"
    result = check_metrics(bad)
    assert result.returncode == 3, result
    assert "_total" in result.stdout + result.stderr


def test_exemplars_keep_both_formats_valid(redis_url: str) -> None:
    """With exemplars on every latency histogram: the text format has none and passes promtool; the
    OpenMetrics format carries them on the right bucket lines and parses with the strict parser."""
    traces = {f"{n:032x}" for n in range(1, 8)}
    pub = publisher(redis_url)
    p = Producer(pub)
    emit_every_type(p)
    timed = [
        ("http.request", {"method": "GET", "path": "/healthz", "status": 200}),
        ("container.acquired", {"pool_id": "pool-a", "status": "success", "affinity": "hit"}),
        ("container.released", {"pool_id": "pool-a", "status": "success"}),
        ("container.created", {"pool_id": "pool-a", "workload_id": "echo", "status": "success"}),
        ("container.destroyed", {"pool_id": "pool-a", "status": "success"}),
        ("container.wiped", {"pool_id": "pool-a", "status": "success"}),
        (
            "sync.finished",
            {
                "workload_id": "echo",
                "direction": "upload",
                "mode": "sync",
                "status": "success",
                "bytes": 1,
                "files": 1,
            },
        ),
    ]
    for (type_, fields), trace_id in zip(timed, sorted(traces), strict=True):
        p.emit(type_, duration_s=0.3, trace_id=trace_id, **fields)
    try:
        with aggregator(redis_url) as agg:
            assert pub.flush(10)
            wait_applied(agg.url, len(p.events) + 1)
            text = httpx.get(agg.url + "/metrics").text
            openmetrics = httpx.get(
                agg.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            ).text
    finally:
        pub.close()
    assert "trace_id" not in text and " # {" not in text
    result = check_metrics(text)
    assert result.returncode == 0, f"promtool exit {result.returncode}:\n{result.stdout}{result.stderr}"
    seen = {}
    for family in parse_openmetrics(openmetrics):
        for s in family.samples:
            if s.exemplar is not None:
                assert family.type == "histogram" and s.name.endswith("_bucket")
                assert float(s.labels["le"]) >= s.exemplar.value == 0.3
                seen[s.exemplar.labels["trace_id"]] = family.name
    assert set(seen) == traces, seen
    assert len(set(seen.values())) == len(traces), "one latency histogram per event type"
