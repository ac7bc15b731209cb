"""End to end in one process: Publisher -> real Redis -> aggregator app -> /metrics, every event type."""

from __future__ import annotations

import math
from collections import Counter as Tally

import httpx
import pytest
import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from services.aggregator.app import create_app as create_aggregator
from services.aggregator.metrics import CONTAINER_BUCKETS, HTTP_BUCKETS, METRICS, SYNC_BUCKETS, Group
from services.aggregator.settings import AggregatorSettings
from services.api.app import create_app as create_api
from services.api.settings import ApiSettings
from services.embedded import free_port
from shared.events.publisher import Publisher, _process_start_time
from shared.events.schema import EVENT_TYPES, UNMATCHED_PATH
from tests.aggregator.harness import (
    Producer,
    aggregator,
    applied_total,
    emit_every_type,
    publisher,
    wait_applied,
    wait_for,
)
from tests.support.expo import Samples, parse, value

P = "boilerhouse_"

#: The seed's pool gauges, each driven by the ``pool.state`` field it is named after (pool_<field>).
POOL_GAUGES = [(m.name, d.value) for m in METRICS if m.group is Group.POOL for d in m.drives if d.value]
assert len(POOL_GAUGES) == 7 and all(m == f"pool_{f}" for m, f in POOL_GAUGES), POOL_GAUGES


def expected_buckets(values: list[float], buckets: tuple[float, ...]) -> dict[str, float]:
    """Cumulative bucket counts as Prometheus defines them (``le`` is inclusive)."""
    out = {repr(float(b)): float(sum(1 for v in values if v <= b)) for b in buckets}
    out["+Inf"] = float(len(values))
    return out


def assert_histogram(
    samples: Samples, name: str, labels: dict[str, str], values: list[float], buckets: tuple[float, ...]
) -> None:
    for le, count in expected_buckets(values, buckets).items():
        got = value(samples, f"{P}{name}_bucket", **labels, le=le)
        assert got == count, f"{name}{labels} le={le}: {got} != {count}"
    assert value(samples, f"{P}{name}_count", **labels) == float(len(values))
    total = 0.0
    for v in values:  # same order of additions as the fold
        total += v
    assert value(samples, f"{P}{name}_sum", **labels) == total


