"""The benchmark command runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_quick_run_produces_every_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for heading in (
        "## Issue 12's targets",
        "## Scrape: /metrics written from the fold state",
        "### GET /metrics of an aggregator process",
        "### Snapshot gauges from many producer processes",
        "## Freshness",
        "## Hot path",
        "## End-to-end CPU per event",
        "## Aggregator throughput",
        "## Where the aggregator's time goes",
        "## Analysis",
        "## Replay and rebuild",
        "## Exemplars",
        "## Redis Cluster and shards",
    ):
        assert heading in out, heading
    assert "| `Counter.labels(a, b).inc()` |" in out and "| **producer CPU per event**" in out
    assert "| **ours** (both) |" in out and "| naive |" in out and "| batching alone |" in out
    assert "| in-process prometheus_client |" in out
    assert "apply_batch" in out, "the profile names the fold"
    assert "| traced(emit), trace id in the context |" in out and "| decode + validate + fold |" in out


def test_performance_md_is_a_benchmark_report() -> None:
    text = (ROOT / "docs" / "performance.md").read_text()
    assert text.startswith("# Performance") and "Written by `make bench`" in text
    assert "| **ours** (both) |" in text and "| naive |" in text and "Measured 20" in text
    assert "## Issue 12's targets" in text
    assert "## Exemplars" in text and "| traced(emit), trace id in the context |" in text


def test_a_new_report_keeps_the_history() -> None:
    from benchmarks.__main__ import (
        HISTORY_BEGIN,
        HISTORY_END,
        HISTORY_HEADER,
        history_rows,
    )

    row = "| 2026-01-01 00:00 | 1.00 | 0.040x | 0.90 s | 20.0 ms | 0.30x / 0.15x | 0.70x | 1.10x | 500,000 | 5.6x |"
    previous = "\n".join(
        [
            "# Performance",
            HISTORY_BEGIN,
            *HISTORY_HEADER,
            row,
            HISTORY_END,
            "## Analysis",
            "",
        ]
    )
    assert history_rows(previous) == [row]
    assert history_rows("# Performance\n") == []
