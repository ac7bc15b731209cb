"""Time, duration and filter arguments: every accepted form, and clear errors for the rest."""

from __future__ import annotations

import pytest

from services.aggregator.filters import EventFilter
from services.aggregator.times import (
    MAX_SEQ,
    ArgumentError,
    TimePoint,
    format_ts,
    parse_duration_ms,
    parse_time,
)

NOW = 1764201720.5  # 2025-11-27T00:02:00.500Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", TimePoint(1764201720500)),
        ("-15m", TimePoint(1764201720500 - 900_000)),
        ("now-2h", TimePoint(1764201720500 - 7_200_000)),
        ("now - 1h30m", TimePoint(1764201720500 - 5_400_000)),
        ("-500ms", TimePoint(1764201720000)),
        ("1764201600", TimePoint(1764201600000)),
        ("1764201600.25", TimePoint(1764201600250)),
        ("1764201600000-3", TimePoint(1764201600000, 3)),
        ("2025-11-27T00:00:45Z", TimePoint(1764201645000)),
        ("2025-11-27T01:00:45+01:00", TimePoint(1764201645000)),
        ("2025-11-27 00:00:45.5", TimePoint(1764201645500)),  # no zone: UTC
    ],
)
def test_time_forms(text: str, expected: TimePoint) -> None:
    assert parse_time(text, NOW) == expected


def test_time_bounds_of_a_range() -> None:
    t = parse_time("2025-11-27T00:00:45Z", NOW)
    assert (t.start_id(), t.end_id()) == ((1764201645000, 0), (1764201645000, MAX_SEQ))
    sid = parse_time("1764201645000-2", NOW)
    assert (sid.start_id(), sid.end_id()) == ((1764201645000, 2), (1764201645000, 2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday", "cannot parse time 'yesterday': expected RFC 3339"),
        ("15m", "cannot parse time '15m'"),
        ("1764201600000", "looks like milliseconds; give seconds or a stream id (1764201600000-0)"),
        ("2025-13-01T00:00:00Z", "cannot parse time"),
        ("-15x", "cannot parse time '-15x'"),
    ],
)
def test_bad_times(text: str, message: str) -> None:
    with pytest.raises(ArgumentError, match=None) as err:
        parse_time(text, NOW)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("15s", 15_000), ("1m30s", 90_000), ("500ms", 500), ("2", 2000), ("1h", 3_600_000), ("0.5s", 500)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "message"),
    [("0s", "must be positive"), ("fast", "cannot parse duration"), ("-5s", "cannot parse duration")],
)
def test_bad_durations(text: str, message: str) -> None:
    with pytest.raises(ArgumentError) as err:
        parse_duration_ms(text)
    assert message in str(err.value)


def test_format_ts() -> None:
    assert format_ts(1764201644.99) == "2025-11-27T00:00:44.990Z"


def test_filter_matches() -> None:
    flt = EventFilter("container.*", pool="web", source="host-a")
    acquired = {"type": "container.acquired", "pool_id": "web"}
    assert flt.matches("api:host-a:1:x", acquired)
    assert not flt.matches("api:host-b:1:x", acquired)
    assert not flt.matches("api:host-a:1:x", {**acquired, "pool_id": "db"})
    assert not flt.matches("api:host-a:1:x", {"type": "pool.state", "pool_id": "web"})
    assert EventFilter(workload="echo").matches("s", {"type": "sync.state", "workload_id": "echo"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"type_pattern": "contaner.*"},
            "--type 'contaner.*' matches no event type; known types: source.started",
        ),
        ({"pool": "bad id!"}, "--pool 'bad id!' is not a valid identifier"),
        (
            {"type_pattern": "http.*", "pool": "web"},
            "--pool given, but none of the selected event types has a pool_id",
        ),
        ({"source": ""}, "--source must not be empty"),
    ],
)
def test_unknown_filters(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ArgumentError) as err:
        EventFilter(**kwargs)
    assert message in str(err.value)
