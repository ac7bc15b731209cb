"""Hostile clocks: producers two days off, an aggregator whose clock steps and drifts. Every number stays true.

Liveness, forgetting, staleness and retention run on Redis' clock (the entry ids), which the aggregator
follows on its own monotonic clock; a producer's ``ts`` drives nothing but the clock-skew count. The
producers are real processes whose publisher clock is shifted (everything a producer's clock puts on
the wire is ``ts``); the aggregator's wall clock is stepped in-process. (libfaketime was tried for the
producers: it also shifts the absolute deadlines of timed waits, so the flusher thread slept for days.)
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared.events.publisher import Publisher
from tests.aggregator.harness import aggregator
from tests.reliability.support import PREFIX, REPO, Aggregator, by_label, total
from tests.support.procs import Proc
from tests.support.wait import wait_for, wait_until

DAY = 86_400

#: A producer whose clock is ``skew`` seconds off: reports pool "p" with its size, sends ``n`` health-check
#: failures, heartbeats every 0.3 s, and stops cleanly once the file ``stop`` appears.
PRODUCER = textwrap.dedent(
    """
    import sys, time, pathlib
    from shared.events import publisher
    url, name, size, n, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
    skew = float(sys.argv[6])
    publisher._time = lambda: time.time() + skew  # this producer's clock
    pub = publisher.Publisher(url, name, heartbeat_interval_s=0.3, flush_interval_s=0.01)
    def snapshot():
        pub.emit("pool.state", {"pool_id": "p", "workload_id": "w", "size": size, "available": size,
                                "borrowed": 0, "pending": 0, "min_size": 0, "max_size": 9,
                                "target_size": size, "affinity_reservations": 0})
    pub.add_snapshot(snapshot)
    snapshot()
    for _ in range(n):
        pub.emit("container.health_check_failed", {"pool_id": "p"})
        time.sleep(0.002)
    while not stop.exists():
        time.sleep(0.05)
    pub.close()
    """
)


@pytest.mark.timeout(120)
def test_producers_two_days_off_are_counted_exactly_and_stay_live(redis_url: str, tmp_path: Path) -> None:
    """Before: one producer two days ahead made forgetting (here after 20 s) drop every live source, whose
    next batches then counted their whole sequence prefix as lost, and the staleness gauge read 0."""
    stop = tmp_path / "stop"
    agg = Aggregator(
        tmp_path, redis_url, env={"BOILERHOUSE_SOURCE_FORGET_S": "20", "BOILERHOUSE_SOURCE_TTL_S": "5"}
    )
    agg.start()
    producers = []
    try:
        for name, skew, size in (("ahead", 2 * DAY, 1), ("behind", -2 * DAY, 2), ("right", 0, 4)):
            argv = [sys.executable, "-c", PRODUCER, redis_url, name, str(size), "600", str(stop), str(skew)]
            producers.append(Proc(argv, tmp_path, name, {"PYTHONPATH": str(REPO)}))
        samples = wait_for(
            agg.samples,
            "every producer's events folded, all three live",
            within_s=60,
            accept=lambda s: (
                total(s, PREFIX + "container_health_check_failures_total") == 1800
                and total(s, PREFIX + "aggregator_live_sources") == 3
            ),
        )
        time.sleep(2)  # heartbeats keep arriving: nothing may be forgotten or counted lost meanwhile
        samples = agg.samples()
        assert total(samples, PREFIX + "pool_size") == 1 + 2 + 4
        assert total(samples, PREFIX + "aggregator_live_sources") == 3
        assert total(samples, PREFIX + "events_lost_total") == 0
        skew = by_label(samples, PREFIX + "aggregator_clock_skew_events_total", "direction")
        assert skew["ahead"] > 600 and skew["behind"] > 600, skew  # every event of the two skewed ones
        age = total(samples, PREFIX + "aggregator_newest_event_age_seconds")
        assert 0 <= age < 5, age
        stop.touch()
        for p in producers:
            assert p.popen.wait(timeout=30) == 0, p.output()
        samples = wait_for(
            agg.samples,
            "all three stopped cleanly",
            accept=lambda s: total(s, PREFIX + "aggregator_events_applied_total", type="source.stopped") == 3,
        )
        assert total(samples, PREFIX + "container_health_check_failures_total") == 1800
        assert total(samples, PREFIX + "aggregator_vanished_sources") == 0
    finally:
        stop.touch()
        for p in producers:
            if p.popen.poll() is None:
                p.stop()
        agg.stop()


@pytest.fixture
def stepped_wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """``time.time`` of this process (the in-process aggregator's) plus an offset the test changes, and a
    drift rate (seconds per second). The publisher binds its clock at import and stays on the real one."""
    real_time, real_mono = time.time, time.monotonic
    offset = [0.0, 0.0]  # [step, drift rate]
    started = real_mono()
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0] + offset[1] * (real_mono() - started))
    return offset


@pytest.mark.timeout(120)
def test_the_aggregators_clock_stepping_and_drifting_changes_nothing(
    redis_url: str, stepped_wall_clock: list[float]
) -> None:
    """Before: the exposition judged liveness by the wall clock (two days ahead: every source dead),
    retention trimmed by it (a day's retention and a two-day step: the whole stream), and checkpoint
    cadence ran on it (a step back: no checkpoint for two days)."""
    pub: Publisher = Publisher(redis_url, "clocks", heartbeat_interval_s=0.2, flush_interval_s=0.01)

    def snapshot() -> None:
        pub.emit("pool.state", {"pool_id": "p", "workload_id": "w", "size": 3, "available": 3, "borrowed": 0,
                                "pending": 0, "min_size": 0, "max_size": 9, "target_size": 3,
                                "affinity_reservations": 0})  # fmt: skip

    pub.add_snapshot(snapshot)
    snapshot()
    try:
        with aggregator(redis_url, source_ttl_s=3.0, retention_s=DAY, checkpoint_interval_s=0.2) as agg:

            def steady(what: str) -> None:
                s = wait_for(agg.samples, what, within_s=20,
                             accept=lambda s: total(s, PREFIX + "pool_size") == 3
                             and total(s, PREFIX + "aggregator_live_sources") == 1)  # fmt: skip
                age = total(s, PREFIX + "aggregator_newest_event_age_seconds")
                assert 0 <= age < 3, (what, age)
                assert total(s, PREFIX + "aggregator_checkpoint_age_seconds") < 5, what

            steady("live before any step")
            length = len(agg.app.state.consumer.client.xrange(agg.app.state.consumer.parts[0].stream))
            stepped_wall_clock[0] = 2 * DAY  # an NTP step forward
            time.sleep(3.5)  # past the TTL and a maintenance round
            steady("live two days ahead")
            agg.app.state.consumer.maintain(force=True)  # a retention trim now, by Redis' clock
            stream = agg.app.state.consumer.parts[0].stream
            assert len(agg.app.state.consumer.client.xrange(stream)) >= length, "trimmed by the host's clock"
            stepped_wall_clock[0] = -2 * DAY  # and back, two days behind
            time.sleep(3.5)
            steady("live two days behind")
            stepped_wall_clock[0], stepped_wall_clock[1] = 0.0, 60.0  # a clock drifting a minute a second
            time.sleep(3.5)
            steady("live on a drifting clock")
            wait_until(
                lambda: (agg.value("aggregator_checkpoints_total", partition="0") or 0) > 0, "checkpoints"
            )
    finally:
        pub.close()
