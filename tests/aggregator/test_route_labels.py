"""The ``path`` label is structural: a route template (docs/events.md, *Route templates*) of the
aggregator's route table, or ``<unmatched>``. No event can put a raw path or a tenant id into it."""

from __future__ import annotations

import string
import time
from typing import Any

import httpx
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.aggregator.fold import Limits, State
from services.aggregator.ingest import Outcome, PartitionIngest
from services.aggregator.reader import END, StreamReader
from services.aggregator.replay import Replayer
from services.aggregator.settings import AggregatorSettings, SettingsError, parse_http_routes
from services.api.app import create_app as create_api
from services.api.route_table import TEMPLATES as API_TABLE
from services.api.routes import ROUTES
from services.api.settings import ApiSettings
from shared.events.codec import ENTRY_FIELD, FAST_VALIDATORS, encode_batch, explain_invalid, validate_event
from shared.events.schema import MAX_PATH_LEN, UNMATCHED_PATH
from shared.events.streams import stream_key
from tests.aggregator.harness import aggregator, publisher, wait_for
from tests.support.expo import Samples, parse

P = "boilerhouse_"
SRC = "api:host:1:0001"


def http_event(path: Any, seq: int = 1) -> dict[str, Any]:
    return {
        "type": "http.request",
        "seq": seq,
        "ts": time.time(),
        "method": "POST",
        "path": path,
        "status": 200,
        "duration_s": 0.01,
    }


# ---- the grammar, written a second way (segment by segment, no regular expression) --------------------

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
NAME_START = frozenset(string.ascii_letters + "_")
NAME_CHARS = NAME_START | frozenset(string.digits)


def _name_ok(name: str) -> bool:
    return 1 <= len(name) <= 32 and name[0] in NAME_START and set(name) <= NAME_CHARS


def _segment_ok(segment: str) -> bool:
    if segment.startswith("{") and segment.endswith("}") and len(segment) >= 2:
        name, colon, converter = segment[1:-1].partition(":")
        return _name_ok(name) and (not colon or _name_ok(converter))
    return 1 <= len(segment) <= 64 and segment not in (".", "..") and set(segment) <= UNRESERVED


def is_route_template(path: str) -> bool:
    """docs/events.md's grammar: "/" or 1-16 segments, an optional trailing "/", at most 128 characters."""
    if len(path) > MAX_PATH_LEN or not path.startswith("/"):
        return False
    if path == "/":
        return True
    body = path[1:-1] if path.endswith("/") else path[1:]
    segments = body.split("/")
    return len(segments) <= 16 and all(_segment_ok(s) for s in segments)


# ---- examples -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/pools/{pool_id}/../../x",  # the example
        "/api/v1/pools/..",
        "/api/v1/./pools",
        "/.",
        "/..",
        "/../etc/passwd",
        "/api/v1/pools/%2e%2e",  # percent-encoding is not part of a template
        "/api/v1/tenants/alice%2Fsecret/claim",
        "/api//v1",
        "//",
        "/api/v1/pools?x=1",
        "/api/v1/pools#frag",
        "https://example/x",
        "/api/v1/tenants/{tenant id}/claim",
        "/api/v1/tenants/{}/claim",
        "/api/v1/tenants/{1st}/claim",
        "/api/v1/tenants/{a:}/claim",
        "/files/{name}.txt",  # a placeholder is a whole segment
        "/api/v1/tenants/{tenant_id",
        "/über",
        "/a\n",
        "/" + "a" * 65,
        "/a" * 17,
        "",
        "relative/path",
        "<unmatched>/x",
    ],
)
def test_non_templates_and_dot_segments_are_rejected_by_both_validators(path: str) -> None:
    ev = http_event(path)
    problem = validate_event(ev)
    assert problem is not None and problem[0] == "invalid_field" and "path" in problem[1], problem
    assert FAST_VALIDATORS["http.request"](ev) is False
    assert not is_route_template(path)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/healthz",
        "/api/v1/tenants/{tenant_id}/claim",
        "/files/{name:path}",
        "/v2/things/",
        "/.well-known",
    ],
)
def test_templates_are_accepted_by_both_validators(path: str) -> None:
    ev = http_event(path)
    assert validate_event(ev) is None
    assert FAST_VALIDATORS["http.request"](ev) is True
    assert is_route_template(path)


