"""A hostile client never gets a 5xx: request bodies, numbers, content types and paths, through the app."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
import redis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.types import Message

from services.aggregator.settings import SettingsError
from services.api.app import create_app
from services.api.limits import POOL_FIELDS, SETTINGS
from services.api.settings import ApiSettings
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.publisher import Publisher
from shared.events.streams import stream_key

API = "/api/v1"
JSON = {"content-type": "application/json"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def write_workloads(root: Path) -> Path:
    wdir = root / "workloads"
    wdir.mkdir()
    (wdir / "plain.yaml").write_text('id: plain\ncommand: ["sleep", "infinity"]\n')
    return wdir


def http_events(publisher: Publisher, redis_url: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of every ``http.request`` the publisher wrote to the real Redis."""
    assert publisher.flush(5)
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        entries = client.xrange(stream_key(publisher.partition))
    finally:
        client.close()
    events = [ev for _, f in entries for ev in decode_batch(f[ENTRY_FIELD]).events]
    return [(e["method"], e["path"], e["status"]) for e in events if e["type"] == "http.request"]


@dataclass
class Api:
    app: Starlette
    client: httpx.AsyncClient
    publisher: Publisher
    redis_url: str

    def http_events(self) -> list[tuple[str, str, int]]:
        return http_events(self.publisher, self.redis_url)


def make_app(tmp_path: Path, redis_url: str) -> tuple[Starlette, Publisher]:
    settings = ApiSettings(
        redis_url=redis_url, workloads_dir=str(write_workloads(tmp_path)), data_dir=str(tmp_path / "data")
    )
    publisher = Publisher(redis_url, "api-hostile")
    return create_app(settings, publisher), publisher


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    app, publisher = make_app(tmp_path, redis_url)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api.test") as client,
    ):
        yield Api(app, client, publisher, redis_url)


def assert_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# ---- 6: bodies that break a parser ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", [f"{API}/pools", f"{API}/tenants/alice/claim", f"{API}/tenants/alice/sync"])
@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"[" * 1000 + b"]" * 1000, "nests"),  # RecursionError in json.loads
        (b"[" * 60_000, "nests"),  # unterminated, just under the size limit
        (b'{"pool_id": ' + b"[" * 40 + b"]" * 40 + b"}", "nests"),  # parses, but deeper than allowed
        (b'{"min_size": ' + b"9" * 5000 + b"}", "not valid JSON"),  # int longer than Python converts
        (b'{"min_size": NaN}', "not valid JSON"),
        (b'{"acquire_timeout_s": Infinity}', "not valid JSON"),
        (b'{"pool_id": "a", "pool_id": "b"}', "duplicate key 'pool_id'"),  # which one would a proxy check?
        (b'{"x": {"k": 1, "k": 1}}', "duplicate key 'k'"),  # at any depth, even with equal values
    ],
)
async def test_bodies_that_break_a_parser_are_400(api: Api, path: str, raw: bytes, what: str) -> None:
    body = assert_error(await api.client.post(path, content=raw, headers=JSON), 400, "invalid_json")
    assert what in body["detail"]
    assert all(status < 500 for _, _, status in api.http_events())


@pytest.mark.anyio
async def test_a_huge_body_is_refused_before_it_is_read(api: Api) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):  # 640 MB if anybody read it all
            sent += 1
            yield b" " * 65_536

    r = await api.client.post(f"{API}/pools", content=endless(), headers=JSON)
    assert_error(r, 400, "body_too_large")
    assert sent < 10, f"the server read {sent} chunks of 64 KiB"


# ---- 7: a client that goes away mid-body ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_gone_mid_body_is_recorded_as_499_without_a_traceback(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, publisher = make_app(tmp_path, redis_url)
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"pool_id": "p', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"{API}/tenants/alice/claim",
        "raw_path": f"{API}/tenants/alice/claim".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    caplog.set_level(logging.INFO)
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        assert http_events(publisher, redis_url) == [("POST", "/api/v1/tenants/{tenant_id}/claim", 499)]
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


