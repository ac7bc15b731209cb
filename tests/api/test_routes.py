"""The /api/v1 endpoints through the app factory (httpx.ASGITransport): every endpoint, every error status."""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request

from services.api.app import create_app
from services.api.errors import exception_handlers
from services.api.settings import ApiSettings
from services.api.workloads import WorkloadError
from services.embedded import free_port
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.publisher import Publisher
from shared.events.schema import UNMATCHED_PATH
from shared.events.streams import stream_key

pytestmark = pytest.mark.anyio

API = "/api/v1"
JSON = {"content-type": "application/json"}  # raw bodies must declare it (415 otherwise)


def write_workloads(root: Path, remote: Path, closed_port: int) -> Path:
    wdir = root / "workloads"
    wdir.mkdir()
    (wdir / "plain.yaml").write_text('id: plain\ncommand: ["sleep", "infinity"]\n')
    (wdir / "docs.yaml").write_text(
        f'id: docs\ncommand: ["sleep", "infinity"]\nsync:\n  remote: {remote / "docs"}\n'
        "  mode: copy\n  direction: upload\n  timeout: 60s\n"
    )
    (wdir / "offline.yaml").write_text(
        f'id: offline\ncommand: ["sleep", "infinity"]\nsync:\n'
        f"  remote: \":webdav,url='http://127.0.0.1:{closed_port}/':\"\n"
        "  mode: copy\n  direction: upload\n  timeout: 60s\n"
        '  extra_args: ["--retries", "1", "--low-level-retries", "1"]\n'
    )
    (wdir / "slow.yaml").write_text(
        f'id: slow\ncommand: ["sleep", "infinity"]\nsync:\n  remote: {remote / "slow"}\n'
        "  mode: copy\n  direction: upload\n  timeout: 1ms\n"
    )
    (wdir / "broken.yaml").write_text('id: broken\ncommand: ["/nonexistent/boilerhouse-test-binary"]\n')
    return wdir


@dataclass
class Api:
    app: Starlette
    client: httpx.AsyncClient
    publisher: Publisher
    redis_url: str
    tmp: Path

    async def create_pool(self, pool_id: str, workload_id: str, **extra: Any) -> httpx.Response:
        body = {
            "pool_id": pool_id,
            "workload_id": workload_id,
            "min_size": 1,
            "max_size": 2,
            "acquire_timeout_s": 0.3,
            **extra,
        }
        r = await self.client.post(f"{API}/pools", json=body)
        assert r.status_code == 201, r.text
        return r

    async def claim(self, tenant: str, pool_id: str) -> httpx.Response:
        return await self.client.post(f"{API}/tenants/{tenant}/claim", json={"pool_id": pool_id})

    def stream_events(self) -> list[dict[str, Any]]:
        assert self.publisher.flush(5)
        client = redis.Redis.from_url(self.redis_url, protocol=2)
        try:
            entries = client.xrange(stream_key(self.publisher.partition))
        finally:
            client.close()
        return [ev for _, fields in entries for ev in decode_batch(fields[ENTRY_FIELD]).events]

    def raw_stream(self) -> bytes:
        assert self.publisher.flush(5)
        client = redis.Redis.from_url(self.redis_url, protocol=2)
        try:
            return b"".join(f[ENTRY_FIELD] for _, f in client.xrange(stream_key(self.publisher.partition)))
        finally:
            client.close()


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    wdir = write_workloads(tmp_path, tmp_path / "remote", free_port())
    settings = ApiSettings(
        redis_url=redis_url,
        workloads_dir=str(wdir),
        data_dir=str(tmp_path / "data"),
        heartbeat_interval_s=0.2,
        affinity_timeout_s=30.0,
        acquire_timeout_s=0.3,
        health_interval_s=5.0,
    )
    publisher = Publisher(redis_url, "api-test", heartbeat_interval_s=0.2)
    app = create_app(settings, publisher)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://api.test") as client,
    ):
        yield Api(app, client, publisher, redis_url, tmp_path)


def assert_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# ---- health, workloads, containers --------------------------------------------------------------


