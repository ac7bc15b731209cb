"""W3C Trace Context in the API: traceparent parsing (hostile values too), the trace id carried by the
events of a request, the traceparent response header, and background work left out of the trace."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from shared.events.codec import validate_event
from shared.events.schema import TRACE_ID_PATTERN
from shared.events.trace import (
    TRACE_ID,
    TRACED_TYPES,
    TraceParent,
    current_trace_id,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    traced,
    untraced_context,
)
from tests.api import test_routes
from tests.api.test_routes import API, Api

#: The API of tests/api/test_routes.py (through httpx.ASGITransport), as a fixture of this module too.
api = test_routes.api

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
RESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])\Z")


# ---- parsing ----------------------------------------------------------------------------------------


def test_a_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(VALID) == TraceParent(TRACE, PARENT, 1)
    assert parse_traceparent(VALID.encode()) == TraceParent(TRACE, PARENT, 1)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00") == TraceParent(TRACE, PARENT, 0)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-ff") == TraceParent(TRACE, PARENT, 255)
    assert parse_traceparent(f" \t{VALID}\t ") == TraceParent(TRACE, PARENT, 1), "HTTP optional whitespace"


def test_a_later_version_is_parsed_as_far_as_version_00_reaches() -> None:
    assert parse_traceparent(f"01-{TRACE}-{PARENT}-01") == TraceParent(TRACE, PARENT, 1)
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future-holds") == TraceParent(TRACE, PARENT, 1)
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01x") is None, "anything after must start with -"


HOSTILE = [
    "",
    " ",
    "00",
    VALID[:-1],  # one short
    VALID + "-",  # version 00 is exactly 55 characters
    VALID + "0",
    f"ff-{TRACE}-{PARENT}-01",  # the invalid version
    f"0-{TRACE}-{PARENT}-01",
    f"000-{TRACE}-{PARENT}-01",
    f"0g-{TRACE}-{PARENT}-01",
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{PARENT}-01",  # upper case
    f"00-{TRACE}-{PARENT.upper()}-01",
    f"00-{TRACE}-{PARENT}-0A",
    f"00-{TRACE[:-1]}-{PARENT}-01",
    f"00-{TRACE}0-{PARENT}-01"[:55],
    f"00_{TRACE}_{PARENT}_01",
    f"00-{TRACE}-{PARENT}-1",
    f"00-{TRACE}-{PARENT}-001",
    f"00-{TRACE[:-1]}\u0663-{PARENT}-01",  # a non-ASCII digit
    f"00-{TRACE}-{PARENT}-01\n",
    f"00-{TRACE}-{PARENT}-01\x00",
    f"00-{TRACE}\n-{PARENT}-01",
    "00-" + "z" * 32 + f"-{PARENT}-01",
    f"00-{TRACE}-{PARENT}-01," + VALID,  # two values folded into one header
    "x" * 100_000,
    f"01-{TRACE}-{PARENT}-01" + "-x" * 10_000,
    "\udcff" * 55,
]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v[:60]) for v in HOSTILE])
def test_invalid_traceparents_are_refused(value: str) -> None:
    assert parse_traceparent(value) is None
    assert parse_traceparent(value.encode("utf-8", "surrogateescape")) is None


def test_undecodable_bytes_and_none_are_refused() -> None:
    assert parse_traceparent(None) is None
    assert parse_traceparent(b"\xff" * 55) is None
    assert parse_traceparent(VALID.encode()[:-1] + b"\xe9") is None


def test_new_ids_are_valid_and_random() -> None:
    traces = {new_trace_id() for _ in range(200)}
    spans = {new_span_id() for _ in range(200)}
    assert len(traces) == len(spans) == 200
    assert all(TRACE_ID_PATTERN.match(t) for t in traces)
    assert all(re.fullmatch(r"[0-9a-f]{16}", s) and s != "0" * 16 for s in spans)
    assert format_traceparent(TRACE, PARENT, 0xFF) == f"00-{TRACE}-{PARENT}-01", "only version 00's flag"
    assert parse_traceparent(format_traceparent(TRACE, PARENT, 1)) == TraceParent(TRACE, PARENT, 1)


# ---- traced(emit) ------------------------------------------------------------------------------------


def test_traced_emit_adds_the_context_trace_id_to_timed_events_only() -> None:
    sent: list[tuple[str, dict[str, Any] | None]] = []
    emit = traced(lambda t, f=None: sent.append((t, f)))
    emit("container.wiped", {"pool_id": "p", "status": "success", "duration_s": 0.1})
    token = TRACE_ID.set(TRACE)
    try:
        assert current_trace_id() == TRACE
        emit("container.wiped", {"pool_id": "p", "status": "success", "duration_s": 0.1})
        emit(
            "container.wiped", {"pool_id": "p", "status": "success", "duration_s": 0.1, "trace_id": "1" * 32}
        )
        emit("pool.removed", {"pool_id": "p", "workload_id": "w"})
        emit("source.heartbeat")
        assert untraced_context().run(current_trace_id) is None
        untraced_context().run(
            emit, "container.wiped", {"pool_id": "p", "status": "success", "duration_s": 1}
        )
    finally:
        TRACE_ID.reset(token)
    assert [f.get("trace_id") if f else None for _, f in sent] == [None, TRACE, "1" * 32, None, None, None]
    assert {
        "http.request",
        "container.acquired",
        "container.released",
        "container.created",
        "container.destroyed",
        "container.wiped",
        "sync.finished",
    } == TRACED_TYPES


# ---- the API ------------------------------------------------------------------------------------------


def _response_trace(headers: Any) -> tuple[str, str, str]:
    values = headers.get_list("traceparent")
    assert len(values) == 1, values
    m = RESPONSE.match(values[0])
    assert m is not None, values[0]
    trace_id, span_id, flags = m.groups()
    assert TRACE_ID_PATTERN.match(trace_id) and span_id != "0" * 16
    return trace_id, span_id, flags


def _by_trace(events: list[dict[str, Any]], trace_id: str) -> list[str]:
    return [ev["type"] for ev in events if ev.get("trace_id") == trace_id]


@pytest.mark.anyio
async def test_a_request_continues_the_callers_trace_and_its_events_carry_it(api: Api) -> None:
    await api.create_pool("p1", "plain", min_size=1, max_size=2)
    r = await api.client.post(
        f"{API}/tenants/alice/claim", json={"pool_id": "p1"}, headers={"traceparent": VALID}
    )
    assert r.status_code == 200, r.text
    trace_id, span_id, flags = _response_trace(r.headers)
    assert (trace_id, flags) == (TRACE, "01") and span_id != PARENT, "the caller's trace, a span of our own"
    release = f"00-{'a' * 32}-{PARENT}-00"
    r = await api.client.post(f"{API}/tenants/alice/release", headers={"traceparent": release})
    assert r.status_code == 200 and _response_trace(r.headers)[::2] == ("a" * 32, "00")
    events = api.stream_events()
    assert all(validate_event(ev) is None for ev in events)
    assert sorted(_by_trace(events, TRACE)) == ["container.acquired", "http.request"]
    assert "container.released" in _by_trace(events, "a" * 32)
    assert "http.request" in _by_trace(events, "a" * 32)
    request = next(ev for ev in events if ev["type"] == "http.request" and ev.get("trace_id") == TRACE)
    assert request["path"] == "/api/v1/tenants/{tenant_id}/claim" and request["status"] == 200


@pytest.mark.anyio
async def test_sync_events_carry_the_requests_trace(api: Api) -> None:
    await api.create_pool("docs", "docs")
    assert (await api.claim("alice", "docs")).status_code == 200
    data_dir = Path((await api.client.get(f"{API}/tenants/alice")).json()["container"]["data_dir"])
    (data_dir / "x.txt").write_bytes(b"x")
    r = await api.client.post(f"{API}/tenants/alice/sync", headers={"traceparent": VALID})
    assert r.status_code == 200, r.text
    events = api.stream_events()
    assert sorted(_by_trace(events, TRACE)) == ["http.request", "sync.finished"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", f"00-{'0' * 32}-{PARENT}-01")],
        [("traceparent", "garbage")],
        [("traceparent", "x" * 8000)],
        [("traceparent", VALID.upper())],
        [("traceparent", VALID), ("traceparent", VALID)],  # more than one: invalid
    ],
    ids=["none", "zero-trace", "garbage", "long", "upper", "twice"],
)
async def test_without_a_valid_traceparent_the_request_starts_a_new_trace(
    api: Api, headers: list[tuple[str, str]]
) -> None:
    r = await api.client.get(f"{API}/workloads", headers=headers)
    assert r.status_code == 200, "an invalid traceparent is never an error"
    trace_id, _, flags = _response_trace(r.headers)
    assert trace_id != TRACE and flags == "01"
    r2 = await api.client.get(f"{API}/workloads", headers=headers)
    assert _response_trace(r2.headers)[0] != trace_id, "a new trace per request"
    assert _by_trace(api.stream_events(), trace_id) == ["http.request"]


@pytest.mark.anyio
async def test_errors_and_unmatched_routes_are_traced_too(api: Api) -> None:
    r = await api.client.get("/nowhere", headers={"traceparent": VALID})
    assert r.status_code == 404 and _response_trace(r.headers)[0] == TRACE
    r = await api.client.post(
        f"{API}/tenants/bob/claim", json={"pool_id": "none"}, headers={"traceparent": VALID}
    )
    assert r.status_code == 404 and _response_trace(r.headers)[0] == TRACE
    statuses = [ev["status"] for ev in api.stream_events() if ev.get("trace_id") == TRACE]
    assert statuses == [404, 404]


@pytest.mark.anyio
async def test_background_work_started_by_a_request_is_not_in_its_trace(api: Api) -> None:
    """Pool maintenance and the scale-up after a claim run in tasks of their own, without the trace id
    of the request that started them."""
    r = await api.client.post(
        f"{API}/pools",
        json={
            "pool_id": "bg",
            "workload_id": "plain",
            "min_size": 1,
            "max_size": 3,
            "acquire_timeout_s": 0.3,
        },
        headers={"traceparent": VALID},
    )
    assert r.status_code == 201, r.text
    claim = f"00-{'b' * 32}-{PARENT}-01"
    assert (
        await api.client.post(
            f"{API}/tenants/t1/claim", json={"pool_id": "bg"}, headers={"traceparent": claim}
        )
    ).status_code == 200
    for _ in range(100):  # the pool refills to keep one available container, in the background
        if (await api.client.get(f"{API}/pools/bg")).json()["stats"]["size"] >= 2:
            break
        await asyncio.sleep(0.05)
    events = api.stream_events()
    created = [ev for ev in events if ev["type"] == "container.created"]
    assert len(created) >= 2, created
    assert created[0].get("trace_id") == TRACE, "the first container is created while serving the request"
    assert all(ev.get("trace_id") is None for ev in created[1:]), created
    assert sorted(_by_trace(events, "b" * 32)) == ["container.acquired", "http.request"]
