"""The checkpoint format as plain data: incremental writes rebuild the state, the mapping check, damage."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.aggregator import checkpoint
from services.aggregator.fold import Limits, State, TrimWindow, apply_batch
from shared.events.codec import Batch

T0 = 1_796_000_000.0


def health(seq: int, pool: str = "p") -> dict[str, Any]:
    return {"type": "container.health_check_failed", "seq": seq, "ts": T0, "pool_id": pool}


def apply_writes(fields: dict[bytes, bytes], write: checkpoint.Write) -> None:
    """What Redis does with a :class:`checkpoint.Write` on a hash."""
    if write.complete:
        fields.clear()
    fields.update(write.fields)
    for name in write.deleted:
        fields.pop(name, None)


def test_incremental_writes_add_up_to_the_state() -> None:
    state, trim, fields = State(), TrimWindow(), {}
    apply_writes(fields, checkpoint.complete(state, trim))
    started = {"type": "source.started", "seq": 1, "ts": T0, "service": "api", "version": "1", "host": "h",
               "pid": 1, "start_time_s": 1.0}  # fmt: skip
    apply_batch(state, Batch("api:h:1:00", 1, [started, health(2)]), T0)
    apply_writes(fields, checkpoint.changes(state, trim, *state.take_dirty()))
    apply_batch(
        state, Batch("api:h:1:00", 1, [health(3, "q"), {"type": "source.stopped", "seq": 4, "ts": T0}]), T0
    )
    write = checkpoint.changes(state, trim, *state.take_dirty())
    assert write.deleted, "the stopped source's snapshot values are deleted fields"
    apply_writes(fields, write)
    restored = checkpoint.load(fields, Limits())
    assert restored.state.counters == state.counters

    def values(gauges: dict[str, Any]) -> dict[str, Any]:  # a series with no source left shows nothing
        return {name: {k: v for k, v in series.items() if v} for name, series in gauges.items()}

    assert values(restored.state.gauges) == values(state.gauges)
    assert restored.state.sources == state.sources
    assert len(fields) == checkpoint.field_count(state)


def test_a_hash_that_lost_fields_is_refused_not_restored_short() -> None:
    state, fields = State(), {}
    apply_batch(state, Batch("api:h:1:00", 1, [health(1), health(2, "q")]), T0)
    apply_writes(fields, checkpoint.complete(state, TrimWindow()))
    lost = next(k for k in fields if k.startswith(b"c"))
    del fields[lost]
    with pytest.raises(checkpoint.CheckpointError, match="fields"):
        checkpoint.load(fields, Limits())


def test_new_metrics_need_no_rebuild_changed_buckets_do() -> None:
    state, fields = State(), {}
    apply_batch(state, Batch("api:h:1:00", 1, [health(1)]), T0)
    apply_writes(fields, checkpoint.complete(state, TrimWindow()))
    mapping = msgspec.msgpack.decode(fields[checkpoint.MAPPING])
    # Written before a metric was added: it loads, the new metric starts empty.
    fields[checkpoint.MAPPING] = msgspec.msgpack.encode(
        [row for row in mapping if row[0] != "events_lost_total"]
    )
    assert checkpoint.load(fields, Limits()).state.counters["container_health_check_failures_total"] == {
        ("p",): 1
    }
    # Written with other buckets: its histogram counts mean something else now.
    fields[checkpoint.MAPPING] = msgspec.msgpack.encode(
        [[n, k, [1.0]] if n == "http_request_duration_seconds" else [n, k, b] for n, k, b in mapping]
    )
    with pytest.raises(checkpoint.CheckpointError, match="http_request_duration_seconds"):
        checkpoint.load(fields, Limits())
