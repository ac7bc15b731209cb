"""Exemplars end to end with the real tools: requests sent to the API process with known ``traceparent``
headers come back, as trace ids, from a real Prometheus' ``/api/v1/query_exemplars`` for the latency
histograms, scraped from the aggregator process in the OpenMetrics format (``exemplar-storage``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from services.embedded import EmbeddedRedis, free_port
from tests.support.procs import Proc, boilerhouse, wait_http
from tests.support.prometheus import Prometheus
from tests.support.wait import wait_for

P = "boilerhouse_"
PARENT = "00f067aa0ba902b7"


def _trace(n: int) -> str:
    return f"{0xE7E7 + n:032x}"


@pytest.fixture
def procs(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[tuple[str, str]]:
    client = redis.Redis.from_url(redis_server.url, protocol=2)
    client.flushall()
    client.close()
    defs = tmp_path / "workloads"
    defs.mkdir()
    (defs / "echo.yaml").write_text(yaml.safe_dump({"id": "echo", "command": ["sleep", "infinity"]}))
    agg_port, api_port = free_port(), free_port()
    started: list[Proc] = []
    try:
        started.append(
            boilerhouse(
                ["aggregator", "--redis-url", redis_server.url, "--port", str(agg_port)],
                tmp_path,
                "aggregator",
                {"BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.5"},
            )
        )
        started.append(
            boilerhouse(
                [
                    "api",
                    "--redis-url",
                    redis_server.url,
                    "--port",
                    str(api_port),
                    "--workloads",
                    str(defs),
                    "--data-dir",
                    str(tmp_path / "data"),
                ],
                tmp_path,
                "api",
                {"BOILERHOUSE_HEARTBEAT_INTERVAL_S": "1", "BOILERHOUSE_RUNTIME": "process"},
            )
        )
        agg_url, api_url = f"http://127.0.0.1:{agg_port}", f"http://127.0.0.1:{api_port}"
        wait_http(agg_url + "/readyz", proc=started[0])
        wait_http(api_url + "/healthz", proc=started[1])
        yield agg_url, api_url
    finally:
        for proc in reversed(started):
            proc.stop()


def _exemplar_traces(result: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """trace id -> the labels of the series its exemplar is on."""
    return {e["labels"]["trace_id"]: series["seriesLabels"] for series in result for e in series["exemplars"]}


def test_traceparent_trace_ids_come_back_from_prometheus_query_exemplars(
    procs: tuple[str, str], tmp_path: Path
) -> None:
    agg_url, api_url = procs
    api = httpx.Client(base_url=api_url, timeout=30)
    prom = Prometheus(
        tmp_path / "prometheus",
        [agg_url.removeprefix("http://")],
        flags=("--enable-feature=exemplar-storage",),
    )
    try:
        r = api.post(
            "/api/v1/pools",
            json={"pool_id": "web", "workload_id": "echo", "min_size": 1, "max_size": 1},
            headers={"traceparent": f"00-{_trace(0)}-{PARENT}-01"},
        )
        assert r.status_code == 201, r.text
        prom.start()
        start = time.time() - 60
        # Traffic while Prometheus scrapes every second: each round's latest exemplar per bucket replaces
        # the previous one, so each round waits to be scraped before the next one.
        sent: dict[str, str] = {}
        for n in range(1, 4):
            claim, release, listing = _trace(3 * n), _trace(3 * n + 1), _trace(3 * n + 2)
            r = api.post(
                f"/api/v1/tenants/t{n}/claim",
                json={"pool_id": "web"},
                headers={"traceparent": f"00-{claim}-{PARENT}-01"},
            )
            assert r.status_code == 200, r.text
            assert r.headers["traceparent"].split("-")[1] == claim
            r = api.post(
                f"/api/v1/tenants/t{n}/release", headers={"traceparent": f"00-{release}-{PARENT}-01"}
            )
            assert r.status_code == 200, r.text
            r = api.get("/api/v1/pools", headers={"traceparent": f"00-{listing}-{PARENT}-00"})
            assert r.status_code == 200, r.text
            sent |= {claim: "claim", release: "release", listing: "list"}
            want = {claim, release, listing}

            def stored(result: list[dict[str, Any]], want: set[str] = want) -> bool:
                return want <= set(_exemplar_traces(result))

            wait_for(
                lambda: prom.exemplars(f"{P}http_request_duration_seconds_bucket", start, time.time() + 60),
                f"Prometheus stored the exemplars of round {n}",
                within_s=60,
                poll_s=0.5,
                accept=stored,
            )
        end = time.time() + 60
        http = _exemplar_traces(prom.exemplars(f"{P}http_request_duration_seconds_bucket", start, end))
        assert set(sent) <= set(http), (sent, http)
        for trace_id, what in sent.items():
            labels = http[trace_id]
            path = {
                "claim": "/api/v1/tenants/{tenant_id}/claim",
                "release": "/api/v1/tenants/{tenant_id}/release",
                "list": "/api/v1/pools",
            }[what]
            assert (labels["__name__"], labels["path"]) == (f"{P}http_request_duration_seconds_bucket", path)
            assert labels["le"] != "", labels
        # The claims' trace ids are on the acquire-duration histogram too, released ones on release.
        acquired = _exemplar_traces(
            prom.exemplars(f"{P}container_acquire_duration_seconds_bucket", start, end)
        )
        released = _exemplar_traces(
            prom.exemplars(f"{P}container_release_duration_seconds_bucket", start, end)
        )
        assert {t for t, w in sent.items() if w == "claim"} <= set(acquired), acquired
        assert {t for t, w in sent.items() if w == "release"} <= set(released), released
        assert all(labels["pool_id"] == "web" for labels in acquired.values())
        # The exemplar's value is an observation in its bucket; the text format carries no exemplar.
        for series in prom.exemplars(f"{P}http_request_duration_seconds_bucket", start, end):
            le = float(series["seriesLabels"]["le"])
            assert all(float(e["value"]) <= le for e in series["exemplars"])
        assert "trace_id" not in httpx.get(agg_url + "/metrics").text
        scraped = prom.targets()
        assert scraped and all(t["health"] == "up" for t in scraped if t["labels"]["job"] != "prometheus")
    finally:
        prom.stop()
        api.close()