async def test_healthz_and_workloads(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"

    r = await api.client.get(f"{API}/workloads")
    assert r.status_code == 200
    workloads = {w["id"]: w for w in r.json()["workloads"]}
    assert sorted(workloads) == ["broken", "docs", "offline", "plain", "slow"]
    assert workloads["plain"]["sync"] is None
    assert workloads["docs"]["sync"]["mode"] == "copy"
    assert workloads["docs"]["sync"]["direction"] == "upload"


async def test_containers_list_states_and_pids(api: Api) -> None:
    await api.create_pool("p1", "plain", min_size=2, max_size=2)
    r = await api.claim("alice", "p1")
    assert r.status_code == 200
    r = await api.client.get(f"{API}/containers")
    assert r.status_code == 200
    containers = r.json()["containers"]
    assert len(containers) == 2
    assert sorted(c["state"] for c in containers) == ["available", "borrowed"]
    for c in containers:
        assert c["pool_id"] == "p1" and c["runtime"] == "process"
        os.kill(c["pid"], 0)  # a live process of the process runtime
    borrowed = next(c for c in containers if c["state"] == "borrowed")
    assert borrowed["tenant_id"] == "alice"


# ---- pools ------------------------------------------------------------------------------------------


async def test_pool_create_list_get_delete(api: Api) -> None:
    r = await api.create_pool("web", "plain", min_size=1, max_size=3, affinity_timeout_s=5)
    body = r.json()
    assert body["pool_id"] == "web" and body["workload_id"] == "plain"
    assert (body["min_size"], body["max_size"], body["affinity_timeout_s"]) == (1, 3, 5.0)
    assert body["acquire_timeout_s"] == 0.3 and body["health_interval_s"] == 5.0  # settings defaults
    assert body["stats"]["size"] == 1 and body["stats"]["available"] == 1

    r = await api.client.get(f"{API}/pools")
    assert [p["pool_id"] for p in r.json()["pools"]] == ["web"]
    r = await api.client.get(f"{API}/pools/web")
    assert r.status_code == 200 and r.json()["stats"]["target_size"] == 1

    r = await api.client.delete(f"{API}/pools/web")
    assert r.status_code == 200 and r.json() == {"deleted": "web"}
    assert_error(await api.client.get(f"{API}/pools/web"), 404, "pool_not_found")
    assert_error(await api.client.delete(f"{API}/pools/web"), 404, "pool_not_found")
    assert (await api.client.get(f"{API}/pools")).json() == {"pools": []}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"workload_id": "plain"}, "missing_field"),
        ({"pool_id": "x"}, "missing_field"),
        ({"pool_id": "bad id!", "workload_id": "plain"}, "invalid_field"),
        ({"pool_id": "x" * 65, "workload_id": "plain"}, "invalid_field"),
        ({"pool_id": 7, "workload_id": "plain"}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "min_size": "2"}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "min_size": True}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "min_size": -1}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "min_size": 3, "max_size": 2}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "max_size": 0}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "max_size": 100000}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "affinity_timeout_s": -1}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "health_interval_s": 0}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "acquire_timeout_s": "soon"}, "invalid_field"),
        ({"pool_id": "x", "workload_id": "plain", "colour": "red"}, "unknown_field"),
    ],
)
async def test_pool_create_rejects_bad_bodies(api: Api, body: dict[str, Any], error: str) -> None:
    assert_error(await api.client.post(f"{API}/pools", json=body), 400, error)
    assert (await api.client.get(f"{API}/pools")).json() == {"pools": []}