# ---- 8: every number has a range ------------------------------------------------------------------------


def _out_of_range(name: str) -> list[Any]:
    limits = POOL_FIELDS[name]
    values: list[Any] = [limits.maximum * 2 + 1, -1, 1e308, -1e308, 10**30]
    if limits.minimum > 0:
        values.append(limits.minimum / 2)
    if limits.integer:
        values.append(1.5)
    return values


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name in POOL_FIELDS for value in _out_of_range(name)]
)
async def test_every_number_of_a_pool_body_has_a_range(api: Api, name: str, value: Any) -> None:
    body = {"pool_id": "p1", "workload_id": "plain", name: value}
    if name == "min_size":
        body["max_size"] = 1000
    r = await api.client.post(f"{API}/pools", json=body)
    got = assert_error(r, 400, "invalid_field")
    limits = POOL_FIELDS[name]
    assert (got["field"], got["minimum"], got["maximum"]) == (name, limits.minimum, limits.maximum)
    assert name in got["detail"] and str(limits) in got["detail"]
    assert (await api.client.get(f"{API}/pools")).json() == {"pools": []}


@pytest.mark.anyio
async def test_a_claim_cannot_wait_for_ever_nor_a_health_check_spin(api: Api) -> None:
    post = api.client.post
    base = {"pool_id": "p1", "workload_id": "plain"}
    assert_error(await post(f"{API}/pools", json={**base, "acquire_timeout_s": 1e308}), 400, "invalid_field")
    assert_error(await post(f"{API}/pools", json={**base, "health_interval_s": 1e-300}), 400, "invalid_field")
    limits = POOL_FIELDS["acquire_timeout_s"]
    r = await post(f"{API}/pools", json={**base, "min_size": 0, "acquire_timeout_s": limits.maximum})
    assert r.status_code == 201 and r.json()["acquire_timeout_s"] == limits.maximum


@pytest.mark.parametrize(("variable", "field_and_range"), list(SETTINGS.items()))
def test_every_numeric_setting_has_a_range(variable: str, field_and_range: Any) -> None:
    name, limits = field_and_range
    too_big = str(int(limits.maximum) + 1) if limits.integer else repr(limits.maximum * 2)
    for raw in (too_big, "-1", "nan", "inf", "1e999"):
        with pytest.raises(SettingsError) as info:
            ApiSettings.from_env({variable: raw})
        assert variable in str(info.value) and str(limits) in str(info.value)
    ok = str(int(limits.minimum)) if limits.integer else repr(limits.minimum)
    assert getattr(ApiSettings.from_env({variable: ok}), name) == limits.minimum


