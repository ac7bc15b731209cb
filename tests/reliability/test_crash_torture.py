"""Crash torture: an aggregator SIGKILLed at random moments ends with exactly the metrics of one that never crashed.

One producer process writes a seeded workload (every event type, snapshots and a clean source stop)
to a real redis-server. Two ``boilerhouse aggregator`` processes consume the same stream with
different consumer groups: the reference is never interrupted; the other is SIGKILLed at seeded
random moments (during start-up, reads, folds and checkpoints) and restarted each time. At the end
both expositions must be equal sample for sample, except the runtime self-metrics that depend on
the wall clock or the scrape moment (lag, pending, checkpoint age, newest event age, process_*,
python_*). Gauges are comparable because sources never expire (BOILERHOUSE_SOURCE_TTL_S is huge).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import msgpack
import pytest
import redis

from shared.events.streams import checkpoint_key
from tests.reliability.support import (
    PREFIX,
    Aggregator,
    by_label,
    comparable,
    diff,
    producer,
    read_report,
    total,
    wait_caught_up,
    wait_exit,
)
from tests.support.procs import wait_http

SEED = 20261127
EVENTS = 120_000
KILLS = 24


def _checkpoint_saved_at(client: redis.Redis, group: str) -> float:
    raw = client.get(checkpoint_key(0, group))
    return 0.0 if raw is None else float(msgpack.unpackb(raw, raw=False, strict_map_key=False)["saved_at"])


def _ready(agg: Aggregator) -> bool:
    try:
        return httpx.get(agg.url + "/readyz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkilled_aggregator_matches_uninterrupted_run(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    reference = Aggregator(tmp_path, redis_url, "reference", {"BOILERHOUSE_CONSUMER_GROUP": "reference"})
    crashy = Aggregator(
        tmp_path,
        redis_url,
        "crashy",
        {"BOILERHOUSE_CONSUMER_GROUP": "crashy", "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.05"},
    )
    reference.start()
    crashy.start()
    prod, report_path = producer(
        tmp_path,
        redis_url,
        "producer",
        "--events",
        str(EVENTS),
        "--seed",
        str(SEED),
        "--rate",
        "4000",
        "--batch-size",
        "40",
        "--sources",
        "3",
    )
    kills_ready = 0
    checkpoints_between_kills = 0
    last_saved = 0.0
    try:
        for i in range(KILLS):
            if i % 2 == 0 and crashy.proc is not None:
                # Half the kills land in a consumer that is up and folding (however slowly a loaded
                # machine starts it); the others anywhere, start-up included.
                wait_http(crashy.url + "/readyz", timeout=60, proc=crashy.proc)
            time.sleep(rng.uniform(0.05, 1.6))
            kills_ready += _ready(crashy)
            crashy.kill()
            saved = _checkpoint_saved_at(redis_client, "crashy")
            checkpoints_between_kills += saved > last_saved
            last_saved = saved
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0.0, 0.5))  # sometimes let the backlog grow while it is down
            crashy.start(wait=False)
        wait_exit(prod, timeout=120)
        report = read_report(report_path)
        wait_caught_up(redis_client, "reference", timeout=120)
        wait_caught_up(redis_client, "crashy", timeout=120)
        ref, got = reference.samples(), crashy.samples()
    finally:
        crashy.stop()
        reference.stop()

    # The kills really landed while the aggregator was working.
    assert crashy.starts == KILLS + 1
    assert kills_ready >= KILLS // 2, f"only {kills_ready} of {KILLS} kills hit a running consumer"
    assert checkpoints_between_kills >= KILLS // 2, "the consumer rarely got to checkpoint between kills"

    # Nothing lost or doubled: what was emitted is exactly what was folded, per event type.
    assert report["dropped"] == 0 and report["unsent"] == 0
    applied = by_label(got, PREFIX + "aggregator_events_applied_total", "type")
    assert applied == {t: float(n) for t, n in report["emitted"].items()}
    assert total(got, PREFIX + "events_lost_total") == 0
    assert total(got, PREFIX + "aggregator_dead_letters_total") == 0

    # Sample for sample equal to the run that never crashed (runtime self-metrics excluded).
    a, b = comparable(ref), comparable(got)
    assert a == b, diff(a, b)
    # ... and the comparison covered every kind of metric.
    names = {n for n, _ in a}
    for must in (
        "container_acquire_duration_seconds_bucket",
        "sync_bytes_transferred_total",
        "pool_size",
        "sync_queue_length",
        "affinity_reservations",
        "events_dropped_total",
        "info",
        "http_requests_total",
        "aggregator_live_sources",
    ):
        assert PREFIX + must in names, f"{must} missing from the exposition"
    assert total(a, PREFIX + "aggregator_live_sources") == 2  # source 0 stopped cleanly