async def test_pool_create_rejects_malformed_json_and_conflicts(api: Api) -> None:
    post = api.client.post
    assert_error(await post(f"{API}/pools", content=b"{nope", headers=JSON), 400, "invalid_json")
    assert_error(await post(f"{API}/pools", content=b"\xff\xfe", headers=JSON), 400, "invalid_json")
    assert_error(await post(f"{API}/pools", json=[1, 2]), 400, "invalid_body")
    assert_error(await post(f"{API}/pools"), 400, "body_required")
    assert_error(await post(f"{API}/pools", content=b" " * (65 * 1024), headers=JSON), 400, "body_too_large")
    assert_error(
        await post(f"{API}/pools", json={"pool_id": "x", "workload_id": "nope"}), 404, "workload_not_found"
    )
    await api.create_pool("dup", "plain")
    assert_error(
        await post(f"{API}/pools", json={"pool_id": "dup", "workload_id": "plain"}), 409, "pool_exists"
    )
    assert_error(await api.client.get(f"{API}/pools/bad%20id"), 400, "invalid_pool_id")
    assert_error(await api.client.get(f"{API}/pools/nope"), 404, "pool_not_found")


# ---- tenants ------------------------------------------------------------------------------------------


async def test_claim_release_affinity_and_tenant_view(api: Api) -> None:
    await api.create_pool("p1", "plain", min_size=2, max_size=2)
    await api.create_pool("p2", "plain")
    r = await api.claim("alice", "p1")
    assert r.status_code == 200, r.text
    first = r.json()["container"]["id"]
    assert r.json()["pool_id"] == "p1" and r.json()["tenant_id"] == "alice"

    r = await api.client.get(f"{API}/tenants/alice")
    assert r.status_code == 200
    view = r.json()
    assert (view["pool_id"], view["workload_id"], view["container"]["id"]) == ("p1", "plain", first)
    assert Path(view["container"]["data_dir"]).is_dir()

    assert_error(await api.claim("alice", "p1"), 409, "tenant_already_claimed")
    assert_error(await api.claim("alice", "p2"), 409, "tenant_busy")

    r = await api.client.post(f"{API}/tenants/alice/release")
    assert r.status_code == 200 and r.json() == {"tenant_id": "alice", "pool_id": "p1", "released": True}
    assert_error(await api.client.post(f"{API}/tenants/alice/release"), 404, "tenant_not_found")
    assert_error(await api.client.get(f"{API}/tenants/alice"), 404, "tenant_not_found")
    stats = (await api.client.get(f"{API}/pools/p1")).json()["stats"]
    assert stats["affinity_reservations"] == 1

    r = await api.claim("alice", "p1")  # within the affinity timeout: the same container
    assert r.status_code == 200 and r.json()["container"]["id"] == first
    stats = (await api.client.get(f"{API}/pools/p1")).json()["stats"]
    assert (stats["affinity_reservations"], stats["borrowed"]) == (0, 1)


@pytest.mark.parametrize(
    ("tenant", "body", "status", "error"),
    [
        ("bad$tenant", {"pool_id": "p1"}, 400, "invalid_tenant_id"),
        ("t" * 129, {"pool_id": "p1"}, 400, "invalid_tenant_id"),
        (".hidden", {"pool_id": "p1"}, 400, "invalid_tenant_id"),
        ("bob", {}, 400, "missing_field"),
        ("bob", {"pool_id": 3}, 400, "invalid_field"),
        ("bob", {"pool_id": "p1", "extra": 1}, 400, "unknown_field"),
        ("bob", {"pool_id": "no-such-pool"}, 404, "pool_not_found"),
    ],
)
async def test_claim_rejects_bad_requests(
    api: Api, tenant: str, body: dict[str, Any], status: int, error: str
) -> None:
    await api.create_pool("p1", "plain")
    r = await api.client.post(f"{API}/tenants/{tenant}/claim", json=body)
    assert_error(r, status, error)


async def test_release_and_tenant_errors(api: Api) -> None:
    assert_error(await api.client.post(f"{API}/tenants/nobody/release"), 404, "tenant_not_found")
    assert_error(
        await api.client.post(f"{API}/tenants/nobody/release", json={"now": True}), 400, "unknown_field"
    )
    assert_error(await api.client.post(f"{API}/tenants/bad$/release"), 400, "invalid_tenant_id")
    assert_error(await api.client.get(f"{API}/tenants/bad$"), 400, "invalid_tenant_id")
    assert_error(await api.client.get(f"{API}/tenants/nobody"), 404, "tenant_not_found")
    assert_error(
        await api.client.post(f"{API}/tenants/x/claim", content=b"[]", headers=JSON), 400, "invalid_body"
    )
    assert_error(await api.client.post(f"{API}/tenants/x/claim"), 400, "body_required")