@pytest.mark.anyio
async def test_the_default_route_table_is_what_the_api_serves(redis_url: str) -> None:
    """One table (services/api/route_table.py): every route the API app serves, and only those."""
    pub = publisher(redis_url, "api")
    try:
        app = create_api(ApiSettings(redis_url=redis_url), publisher=pub)
        served = {route.path for route in app.routes}  # type: ignore[attr-defined]
    finally:
        pub.close()
    assert served == set(API_TABLE)
    assert set(ROUTES) == API_TABLE - {"/healthz"}
    assert AggregatorSettings().route_table == API_TABLE
    assert AggregatorSettings.from_env({}).route_table == API_TABLE
    assert all(is_route_template(t) for t in API_TABLE)


def test_route_table_setting() -> None:
    assert AggregatorSettings.from_env({"BOILERHOUSE_HTTP_ROUTES": "any"}).route_table is None
    assert AggregatorSettings.from_env({"BOILERHOUSE_HTTP_ROUTES": ""}).route_table == API_TABLE
    assert parse_http_routes(" api , /v2/things/{id} ,") == API_TABLE | {"/v2/things/{id}"}
    assert parse_http_routes("/only/this") == frozenset({"/only/this"})
    for bad in ("/a/../b", "any,api", "/tenants/%61", "api,/x?y"):
        with pytest.raises(SettingsError, match="BOILERHOUSE_HTTP_ROUTES"):
            AggregatorSettings.from_env({"BOILERHOUSE_HTTP_ROUTES": bad})


def _http_series(state: State) -> dict[tuple[str, ...], list[float]]:
    return state.hists["http_request_duration_seconds"]


def test_templates_outside_the_table_are_unmatched_and_counted() -> None:
    paths = [
        "/api/v1/tenants/{tenant_id}/claim",  # in the table
        "/api/v1/tenants/alice-secret-tenant/claim",  # valid grammar, a tenant id as a literal: unknown
        "/api/v1/pools/web",
        UNMATCHED_PATH,  # the producer's own "no route": kept, not unknown
        "/api/v1/pools/{pool_id}/../../x",  # not a template: dead-lettered
    ]
    batch = encode_batch(SRC, [http_event(p, seq) for seq, p in enumerate(paths, 1)])
    ingest = PartitionIngest(0, State(limits=Limits(routes=API_TABLE)))
    dead: list[Any] = []
    assert ingest.entry((1, 0), {ENTRY_FIELD: batch}, dead) is Outcome.FOLDED
    state = ingest.state
    labels = {key[1]: sum(h[:-1]) for key, h in _http_series(state).items()}  # path -> observations
    assert labels == {"/api/v1/tenants/{tenant_id}/claim": 1, UNMATCHED_PATH: 3}
    assert state.counters["aggregator_unknown_routes_total"] == {(): 2}
    assert state.counters["aggregator_dead_letters_total"] == {("invalid_field",): 1}
    assert [d.reason for d in dead] == ["invalid_field"]
    # Without a table (BOILERHOUSE_HTTP_ROUTES=any) every valid template is kept, none is unknown.
    anything = PartitionIngest(0, State(limits=Limits(routes=None)))
    anything.entry((1, 0), {ENTRY_FIELD: batch})
    assert {key[1] for key in _http_series(anything.state)} == set(paths[:4])
    assert anything.state.counters["aggregator_unknown_routes_total"] == {}


def _http_samples(samples: Samples) -> dict[Any, float]:
    return {k: v for k, v in samples.items() if k[0].startswith(f"{P}http_") or "unknown_routes" in k[0]}


def test_replay_labels_exactly_as_the_live_aggregator(redis_url: str, redis_client: redis.Redis) -> None:
    """Both fold through the one ingest step with the same route table: the same series, sample for sample."""
    paths = [*sorted(API_TABLE), "/api/v1/tenants/t-1/claim", "/x", UNMATCHED_PATH, "/a/./b", "/files/{f}"]
    events = [http_event(p, seq) for seq, p in enumerate(paths * 3, 1)]
    for i in range(0, len(events), 7):
        redis_client.xadd(stream_key(0), {ENTRY_FIELD: encode_batch(SRC, events[i : i + 7])})
    with aggregator(redis_url) as agg:
        live = wait_for(
            agg.url,
            lambda s: (
                sum(v for k, v in s.items() if k[0] == f"{P}aggregator_events_applied_total")
                == len(events) - 3
            ),  # "/a/./b" three times is dead-lettered
            what="every valid event applied",
        )
    replayer = Replayer(StreamReader(redis_client), AggregatorSettings(redis_url=redis_url))
    replayer.advance_to(END)
    replayed = parse(replayer.exposition(time.time()))
    assert _http_samples(replayed) == _http_samples(live)
    assert replayed[(f"{P}aggregator_unknown_routes_total", frozenset())] == 9
    paths_seen = {dict(labels).get("path") for name, labels in live if name.startswith(f"{P}http_")}
    assert paths_seen == set(API_TABLE) | {UNMATCHED_PATH}


