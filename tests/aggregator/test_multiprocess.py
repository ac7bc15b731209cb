"""Real producer processes and a separate ``boilerhouse aggregator`` process: totals add up exactly."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from services.embedded import free_port
from tests.aggregator.harness import wait_for
from tests.support.expo import Samples, value
from tests.support.procs import Proc, boilerhouse, wait_http

ROOT = Path(__file__).resolve().parents[2]
P = "boilerhouse_"
ENV = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def producer(
    tmp_path: Path, redis_url: str, name: str, events: int, pool_size: int, threads: int = 1
) -> Proc:
    return Proc(
        [
            sys.executable,
            "-m",
            "tests.aggregator.producer",
            "--redis-url",
            redis_url,
            "--service",
            name,
            "--events",
            str(events),
            "--pool-size",
            str(pool_size),
            "--threads",
            str(threads),
        ],
        tmp_path,
        name,
        env=ENV,
    )


def pool_size(s: Samples) -> float | None:
    return value(s, f"{P}pool_size", pool_id="shared", workload_id="echo")


def test_three_producers_and_an_aggregator_process(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    agg = boilerhouse(
        [
            "aggregator",
            "--redis-url",
            redis_url,
            "--port",
            str(port),
            "--pidfile",
            str(tmp_path / "aggregator.pidfile"),
        ],
        tmp_path,
        "aggregator",
        env={**ENV, "BOILERHOUSE_SOURCE_TTL_S": "2", "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.2"},
    )
    url = f"http://127.0.0.1:{port}"
    # (service, events, pool size, emitting threads)
    plan = [("prod-a", 3000, 1, 1), ("prod-b", 4000, 2, 3), ("prod-c", 5000, 4, 2)]
    procs: list[Proc] = []
    try:
        wait_http(url + "/readyz", proc=agg)
        assert int((tmp_path / "aggregator.pidfile").read_text()) == agg.pid
        procs = [producer(tmp_path, redis_url, name, n, size, threads) for name, n, size, threads in plan]
        total = sum(n for _, n, _, _ in plan)
        s = wait_for(
            url,
            lambda x: (
                value(
                    x, f"{P}http_requests_total", method="GET", path="/api/v1/pools/{pool_id}", status="200"
                )
                == total
                and pool_size(x) == 1 + 2 + 4
            ),
            timeout=60,
            what="all events of 3 producers",
        )
        for p in procs:
            assert "flushed=True" in p.output(), p.output()

        # ---- counters: exact totals over processes -------------------------------------------------
        assert (
            value(s, f"{P}container_acquire_duration_seconds_count", pool_id="shared", status="success")
            == total
        )
        # Each producer alternates 1.5 s / 0.5 s starting with 1.5 s at i=0, so ceil(n/2) observations > 1 s.
        over_1s = sum((n + 1) // 2 for _, n, _, _ in plan)
        assert (
            value(
                s,
                f"{P}container_acquire_duration_seconds_bucket",
                pool_id="shared",
                status="success",
                le="1.0",
            )
            == total - over_1s
        )
        hits = sum(len(range(0, n, 3)) for _, n, _, _ in plan)
        assert value(s, f"{P}affinity_hits_total", pool_id="shared") == hits
        assert value(s, f"{P}affinity_misses_total", pool_id="shared") == total - hits
        assert value(s, f"{P}aggregator_live_sources") == 3
        assert value(s, f"{P}info", version="mp-test") == 1
        assert value(s, f"{P}aggregator_duplicates_total") is None
        assert not any(n == f"{P}events_lost_total" for n, _ in s)

        # ---- gauges: sum over live sources; a stopped source stops contributing --------------------------
        procs[2].stop(signal.SIGTERM)  # clean shutdown: publishes source.stopped
        assert "closed" in procs[2].output()
        s = wait_for(url, lambda x: pool_size(x) == 1 + 2, timeout=10, what="stopped source removed")
        assert value(s, f"{P}aggregator_live_sources") == 2
        killed_at = time.monotonic()
        procs[1].kill()  # no goodbye: it stops contributing once silent for the TTL (2 s)
        s = wait_for(url, lambda x: pool_size(x) == 1, timeout=15, what="silent source expired")
        assert time.monotonic() - killed_at >= 1.0, "the TTL, not the kill, must remove it"
        assert value(s, f"{P}aggregator_live_sources") == 1
        # Counters never go backwards when producers go away.
        assert (
            value(s, f"{P}http_requests_total", method="GET", path="/api/v1/pools/{pool_id}", status="200")
            == total
        )
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.stop()
        agg.stop()
    assert agg.popen.returncode == 0, agg.output()[-2000:]