async def test_pool_exhaustion_is_503_with_retry_after(api: Api) -> None:
    await api.create_pool("tiny", "plain", min_size=1, max_size=1, acquire_timeout_s=0.2)
    assert (await api.claim("alice", "tiny")).status_code == 200
    r = await api.claim("bob", "tiny")
    body = assert_error(r, 503, "pool_exhausted")
    assert int(r.headers["retry-after"]) >= 1
    assert body["pool_id"] == "tiny" and body["retry_after_s"] == int(r.headers["retry-after"])
    assert_error(await api.client.get(f"{API}/tenants/bob"), 404, "tenant_not_found")


async def test_delete_pool_frees_its_tenants(api: Api) -> None:
    await api.create_pool("gone", "plain")
    assert (await api.claim("alice", "gone")).status_code == 200
    assert (await api.client.delete(f"{API}/pools/gone")).status_code == 200
    assert_error(await api.client.get(f"{API}/tenants/alice"), 404, "tenant_not_found")
    await api.create_pool("other", "plain")
    assert (await api.claim("alice", "other")).status_code == 200


# ---- sync ----------------------------------------------------------------------------------------------


async def test_sync_success_and_validation(api: Api) -> None:
    await api.create_pool("docs", "docs")
    await api.create_pool("plain", "plain")
    assert (await api.claim("alice", "docs")).status_code == 200
    data_dir = Path((await api.client.get(f"{API}/tenants/alice")).json()["container"]["data_dir"])
    (data_dir / "report.txt").write_bytes(b"x" * 1234)

    r = await api.client.post(f"{API}/tenants/alice/sync")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["bytes"], body["files"], body["direction"], body["mode"]) == (1234, 1, "upload", "copy")
    assert (api.tmp / "remote" / "docs" / "alice" / "report.txt").read_bytes() == b"x" * 1234

    r = await api.client.post(f"{API}/tenants/alice/sync", json={"direction": "download"})
    assert r.status_code == 200 and r.json()["direction"] == "download"

    assert_error(
        await api.client.post(f"{API}/tenants/alice/sync", json={"direction": "sideways"}),
        400,
        "invalid_field",
    )
    assert_error(
        await api.client.post(f"{API}/tenants/alice/sync", json={"mode": "copy"}), 400, "unknown_field"
    )
    assert_error(
        await api.client.post(f"{API}/tenants/alice/sync", content=b"nope", headers=JSON), 400, "invalid_json"
    )
    assert_error(await api.client.post(f"{API}/tenants/nobody/sync"), 404, "tenant_not_found")
    assert (await api.claim("bob", "plain")).status_code == 200
    assert_error(await api.client.post(f"{API}/tenants/bob/sync"), 409, "sync_not_configured")


async def test_sync_failures_are_gateway_errors(api: Api) -> None:
    await api.create_pool("offline", "offline")
    await api.create_pool("slow", "slow")
    assert (await api.claim("alice", "offline")).status_code == 200
    assert (await api.claim("bob", "slow")).status_code == 200
    data_dir = Path((await api.client.get(f"{API}/tenants/alice")).json()["container"]["data_dir"])
    (data_dir / "a.txt").write_text("hello")

    body = assert_error(await api.client.post(f"{API}/tenants/alice/sync"), 502, "sync_failed")
    assert (body["error_type"], body["workload_id"]) == ("network_error", "offline")
    body = assert_error(await api.client.post(f"{API}/tenants/bob/sync"), 504, "sync_failed")
    assert body["error_type"] == "timeout"


# ---- routing errors and server faults ---------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    body = assert_error(await api.client.get(f"{API}/nope"), 404, "not_found")
    assert "/api/v1/nope" in body["detail"]
    assert_error(await api.client.get("/favicon.ico"), 404, "not_found")
    r = await api.client.put(f"{API}/pools")
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_error(await api.client.delete(f"{API}/tenants/alice/claim"), 405, "method_not_allowed")