def test_every_event_type_reaches_metrics_exactly(redis_url: str) -> None:
    pub = publisher(redis_url)
    p = Producer(pub)
    emit_every_type(p)
    emitted = {t for t, _ in p.events} | {"source.started"}
    assert emitted | {"source.stopped"} == {et.name for et in EVENT_TYPES}, "the test must cover every type"
    try:
        with aggregator(redis_url) as agg:
            assert pub.flush(10)
            s = wait_applied(agg.url, len(p.events) + 1)

            # ---- applied per type: every emitted event was folded once -------------------------
            per_type = Tally(t for t, _ in p.events) + Tally({"source.started": 1})
            for type_, n in per_type.items():
                assert value(s, f"{P}aggregator_events_applied_total", type=type_) == n, type_
            assert applied_total(s) == sum(per_type.values())

            # ---- pool gauges (snapshot, one live source) ------------------------------------------
            last_a = p.of("pool.state", pool_id="pool-a")[-1]
            for metric, fld in POOL_GAUGES:
                assert value(s, P + metric, pool_id="pool-a", workload_id="echo") == last_a[fld], metric
                assert value(s, P + metric, pool_id="pool-b", workload_id="echo") is None, "removed pool"
            assert value(s, f"{P}affinity_reservations", pool_id="pool-a") == last_a["affinity_reservations"]
            assert value(s, f"{P}affinity_reservations", pool_id="pool-b") is None

            # ---- container histograms and counters --------------------------------------------------
            for pool, status in {(e["pool_id"], e["status"]) for e in p.of("container.acquired")}:
                vals = [e["duration_s"] for e in p.of("container.acquired", pool_id=pool, status=status)]
                assert_histogram(
                    s,
                    "container_acquire_duration_seconds",
                    {"pool_id": pool, "status": status},
                    vals,
                    CONTAINER_BUCKETS,
                )
            for status in ("success", "failure"):
                vals = [e["duration_s"] for e in p.of("container.released", status=status)]
                assert_histogram(
                    s,
                    "container_release_duration_seconds",
                    {"pool_id": "pool-a", "status": status},
                    vals,
                    CONTAINER_BUCKETS,
                )
            assert_histogram(
                s,
                "container_create_duration_seconds",
                {"pool_id": "pool-a", "workload_id": "echo"},
                [e["duration_s"] for e in p.of("container.created")],
                CONTAINER_BUCKETS,
            )
            assert_histogram(
                s,
                "container_destroy_duration_seconds",
                {"pool_id": "pool-a"},
                [e["duration_s"] for e in p.of("container.destroyed")],
                CONTAINER_BUCKETS,
            )
            assert_histogram(
                s,
                "container_wipe_duration_seconds",
                {"pool_id": "pool-a"},
                [e["duration_s"] for e in p.of("container.wiped")],
                CONTAINER_BUCKETS,
            )
            for type_, op in [
                ("container.created", "create"),
                ("container.destroyed", "destroy"),
                ("container.wiped", "wipe"),
            ]:
                for status in ("success", "failure"):
                    n = len(p.of(type_, status=status))
                    got = value(
                        s, f"{P}container_operations_total", pool_id="pool-a", operation=op, status=status
                    )
                    assert got == (n or None), (op, status)
            for pool in ("pool-a", "pool-b"):
                assert value(s, f"{P}container_health_check_failures_total", pool_id=pool) == len(
                    p.of("container.health_check_failed", pool_id=pool)
                )
                # ---- affinity --------------------------------------------------------------------------
                hits = len(p.of("container.acquired", pool_id=pool, affinity="hit"))
                misses = len(p.of("container.acquired", pool_id=pool, affinity="miss"))
                assert value(s, f"{P}affinity_hits_total", pool_id=pool) == (hits or None)
                assert value(s, f"{P}affinity_misses_total", pool_id=pool) == misses
            assert value(s, f"{P}affinity_evictions_total", pool_id="pool-a") == len(p.of("affinity.evicted"))

            # ---- sync ------------------------------------------------------------------------------------
            syncs = p.of("sync.finished")
            for direction, status in {(e["direction"], e["status"]) for e in syncs}:
                n = len(p.of("sync.finished", direction=direction, status=status))
                assert (
                    value(
                        s, f"{P}sync_operations_total", workload_id="echo", direction=direction, status=status
                    )
                    == n
                )
            for direction, mode in {(e["direction"], e["mode"]) for e in syncs}:
                vals = [e["duration_s"] for e in p.of("sync.finished", direction=direction, mode=mode)]
                assert_histogram(
                    s,
                    "sync_duration_seconds",
                    {"workload_id": "echo", "direction": direction, "mode": mode},
                    vals,
                    SYNC_BUCKETS,
                )
            for direction in ("upload", "download"):
                mine = p.of("sync.finished", direction=direction)
                assert value(
                    s, f"{P}sync_bytes_transferred_total", workload_id="echo", direction=direction
                ) == sum(e["bytes"] for e in mine)
                assert value(
                    s, f"{P}sync_files_transferred_total", workload_id="echo", direction=direction
                ) == sum(e["files"] for e in mine)
            # error_type as sent; a timeout without one is "timeout", another failure "rclone_error".
            assert value(s, f"{P}sync_errors_total", workload_id="echo", error_type="network_error") == 1
            assert value(s, f"{P}sync_errors_total", workload_id="echo", error_type="timeout") == 1
            assert value(s, f"{P}sync_errors_total", workload_id="echo", error_type="rclone_error") == 1
            assert (
                value(s, f"{P}sync_errors_total", workload_id="echo", error_type="permission_denied") is None
            )
            assert value(s, f"{P}sync_bisync_resync_total", workload_id="echo") == len(p.of("sync.resynced"))
            last_sync = p.of("sync.state")[-1]
            assert value(s, f"{P}sync_concurrent_operations", workload_id="echo") == last_sync["running"]
            assert value(s, f"{P}sync_queue_length", workload_id="echo") == last_sync["queued"]
            assert value(s, f"{P}sync_periodic_jobs_active", workload_id="echo") == last_sync["periodic_jobs"]

            # ---- http ---------------------------------------------------------------------------------
            for method, path, status in {(e["method"], e["path"], e["status"]) for e in p.of("http.request")}:
                mine = p.of("http.request", method=method, path=path, status=status)
                labels = {"method": method, "path": path, "status": str(status)}
                assert value(s, f"{P}http_requests_total", **labels) == len(mine)
                assert_histogram(
                    s, "http_request_duration_seconds", labels, [e["duration_s"] for e in mine], HTTP_BUCKETS
                )

            # ---- system and pipeline --------------------------------------------------------------------
            assert value(s, f"{P}info", version="9.9.9") == 1
            assert value(s, f"{P}start_time_seconds") == _process_start_time()
            assert value(s, f"{P}events_dropped_total", service="pipeline-test") == 7
            assert value(s, f"{P}aggregator_live_sources") == 1
            assert value(s, f"{P}aggregator_duplicates_total") is None
            assert not any(n == f"{P}events_lost_total" for n, _ in s)
            age = value(s, f"{P}aggregator_newest_event_age_seconds")
            assert age is not None and 0 <= age < 60
            assert value(s, f"{P}aggregator_consumer_lag_entries", partition="0") == 0

            # ---- source.stopped: gauges and info go at once, counters stay -------------------------------
            pub.close()
            after = wait_for(
                agg.url,
                lambda x: value(x, f"{P}aggregator_events_applied_total", type="source.stopped") == 1,
                what="source.stopped applied",
            )
            assert value(after, f"{P}pool_size", pool_id="pool-a", workload_id="echo") is None
            assert value(after, f"{P}sync_concurrent_operations", workload_id="echo") is None
            assert value(after, f"{P}info", version="9.9.9") is None
            assert value(after, f"{P}start_time_seconds") is None
            assert value(after, f"{P}aggregator_live_sources") == 0
            for key, v in s.items():
                if key[0].startswith(P) and key[0].endswith("_total") and "events_applied" not in key[0]:
                    assert after[key] == v, key
    finally:
        pub.close()


