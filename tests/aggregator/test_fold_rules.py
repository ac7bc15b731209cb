"""The fold's rules against hostile clocks and writers, on plain state (no Redis: pure functions).

Liveness and forgetting run on entry time (when Redis accepted an entry), never on a producer's ``ts``;
a sequence jump no source could have made is rejected; a source seen first through ``source.stopped``
is stopped; the source bookkeeping is bounded.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.aggregator.exposition import StateCollector
from services.aggregator.fold import Limits, State, apply_batch
from services.aggregator.ingest import PartitionIngest
from shared.events.codec import Batch, EventDecodeError, decode_batch, encode_batch
from tests.support.expo import Samples, parse, value

T0 = 1_796_000_000.0  # entry time (Redis' clock) of the first entry
DAY = 86_400.0
P = "boilerhouse_"


def health(seq: int, ts: float, pool: str = "p") -> dict[str, Any]:
    return {"type": "container.health_check_failed", "seq": seq, "ts": ts, "pool_id": pool}


def pool_state(seq: int, ts: float, size: int) -> dict[str, Any]:
    return {
        "type": "pool.state", "seq": seq, "ts": ts, "pool_id": "p", "workload_id": "w", "size": size,
        "available": size, "borrowed": 0, "pending": 0, "min_size": 0, "max_size": 9, "target_size": size,
        "affinity_reservations": 0,
    }  # fmt: skip


def render(state: State, now: float, ttl: float = 30.0) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(lambda: state, source_ttl_s=ttl, clock=lambda: now))
    return parse(generate_latest(registry).decode())


def test_liveness_runs_on_entry_time_whatever_the_producers_clocks_say() -> None:
    state = State()
    # Three producers report the same pool; two clocks are two days off, one each way.
    for src, skew in (("ahead:h:1:00", +2 * DAY), ("behind:h:2:00", -2 * DAY), ("right:h:3:00", 0.0)):
        apply_batch(state, Batch(src, 1, [pool_state(1, T0 + skew, 2)]), T0)
    s = render(state, now=T0 + 10)
    assert value(s, P + "pool_size", pool_id="p", workload_id="w") == 6  # all three live
    assert value(s, P + "aggregator_live_sources") == 3
    assert value(s, P + "aggregator_clock_skew_events_total", direction="ahead") == 1
    assert value(s, P + "aggregator_clock_skew_events_total", direction="behind") == 1
    assert value(s, P + "aggregator_newest_event_age_seconds") == 10  # by entry time, never clamped
    # After the TTL (by the aggregator's clock), none is live: the one "two days ahead" included.
    later = render(state, now=T0 + 31)
    assert value(later, P + "pool_size", pool_id="p", workload_id="w") is None
    assert value(later, P + "aggregator_vanished_sources", service="ahead") == 1
    assert value(later, P + "aggregator_vanished_sources", service="right") == 1


def test_a_skewed_source_neither_forgets_nor_fakes_loss_for_the_others() -> None:
    """The bug this replaces: one event two days ahead made forgetting drop every live source, and each
    one's next batch counted its whole sequence prefix as lost."""
    ingest = PartitionIngest(0, State(), forget_after_s=3600)
    sid = [int(T0 * 1000), 0]

    def entry(src: str, events: list[dict[str, Any]]) -> None:
        sid[1] += 1
        ingest.entry((sid[0] + sid[1] * 1000, 0), {b"b": encode_batch(src, events)})

    for seq in range(1, 4):
        entry("steady:h:1:00", [health(seq, T0 + seq)])
    entry("skewed:h:2:00", [health(1, T0 + 2 * DAY)])
    for seq in range(4, 8):
        entry("steady:h:1:00", [health(seq, T0 + seq)])
    s = render(ingest.state, now=T0 + 10)
    assert value(s, P + "container_health_check_failures_total", pool_id="p") == 8
    assert not any(name == P + "events_lost_total" for name, _ in s)
    assert set(ingest.state.sources) == {"steady:h:1:00", "skewed:h:2:00"}
    assert ingest.forgotten == 0


