"""One million distinct label values: series stay at the cap, the rest is counted as overflow, memory bounded."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from shared.events.codec import ENTRY_FIELD, encode_batch
from tests.reliability.support import PREFIX, STREAM, Aggregator, total, vm_hwm_kib, wait_caught_up

logger = logging.getLogger(__name__)

DISTINCT = 1_000_000
PER_ENTRY = 5_000
CAP = 1_000
#: Peak RSS the aggregator must stay under while folding a million label values (KiB).
RSS_LIMIT_KIB = 256 * 1024


def _series(samples: dict, name: str) -> set[frozenset]:
    return {labels for n, labels in samples if n == name}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_million_pool_ids_stay_at_the_series_cap(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    agg = Aggregator(tmp_path, redis_url, env={"BOILERHOUSE_SERIES_CAP": str(CAP)}).start()
    assert agg.proc is not None
    try:
        baseline_kib = vm_hwm_kib(agg.proc.pid)
        src = "cardinality:h:1:00"
        seq = 0
        started = time.monotonic()
        pipe = redis_client.pipeline(transaction=False)
        for start in range(0, DISTINCT, PER_ENTRY):
            events = []
            for n in range(start, start + PER_ENTRY):
                seq += 1
                events.append(
                    {
                        "type": "container.acquired",
                        "seq": seq,
                        "ts": 1_790_000_000.0 + seq / 1e6,
                        "pool_id": f"pool-{n}",
                        "status": "success",
                        "duration_s": 0.3,
                        "affinity": "hit",
                    }
                )
            pipe.xadd(STREAM, {ENTRY_FIELD: encode_batch(src, events)})
            if len(pipe) == 20:
                pipe.execute()
        pipe.execute()
        written_s = time.monotonic() - started
        wait_caught_up(redis_client, "aggregator", timeout=240)
        folded_s = time.monotonic() - started
        samples = agg.samples()
        peak_kib = vm_hwm_kib(agg.proc.pid)
    finally:
        agg.stop()
    logger.warning(
        "1M distinct pool_id: written in %.1fs, folded by %.1fs; aggregator VmHWM %d KiB "
        "(%d KiB after start-up)",
        written_s,
        folded_s,
        peak_kib,
        baseline_kib,
    )
    print(
        f"\n1M distinct pool_id: aggregator peak RSS (VmHWM) {peak_kib} KiB, {baseline_kib} KiB after start-up; "
        f"written {written_s:.1f}s, folded by {folded_s:.1f}s"
    )

    hist = PREFIX + "container_acquire_duration_seconds_count"
    hits = PREFIX + "affinity_hits_total"
    overflow = {"pool_id": "__overflow__", "status": "__overflow__"}  # every label of the overflow series
    assert len(_series(samples, hist)) == CAP + 1  # CAP real label sets and the overflow series
    assert len(_series(samples, hits)) == CAP + 1
    assert total(samples, hist) == DISTINCT  # no observation lost to the cap
    assert total(samples, hist, **overflow) == DISTINCT - CAP
    assert total(samples, hits) == DISTINCT
    assert total(samples, hits, pool_id="__overflow__") == DISTINCT - CAP
    over = PREFIX + "aggregator_series_overflow_total"
    assert total(samples, over, metric="container_acquire_duration_seconds") == DISTINCT - CAP
    assert total(samples, over, metric="affinity_hits_total") == DISTINCT - CAP
    assert total(samples, PREFIX + "events_lost_total") == 0
    assert peak_kib < RSS_LIMIT_KIB, f"aggregator peak RSS {peak_kib} KiB"
