"""`boilerhouse up --demo`: a newcomer sees every seed metric move within a minute, then Ctrl-C stops it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from services.aggregator.metrics import METRICS, Group
from services.embedded import free_port
from tests.support.expo import Samples, parse
from tests.support.procs import boilerhouse, wait_http

P = "boilerhouse_"
SEED = [m for m in METRICS if m.group is not Group.PIPELINE]
#: How long a newcomer waits, from the moment `up` answers, for every seed metric to move.
WITHIN_S = 60.0


def not_moving(samples: Samples) -> list[str]:
    """Seed families without a series yet; for counters and histograms, without a non-zero one."""
    out = []
    for m in SEED:
        name = P + m.name + ("_count" if m.kind == "histogram" else "")
        values = [v for (n, _), v in samples.items() if n == name]
        if not values or (m.kind != "gauge" and not any(values)):
            out.append(m.name)
    return out


def test_up_demo_moves_every_seed_metric_within_a_minute(tmp_path: Path, redis_url: str) -> None:
    api_port, metrics_port = free_port(), free_port()
    env = {"BOILERHOUSE_REDIS_URL": redis_url, "BOILERHOUSE_HEARTBEAT_INTERVAL_S": "1"}
    up = boilerhouse(
        [
            "up",
            "--demo",
            "--api-port",
            str(api_port),
            "--metrics-port",
            str(metrics_port),
            "--data-dir",
            str(tmp_path / "bh"),
        ],
        tmp_path,
        "up",
        env,
    )
    try:
        wait_http(f"http://127.0.0.1:{api_port}/healthz", timeout=30, proc=up)
        started = time.monotonic()
        missing: list[str] = [m.name for m in SEED]
        statuses: set[str] = set()
        while missing or not {"2", "4", "5"} <= statuses:
            assert up.popen.poll() is None, up.output()[-3000:]
            if time.monotonic() - started > WITHIN_S:
                pytest.fail(
                    f"after {WITHIN_S:.0f} s these seed metrics had not moved: {missing}; "
                    f"HTTP status classes seen: {sorted(statuses)}\n{up.output()[-3000:]}"
                )
            time.sleep(2)
            samples = parse(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)
            missing = not_moving(samples)
            statuses = {
                dict(k)["status"][0]
                for (n, k), v in samples.items()
                if n == P + "http_requests_total" and v > 0
            }
        pools = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/pools", timeout=10).json()["pools"]
        assert {p["pool_id"] for p in pools} >= {"demo-web", "demo-notes", "demo-journal", "demo-flaky"}
        assert "demo: pools demo-*" in " ".join(up.output().split())
    finally:
        code = up.stop(sig=signal.SIGINT, timeout=30) if up.popen.poll() is None else up.popen.returncode
    assert code == 0, up.output()[-3000:]
    assert "Traceback" not in up.output(), up.output()[-5000:]