def test_gauges_sum_over_live_sources_and_ttl_expiry(redis_url: str) -> None:
    """Two sources report the same pool; the aggregator serves the sum, minus a silent one after the TTL."""
    fields = {
        "pool_id": "pool-a",
        "workload_id": "echo",
        "pending": 0,
        "min_size": 1,
        "max_size": 9,
        "target_size": 3,
        "affinity_reservations": 0,
    }
    a = Publisher(redis_url, "worker-a", heartbeat_interval_s=0.2, flush_interval_s=0.01)
    b = publisher(redis_url, "worker-b")  # never sends a heartbeat
    try:
        a.emit("pool.state", {**fields, "size": 3, "available": 1, "borrowed": 2})
        b.emit("pool.state", {**fields, "size": 4, "available": 4, "borrowed": 0})
        assert a.flush(10) and b.flush(10)
        with aggregator(redis_url, source_ttl_s=3.0) as agg:
            s = wait_for(agg.url, lambda x: value(x, f"{P}aggregator_live_sources") == 2, what="two sources")
            assert value(s, f"{P}pool_size", pool_id="pool-a", workload_id="echo") == 3 + 4
            assert value(s, f"{P}pool_available", pool_id="pool-a", workload_id="echo") == 1 + 4
            assert value(s, f"{P}pool_borrowed", pool_id="pool-a", workload_id="echo") == 2 + 0
            # worker-b is silent (no heartbeat, no source.stopped): after the TTL only worker-a counts.
            s = wait_for(
                agg.url, lambda x: value(x, f"{P}aggregator_live_sources") == 1, timeout=10, what="ttl expiry"
            )
            assert value(s, f"{P}pool_size", pool_id="pool-a", workload_id="echo") == 3
            assert value(s, f"{P}pool_available", pool_id="pool-a", workload_id="echo") == 1
            assert value(s, f"{P}pool_borrowed", pool_id="pool-a", workload_id="echo") == 2
    finally:
        a.close()
        b.close()


async def _claim(request: Request) -> Response:
    return JSONResponse({"tenant": request.path_params["tenant_id"]})


async def _boom(request: Request) -> Response:
    return JSONResponse({"error": "nope"}, status_code=503)


