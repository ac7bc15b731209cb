"""Reading the streams in pages: every page size gives the same entries, forwards and backwards."""

from __future__ import annotations

import pytest
import redis

from services.aggregator.filters import EventFilter
from services.aggregator.reader import StreamReader
from services.aggregator.times import parse_time

from .history import HISTORY


@pytest.mark.parametrize("page", [1, 2, 3, 1000])
def test_pages_of_any_size_read_the_same_entries(history: int, redis_client: redis.Redis, page: int) -> None:
    reader = StreamReader(redis_client, page=page)
    ids = [e.id_str for e in reader.range()]
    assert ids == [f"{1764201600000 + offset * 1000}-0" for offset, _, _ in HISTORY]
    lo, hi = parse_time("2025-11-27T00:00:20Z"), parse_time("1764201675000-0")
    assert [e.id_str for e in reader.range(lo.start_id(), hi.end_id())] == [
        "1764201620000-0",
        "1764201625000-0",
        "1764201630000-0",
        "1764201645000-0",
        "1764201650000-0",
        "1764201655000-0",
        "1764201660000-0",
        "1764201670000-0",
        "1764201675000-0",
    ]
    newest = reader.last_events(4, EventFilter("container.*"))
    assert [(e.id_str, ev["seq"]) for e, ev in newest] == [
        ("1764201655000-0", 16),
        ("1764201660000-0", 17),
        ("1764201675000-0", 19),
        ("1764201700000-0", 21),
    ]
    assert reader.bounds() == ((1764201600000, 0), (1764201700000, 0))
    undecodable = [e for e in reader.range() if e.batch is None]
    assert [(e.id_str, e.error.reason if e.error else None) for e in undecodable] == [
        ("1764201680000-0", "undecodable")
    ]


def test_empty_streams(redis_client: redis.Redis) -> None:
    reader = StreamReader(redis_client, partitions=2)
    assert list(reader.range()) == []
    assert reader.bounds() is None
    assert reader.last_events(5, EventFilter()) == []