def test_a_sequence_jump_no_source_could_make_is_rejected_and_moves_nothing() -> None:
    state = State()
    src = "api:h:1:00"
    apply_batch(state, Batch(src, 1, [health(1, T0), health(2, T0)]), T0)
    # Anyone who can write to the stream reuses the live src with seq 2**62 ...
    rejected = apply_batch(state, Batch(src, 1, [health(2**62, T0), health(2**62 + 1, T0)]), T0 + 1)
    assert [r[0] for r in rejected] == ["seq_jump", "seq_jump"]
    # ... and the producer's own next events still count: its position did not move.
    assert apply_batch(state, Batch(src, 1, [health(3, T0 + 2)]), T0 + 2) == []
    assert state.counters["container_health_check_failures_total"][("p",)] == 3
    assert ("seq_gap",) not in state.counters["events_lost_total"]
    # A real gap (what a source can send in the time between its entries) is loss, not a jump.
    assert apply_batch(state, Batch(src, 1, [health(1_000_000, T0 + 3)]), T0 + 3) == []
    assert state.counters["events_lost_total"][("seq_gap",)] == 1_000_000 - 4


def test_a_new_sources_gaps_within_one_batch_are_loss_not_jumps() -> None:
    state = State()
    assert apply_batch(state, Batch("new:h:1:00", 1, [health(1, T0), health(5, T0)]), T0) == []
    assert state.counters["events_lost_total"][("seq_gap",)] == 3


def test_an_invalid_event_cannot_move_a_source_past_what_it_could_send() -> None:
    state = State()
    src = "api:h:1:00"
    apply_batch(state, Batch(src, 1, [health(1, T0)]), T0)
    bad = {"type": "container.health_check_failed", "seq": 2**62, "ts": T0}  # no pool_id
    assert [r[0] for r in apply_batch(state, Batch(src, 1, [bad]), T0)] == ["invalid_field"]
    assert state.sources[src].last_seq == 1
    assert apply_batch(state, Batch(src, 1, [health(2, T0)]), T0) == []


def test_a_source_whose_first_event_is_source_stopped_is_stopped() -> None:
    state = State()
    stopped = {"type": "source.stopped", "seq": 1, "ts": T0}
    apply_batch(state, Batch("late:h:1:00", 1, [stopped]), T0)
    s = render(state, now=T0)
    assert value(s, P + "aggregator_live_sources") == 0
    assert state.sources["late:h:1:00"].stopped


def test_sources_past_the_cap_are_forgotten_oldest_first_and_counted() -> None:
    ingest = PartitionIngest(0, State(limits=Limits(max_sources=100)), forget_after_s=DAY)
    for i in range(250):
        ms = int((T0 + i * 0.1) * 1000)
        ingest.entry((ms, 0), {b"b": encode_batch(f"job:h:{i}:00", [health(1, T0)])})
    ingest.entry((int((T0 + 30) * 1000), 0), {b"b": encode_batch("job:h:last:00", [health(1, T0)])})
    state = ingest.state
    assert len(state.sources) <= 100 + 1
    assert "job:h:last:00" in state.sources and "job:h:0:00" not in state.sources
    assert state.counters["aggregator_sources_evicted_total"][()] == 250 + 1 - len(state.sources)
    # Counters are never touched by forgetting.
    assert state.counters["container_health_check_failures_total"][("p",)] == 251


def test_envelope_keys_must_be_strings_and_event_keys_that_are_not_are_ignored() -> None:
    import msgpack

    bad = msgpack.packb({"v": 1, "src": "k:h:1:00", "events": [health(1, T0)], 7: "x"})
    with pytest.raises(EventDecodeError) as err:
        decode_batch(bad)
    assert err.value.reason == "bad_envelope" and "7" in err.value.detail
    event = {**health(1, T0), 9: "ignored"}
    batch = decode_batch(msgpack.packb({"v": 1, "src": "k:h:2:00", "events": [event]}))
    state = State()
    assert apply_batch(state, batch, T0) == []
    assert state.counters["container_health_check_failures_total"][("p",)] == 1