async def test_container_runtime_failure_is_500(api: Api) -> None:
    await api.create_pool("broken", "broken", min_size=0, max_size=1)
    body = assert_error(await api.claim("alice", "broken"), 500, "container_runtime_error")
    assert "/nonexistent/boilerhouse-test-binary" in body["detail"]
    assert_error(await api.client.get(f"{API}/tenants/alice"), 404, "tenant_not_found")
    events = api.stream_events()
    assert ("POST", "/api/v1/tenants/{tenant_id}/claim", 500) in {
        (e["method"], e["path"], e["status"]) for e in events if e["type"] == "http.request"
    }
    failed = [e for e in events if e["type"] == "container.created" and e["pool_id"] == "broken"]
    assert failed and {e["status"] for e in failed} == {"failure"}


# ---- what the API publishes -----------------------------------------------------------------------------


async def test_requests_are_labelled_by_route_template_and_tenant_ids_never_published(api: Api) -> None:
    await api.create_pool("p1", "plain")
    tenant = "tenant-7f3a9c-secret"
    assert (await api.claim(tenant, "p1")).status_code == 200
    assert (await api.client.get(f"{API}/tenants/{tenant}")).status_code == 200
    assert (await api.client.post(f"{API}/tenants/{tenant}/release")).status_code == 200
    assert (await api.client.get(f"{API}/tenants/{tenant}/nothing-here")).status_code == 404
    assert (await api.client.put(f"{API}/pools")).status_code == 405

    http = [(e["method"], e["path"], e["status"]) for e in api.stream_events() if e["type"] == "http.request"]
    assert http == [
        ("POST", "/api/v1/pools", 201),
        ("POST", "/api/v1/tenants/{tenant_id}/claim", 200),
        ("GET", "/api/v1/tenants/{tenant_id}", 200),
        ("POST", "/api/v1/tenants/{tenant_id}/release", 200),
        ("GET", UNMATCHED_PATH, 404),
        ("PUT", "/api/v1/pools", 405),
    ]
    assert tenant.encode() not in api.raw_stream()
    types = {e["type"] for e in api.stream_events()}
    assert {"pool.state", "container.created", "container.acquired", "container.released"} <= types


async def test_snapshots_go_out_on_every_heartbeat(api: Api) -> None:
    await api.create_pool("p1", "plain")
    before = sum(1 for e in api.stream_events() if e["type"] == "pool.state")
    heartbeats = sum(1 for e in api.stream_events() if e["type"] == "source.heartbeat")
    await anyio.sleep(0.7)  # a few 0.2 s heartbeats
    events = api.stream_events()
    assert sum(1 for e in events if e["type"] == "source.heartbeat") > heartbeats
    assert sum(1 for e in events if e["type"] == "pool.state") > before
    sync_states = {e["workload_id"] for e in events if e["type"] == "sync.state"}
    assert sync_states == {"docs", "offline", "slow"}


# ---- configuration --------------------------------------------------------------------------------------


def test_settings_from_env() -> None:
    s = ApiSettings.from_env(
        {
            "BOILERHOUSE_AFFINITY_TIMEOUT_S": "2.5",
            "BOILERHOUSE_ACQUIRE_TIMEOUT_S": "0.5",
            "BOILERHOUSE_IDLE_TIMEOUT_S": "9",
            "BOILERHOUSE_HEALTH_INTERVAL_S": "0.25",
            "BOILERHOUSE_RCLONE": "/usr/bin/rclone",
            "BOILERHOUSE_POOLS_FILE": "/etc/pools.yaml",
        }
    )
    assert (s.affinity_timeout_s, s.acquire_timeout_s, s.idle_timeout_s, s.health_interval_s) == (
        2.5,
        0.5,
        9,
        0.25,
    )
    assert (s.rclone, s.pools_file) == ("/usr/bin/rclone", "/etc/pools.yaml")


