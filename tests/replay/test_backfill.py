"""Backfill round trip: replay a window as OpenMetrics, ``promtool tsdb create-blocks-from openmetrics``,
a real ``prometheus`` on the blocks, and range queries that match the fold at every step."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.aggregator.reader import StreamReader
from services.aggregator.replay import Replayer
from services.aggregator.times import MAX_SEQ
from services.embedded import free_port
from tests.support.procs import Proc, wait_http

from .conftest import Run
from .history import BASE_S

STEP_S = 15
START_S, END_S = BASE_S, BASE_S + 120
STEPS = list(range(START_S, END_S + 1, STEP_S))

Series = dict[frozenset[tuple[str, str]], dict[int, float]]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run ./scripts/install-system-deps.sh (make test does)")
    return path


@pytest.fixture
def backfilled(history: int, run: Run, tmp_path: Path) -> Path:
    """The window written as OpenMetrics and turned into TSDB blocks by the real promtool."""
    om = tmp_path / "window.om"
    code, out, err = run(
        "replay",
        "--from",
        "2025-11-27T00:00:00Z",
        "--to",
        "2025-11-27T00:02:00Z",
        "--step",
        f"{STEP_S}s",
        "--openmetrics",
        str(om),
    )
    assert (code, out) == (0, "")
    assert err.startswith("replay: 9 steps 2025-11-27T00:00:00.000Z .. 2025-11-27T00:02:00.000Z every 15s, ")
    text = om.read_text()
    assert text.endswith("\n# EOF\n")
    assert 'boilerhouse_pool_available{pool_id="web",workload_id="echo"} 0.0 1764201630.0\n' in text
    blocks = tmp_path / "data"
    done = subprocess.run(
        [_tool("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(om), str(blocks)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(blocks.glob("*/meta.json")), done.stdout
    return blocks


@pytest.fixture
def prometheus(backfilled: Path, tmp_path: Path) -> Iterator[str]:
    """A real prometheus serving the backfilled blocks; stopped by pid.

    Backfilled data has no staleness markers, so a series that stops (a source went silent or stopped)
    would be reported for the whole default 5 m lookback. With a lookback shorter than the step, an
    instant query sees exactly the samples of that step: what the fold had at that instant.
    """
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\n")
    port = free_port()
    proc = Proc(
        [
            _tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={backfilled}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=3650d",
            f"--query.lookback-delta={STEP_S - 5}s",
        ],
        tmp_path,
        "prometheus",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=60, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def _query_range(url: str, query: str) -> Series:
    r = httpx.get(
        f"{url}/api/v1/query_range",
        params={"query": query, "start": START_S, "end": END_S, "step": STEP_S},
        timeout=30,
    )
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return {
        frozenset(m["metric"].items()): {int(t): float(v) for t, v in m["values"]}
        for m in body["data"]["result"]
    }


def _fold_at_steps(redis_url: str) -> Series:
    """The fold itself at each step: every sample of the exposition, keyed like Prometheus' answer."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    replayer = Replayer(StreamReader(client))
    out: Series = {}
    for t in STEPS:
        replayer.advance_to((t * 1000, MAX_SEQ))
        for fam in replayer.families(float(t)):
            for s in fam.samples:
                out.setdefault(frozenset({**s.labels, "__name__": s.name}.items()), {})[t] = s.value
    client.close()
    return out


def test_range_queries_match_the_fold_at_every_step(prometheus: str, redis_url: str) -> None:
    from_prometheus = _query_range(prometheus, '{__name__=~"boilerhouse_.+"}')
    expected = _fold_at_steps(redis_url)
    assert len(expected) > 100
    assert from_prometheus == expected


def test_the_incident_as_promql(prometheus: str) -> None:
    available = _query_range(prometheus, 'boilerhouse_pool_available{pool_id="web"}')
    assert available == {
        frozenset(
            {"__name__": "boilerhouse_pool_available", "pool_id": "web", "workload_id": "echo"}.items()
        ): dict(zip(STEPS, [3.0, 2.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], strict=True))
    }
    timeouts = _query_range(
        prometheus, 'boilerhouse_container_acquire_duration_seconds_count{status="timeout"}'
    )
    assert list(timeouts.values()) == [
        {
            BASE_S + 45: 1.0,
            BASE_S + 60: 2.0,
            BASE_S + 75: 2.0,
            BASE_S + 90: 2.0,
            BASE_S + 105: 2.0,
            BASE_S + 120: 2.0,
        }
    ]
    # the sync worker's gauge: first heard of at 00:00:01, silent past its 30 s TTL at 00:01:00, back at
    # 00:01:10, stopped at 00:01:30
    running = _query_range(prometheus, "boilerhouse_sync_concurrent_operations")
    assert list(running.values()) == [
        {BASE_S + 15: 1.0, BASE_S + 30: 0.0, BASE_S + 45: 0.0, BASE_S + 75: 0.0}
    ]