@pytest.mark.anyio
async def test_api_middleware_labels_by_route_template(redis_url: str) -> None:
    """HTTP through the API app: route templates (also under a mount), methods, statuses, <unmatched>.

    The test mounts its own routes under /test/v1 so it does not depend on the API's route set.
    """
    pub = publisher(redis_url, "api")
    api = create_api(ApiSettings(redis_url=redis_url), publisher=pub)
    api.router.routes.append(
        Mount(
            "/test/v1",
            routes=[
                Route("/tenants/{tenant_id}/claim", _claim, methods=["POST"]),
                Route("/pools/{pool_id}", _boom, methods=["GET", "DELETE"]),
            ],
        )
    )
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for tenant in ("tenant-123", "tenant-456", "tenant-789"):
            assert (await client.post(f"/test/v1/tenants/{tenant}/claim")).status_code == 200
        assert (await client.get("/test/v1/pools/p1")).status_code == 503
        assert (await client.delete("/test/v1/pools/p2")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/no/such/tenant-123")).status_code == 404
        assert (await client.request("PURGE", "/healthz")).status_code == 405
    with aggregator(redis_url) as agg:
        pub.close()
        s = wait_for(
            agg.url,
            lambda x: value(x, f"{P}aggregator_events_applied_total", type="http.request") == 8,
            what="8 requests",
        )
        text = httpx.get(agg.url + "/metrics").text
    req = f"{P}http_requests_total"
    assert value(s, req, method="POST", path="/test/v1/tenants/{tenant_id}/claim", status="200") == 3
    assert value(s, req, method="GET", path="/test/v1/pools/{pool_id}", status="503") == 1
    assert value(s, req, method="DELETE", path="/test/v1/pools/{pool_id}", status="503") == 1
    assert value(s, req, method="GET", path="/healthz", status="200") == 1
    assert value(s, req, method="GET", path=UNMATCHED_PATH, status="404") == 1
    assert value(s, req, method="OTHER", path="/healthz", status="405") == 1
    assert "tenant-123" not in text and "tenant-456" not in text, "raw paths must never become labels"
    # Durations were measured by the middleware: one observation per request, all well under 10 s.
    assert (
        value(
            s,
            f"{P}http_request_duration_seconds_count",
            method="POST",
            path="/test/v1/tenants/{tenant_id}/claim",
            status="200",
        )
        == 3
    )
    assert (
        value(
            s,
            f"{P}http_request_duration_seconds_bucket",
            method="POST",
            path="/test/v1/tenants/{tenant_id}/claim",
            status="200",
            le="10.0",
        )
        == 3
    )


def test_content_negotiation_health_and_readiness(redis_url: str) -> None:
    pub = publisher(redis_url)
    pub.emit(
        "container.acquired", {"pool_id": "p", "status": "success", "duration_s": 0.2, "affinity": "hit"}
    )
    try:
        with aggregator(redis_url) as agg:
            assert pub.flush(10)
            wait_applied(agg.url, 2)
            plain = httpx.get(agg.url + "/metrics")
            assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert not plain.text.rstrip().endswith("# EOF")
            om = httpx.get(
                agg.url + "/metrics",
                headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
            )
            assert om.headers["content-type"].startswith("application/openmetrics-text")
            assert om.text.endswith("# EOF\n")
            assert f'{P}affinity_hits_total{{pool_id="p"}} 1.0' in om.text
            # The aggregator's own process metrics come from the library's standard collectors.
            samples = parse(plain.text)
            assert value(samples, "process_cpu_seconds_total") is not None
            assert any(n == "python_gc_objects_collected_total" for n, _ in samples)
            h = httpx.get(agg.url + "/healthz")
            assert h.status_code == 200 and h.json()["status"] == "ok"
            r = httpx.get(agg.url + "/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ready", "partitions": [0]}
    finally:
        pub.close()


def test_readyz_is_503_while_redis_is_unreachable() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with aggregator(dead) as agg:
        r = httpx.get(agg.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert httpx.get(agg.url + "/healthz").status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "path", "prefix", "absent"),
    [
        ({}, "/metrics", "boilerhouse_", None),
        ({"BOILERHOUSE_METRICS_PATH": "/internal/prom"}, "/internal/prom", "boilerhouse_", "/metrics"),
        ({"BOILERHOUSE_METRICS_PREFIX": "acme_"}, "/metrics", "acme_", None),
        ({"BOILERHOUSE_METRICS_ENABLED": "false"}, None, "boilerhouse_", "/metrics"),
    ],
)
async def test_metrics_settings(
    redis_url: str, env: dict[str, str], path: str | None, prefix: str, absent: str | None
) -> None:
    settings = AggregatorSettings.from_env({"BOILERHOUSE_REDIS_URL": redis_url, **env})
    client = redis.Redis.from_url(redis_url, protocol=2)
    app = create_aggregator(settings, client=client)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agg") as http:
            if absent:
                assert (await http.get(absent)).status_code == 404
            if path is None:
                assert settings.metrics_enabled is False
                assert (await http.get("/healthz")).status_code == 200
                return
            r = await http.get(path)
            assert r.status_code == 200
            names = {n for n, _ in parse(r.text)}
            ours = {n for n in names if not n.startswith(("process_", "python_"))}
            assert ours, "no metrics of ours"
            assert all(n.startswith(prefix) for n in ours), sorted(ours)[:5]
            # Families without series still announce themselves: every metric in the mapping is there.
            for m in METRICS:
                assert f"# TYPE {prefix}{m.name} {m.kind}" in r.text, m.name
    finally:
        client.close()


def test_histogram_sums_are_finite_and_buckets_monotonic(redis_url: str) -> None:
    """Cumulative buckets never decrease and +Inf equals _count, for every series of every histogram."""
    pub = publisher(redis_url)
    p = Producer(pub)
    emit_every_type(p)
    try:
        with aggregator(redis_url) as agg:
            assert pub.flush(10)
            s = wait_applied(agg.url, len(p.events) + 1)
    finally:
        pub.close()
    by_series: dict[tuple[str, frozenset[tuple[str, str]]], list[tuple[float, float]]] = {}
    for (name, labels), v in s.items():
        if name.endswith("_bucket"):
            d = dict(labels)
            le = d.pop("le")
            by_series.setdefault((name[:-7], frozenset(d.items())), []).append((float(le), v))
    assert by_series
    for (base, labels), rows in by_series.items():
        counts = [c for _, c in sorted(rows)]
        assert counts == sorted(counts), base
        assert counts[-1] == s[(base + "_count", labels)]
        assert math.isfinite(s[(base + "_sum", labels)])