async def test_pools_file_creates_pools_at_startup(tmp_path: Path, redis_url: str) -> None:
    wdir = write_workloads(tmp_path, tmp_path / "remote", free_port())
    pools = tmp_path / "pools.yaml"
    pools.write_text("pools:\n  - {pool_id: boot, workload_id: plain, min_size: 2, max_size: 3}\n")
    settings = ApiSettings(
        redis_url=redis_url,
        workloads_dir=str(wdir),
        data_dir=str(tmp_path / "data"),
        pools_file=str(pools),
        affinity_timeout_s=7,
    )
    publisher = Publisher(redis_url, "api-test")
    app = create_app(settings, publisher)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            body = (await client.get(f"{API}/pools/boot")).json()
            pids = [c["pid"] for c in (await client.get(f"{API}/containers")).json()["containers"]]
    assert (body["min_size"], body["max_size"], body["affinity_timeout_s"]) == (2, 3, 7.0)
    assert body["stats"]["size"] == 2 and len(pids) == 2
    for pid in pids:  # shutting the app down destroyed its containers
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_shipped_workloads_run_out_of_the_box(tmp_path: Path, redis_url: str) -> None:
    """The example workloads (no workloads dir given) run on the process runtime and sync locally."""
    data = tmp_path / "data"
    settings = ApiSettings(redis_url=redis_url, data_dir=str(data))
    app = create_app(settings, Publisher(redis_url, "api-test"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            workloads = {w["id"]: w for w in (await client.get(f"{API}/workloads")).json()["workloads"]}
            assert {"echo", "notes", "journal"} <= set(workloads)
            assert workloads["notes"]["sync"]["remote"] == f"{data}/remote/notes"
            for pool, workload in (("n", "notes"), ("j", "journal"), ("e", "echo")):
                r = await client.post(
                    f"{API}/pools",
                    json={"pool_id": pool, "workload_id": workload, "min_size": 1, "max_size": 1},
                )
                assert r.status_code == 201, r.text
                assert (
                    await client.post(f"{API}/tenants/t-{pool}/claim", json={"pool_id": pool})
                ).status_code == 200
            # the notes container writes notes.txt in its working directory, every 2 s
            notes_dir = Path((await client.get(f"{API}/tenants/t-n")).json()["container"]["data_dir"])
            for _ in range(100):
                if (notes_dir / "notes.txt").exists():
                    break
                await anyio.sleep(0.05)
            r = await client.post(f"{API}/tenants/t-n/sync")
            assert r.status_code == 200 and r.json()["files"] == 1 and r.json()["bytes"] > 0, r.text
            r = await client.post(f"{API}/tenants/t-j/sync")
            assert r.status_code == 200 and r.json()["mode"] == "bisync", r.text
            assert (await client.post(f"{API}/tenants/t-n/release")).status_code == 200
    assert (data / "remote" / "notes" / "t-n" / "notes.txt").is_file()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pools: [{pool_id: a, workload_id: nope}]", "no workload 'nope'"),
        ("- {pool_id: 'bad id', workload_id: plain}", "pool #1"),
        ("- {pool_id: a, workload_id: plain, max_size: 0}", "max_size"),
        ("{a: 1}", "expected a list"),
    ],
)
def test_bad_pools_file_is_refused_before_start(tmp_path: Path, text: str, problem: str) -> None:
    wdir = write_workloads(tmp_path, tmp_path / "remote", free_port())
    pools = tmp_path / "pools.yaml"
    pools.write_text(text)
    settings = ApiSettings(workloads_dir=str(wdir), pools_file=str(pools))
    with pytest.raises(WorkloadError, match=re.escape(problem)):
        create_app(settings, publisher=None)


async def test_unexpected_errors_are_500_json() -> None:
    """The catch-all handler: a bug inside a handler answers 500 JSON, naming only the exception type."""
    handler = exception_handlers()[Exception]
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""})
    response = await handler(request, KeyError("secret-key"))
    assert response.status_code == 500
    body = json.loads(bytes(response.body))
    assert body == {"error": "internal_error", "detail": "unexpected KeyError; see the server log"}