def test_docs_list_every_range() -> None:
    """docs/api.md's table of ranges says what services/api/limits.py declares, row for row."""
    section = DOCS.read_text().split("### Ranges", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Za-z_]+)` \| `([^`]+)` \|", section, flags=re.MULTILINE))
    assert len(rows) == len(POOL_FIELDS) + len(SETTINGS)
    for name, limits in POOL_FIELDS.items():
        assert rows.get(name) == str(limits), name
    for variable, (_, limits) in SETTINGS.items():
        assert rows.get(variable) == str(limits), variable


# ---- 9: redirects built from Host, bodies that are not JSON -------------------------------------------


@pytest.mark.anyio
async def test_a_trailing_slash_is_a_404_never_a_redirect_built_from_host(api: Api) -> None:
    for method, path in (("GET", f"{API}/pools/"), ("POST", f"{API}/pools/"), ("GET", f"{API}/workloads/")):
        r = await api.client.request(method, path, headers={"host": "evil.example"})
        body = assert_error(r, 404, "not_found")
        assert "location" not in r.headers and "trailing slash" in body["detail"]
    assert (await api.client.get(f"{API}/pools", headers={"host": "evil.example"})).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonp",
    ],
)
async def test_bodies_must_be_declared_json(api: Api, content_type: str | None) -> None:
    """What a web page can send cross-origin without a CORS preflight is refused (415), so is the rest."""
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"pool_id": "p1", "workload_id": "plain", "min_size": 0}'
    r = await api.client.post(f"{API}/pools", content=body, headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    r = await api.client.post(f"{API}/tenants/alice/claim", content=b'{"pool_id": "p1"}', headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert (await api.client.get(f"{API}/pools")).json() == {"pools": []}


@pytest.mark.anyio
async def test_json_with_a_charset_is_accepted(api: Api) -> None:
    body = b'{"pool_id": "p1", "workload_id": "plain", "min_size": 0}'
    for i, ctype in enumerate(("application/json; charset=utf-8", "Application/JSON")):
        r = await api.client.post(
            f"{API}/pools", content=body.replace(b"p1", f"p{i}".encode()), headers={"content-type": ctype}
        )
        assert r.status_code == 201, r.text


# ---- property: random bodies, shapes, strings and numbers never give a 5xx --------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=20,
)
#: Pool bodies near the real shape: known fields with random values. The workload never exists, so no
#: pool is ever created (every field is validated before the workload is looked up).
pool_bodies = st.fixed_dictionaries(
    {},
    optional={
        "pool_id": json_values | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"),
        "workload_id": st.just("no-such-workload") | json_values,
        **{name: json_values | st.integers() | st.floats() for name in POOL_FIELDS},
        "direction": json_values | st.sampled_from(["upload", "download", "bidirectional"]),
    },
)
raw_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    pool_bodies.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
)
path_params = st.text(max_size=150) | st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:@-]{0,140}\Z")
content_types = st.sampled_from([None, "application/json", "text/plain", "application/json; charset=utf-16"])
ROUTES = [
    ("POST", f"{API}/pools"),
    ("GET", f"{API}/pools/{{}}"),
    ("DELETE", f"{API}/pools/{{}}"),
    ("POST", f"{API}/tenants/{{}}/claim"),
    ("POST", f"{API}/tenants/{{}}/release"),
    ("POST", f"{API}/tenants/{{}}/sync"),
    ("GET", f"{API}/tenants/{{}}"),
    ("PATCH", f"{API}/tenants/{{}}"),
]


@pytest.fixture(scope="module")
def portal_api(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> Iterator[tuple[BlockingPortal, Api]]:
    """One app for every hypothesis example, run on an event loop in a thread (hypothesis calls sync)."""
    tmp = tmp_path_factory.mktemp("hostile")
    with start_blocking_portal(backend="asyncio") as portal:
        app, publisher = make_app(tmp, redis_server.url)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        client = httpx.AsyncClient(transport=transport, base_url="http://api.test")
        lifespan = app.router.lifespan_context(app)
        portal.call(lifespan.__aenter__)
        try:
            yield portal, Api(app, client, publisher, redis_server.url)
        finally:
            portal.call(client.aclose)
            portal.call(lifespan.__aexit__, None, None, None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(ROUTES),
    param=path_params,
    body=st.none() | raw_bodies,
    content_type=content_types,
)
def test_random_requests_never_get_a_5xx(
    portal_api: tuple[BlockingPortal, Api],
    route: tuple[str, str],
    param: str,
    body: bytes | None,
    content_type: str | None,
) -> None:
    portal, api = portal_api
    method, template = route
    url = template.format(quote(param, safe=""))
    headers = {"content-type": content_type} if content_type else {}

    async def call() -> httpx.Response:
        with anyio.fail_after(30):
            return await api.client.request(method, url, content=body, headers=headers)

    r = portal.call(call)
    assert r.status_code < 500, (method, url, body, r.text)
    assert r.headers["content-type"] == "application/json", r.headers
    got = r.json()
    if r.status_code >= 400:
        assert isinstance(got["error"], str) and isinstance(got["detail"], str) and got["detail"], got