# ---- properties -----------------------------------------------------------------------------------------

_unreserved_text = st.text(alphabet="".join(sorted(UNRESERVED)), min_size=1, max_size=70)
_segments = st.one_of(
    _unreserved_text,  # literals, some too long
    st.from_regex(r"\{[A-Za-z_][A-Za-z0-9_]{0,33}(:[A-Za-z_][A-Za-z0-9_]{0,3})?\}", fullmatch=True),
    st.from_regex(r"(tenant|alice|user)-[0-9a-f]{4,12}", fullmatch=True),  # tenant-like ids
    st.sampled_from(
        [".", "..", "...", "%2e", "%2E%2E", "%2F", "{", "}", "{}", "{a", "a}", "", " ", "?", "#"]
    ),
    st.text(max_size=12),  # anything at all: unicode, control characters, slashes
)
_built = st.builds(
    lambda segs, trailing, prefix: prefix + "/".join(segs) + ("/" if trailing else ""),
    st.lists(_segments, max_size=20),
    st.booleans(),
    st.sampled_from(["/", "/api/v1/", "", "//", "/api/v1/tenants/"]),
)
_from_table = st.sampled_from(sorted(API_TABLE))
#: A table template with one placeholder replaced: what a producer that labels by raw path sends.
_filled = st.builds(
    lambda template, value: template.replace("{tenant_id}", value).replace("{pool_id}", value),
    _from_table,
    st.one_of(_segments, st.from_regex(r"[a-z0-9-]{1,20}", fullmatch=True)),
)
paths = st.one_of(_built, _from_table, _filled, st.just(UNMATCHED_PATH), st.text(max_size=200))


@settings(max_examples=400, deadline=None)
@given(path=paths)
def test_validators_accept_exactly_the_grammar(path: str) -> None:
    ev = http_event(path)
    expected = path == UNMATCHED_PATH or is_route_template(path)
    assert (explain_invalid(ev) is None) == expected, path
    assert FAST_VALIDATORS["http.request"](ev) == expected, path
    assert (validate_event(ev) is None) == expected, path


@settings(max_examples=150, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.one_of(paths, st.integers(-(2**63), 2**64 - 1), st.none(), st.binary(max_size=8))),
        max_size=6,
    )
)
def test_no_event_puts_anything_but_a_table_template_or_unmatched_into_the_label(
    batches: list[list[Any]],
) -> None:
    ingest = PartitionIngest(0, State(limits=Limits(routes=API_TABLE)))
    seq = sent = unknown = 0
    for i, batch in enumerate(b for b in batches if b):
        events = []
        for path in batch:
            seq += 1
            events.append(http_event(path, seq))
            valid = type(path) is str and (path == UNMATCHED_PATH or is_route_template(path))
            unknown += valid and path not in API_TABLE and path != UNMATCHED_PATH
        sent += len(events)
        assert ingest.entry((i + 1, 0), {ENTRY_FIELD: encode_batch(SRC, events)}) is Outcome.FOLDED
    state = ingest.state
    for name in ("http_request_duration_seconds",):
        for key in state.hists[name]:
            assert key[1] in API_TABLE or key[1] == UNMATCHED_PATH, key
    applied = sum(state.counters["aggregator_events_applied_total"].values())
    dead = sum(state.counters["aggregator_dead_letters_total"].values())
    assert applied + dead == sent
    assert state.counters["aggregator_unknown_routes_total"].get((), 0) == unknown


def test_tenant_ids_in_paths_never_reach_the_exposition(redis_url: str) -> None:
    """Through a real publisher, Redis and aggregator: a producer labelling by raw path leaks nothing."""
    pub = publisher(redis_url, "api")
    try:
        for tenant in ("alice-secret-tenant", "bob-7f3a"):
            pub.emit(
                "http.request",
                {
                    "method": "POST",
                    "path": f"/api/v1/tenants/{tenant}/claim",
                    "status": 200,
                    "duration_s": 0.1,
                },
            )
        assert pub.flush(10)
        with aggregator(redis_url) as agg:
            wait_for(
                agg.url,
                lambda s: s.get((f"{P}aggregator_unknown_routes_total", frozenset())) == 2,
                what="two unknown routes counted",
            )
            text = httpx.get(agg.url + "/metrics").text
    finally:
        pub.close()
    assert "alice-secret-tenant" not in text and "bob-7f3a" not in text
    assert f'{P}http_requests_total{{method="POST",path="{UNMATCHED_PATH}",status="200"}} 2.0' in text
