"""The metrics endpoint's security settings, through real uvicorn servers: auth, bind address, scrape limit."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.aggregator.app import create_app
from services.aggregator.settings import AggregatorSettings, SettingsError
from services.embedded import free_port
from shared.events.publisher import Publisher
from tests.support.expo import parse
from tests.support.procs import ThreadServer, boilerhouse, wait_http
from tests.support.prometheus import Prometheus
from tests.support.wait import wait_for

PASSWORD = "pw-7c1e-not-in-any-log"
TOKEN = "tok-51aa-not-in-any-log"
USER = "prometheus"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


#: ``serve(**settings)``: start the aggregator app with these settings on a real uvicorn server.
Serve = Callable[..., ThreadServer]


@pytest.fixture
def serve(redis_url: str) -> Iterator[Serve]:
    """``serve(**settings)`` starts the aggregator app on a real uvicorn server; all are stopped after."""
    servers: list[ThreadServer] = []

    def start(**overrides: Any) -> ThreadServer:
        settings = AggregatorSettings(redis_url=redis_url, block_ms=50, **overrides)
        server = ThreadServer(create_app(settings)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def status(url: str, headers: dict[str, str] | None = None) -> int:
    return httpx.get(url, headers=headers or {}, timeout=10).status_code


def test_open_by_default(serve: Serve) -> None:
    server = serve()
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200
    assert "# TYPE boilerhouse_pool_size gauge" in r.text
    # Credentials sent to an open endpoint are ignored, not rejected.
    assert status(server.url + "/metrics", bearer("anything")) == 200


def test_basic_auth(serve: Serve) -> None:
    server = serve(metrics_username=USER, metrics_password=PASSWORD)
    url = server.url + "/metrics"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="metrics"'
    assert r.json()["error"] == "unauthorized"
    assert status(url, basic(USER, PASSWORD)) == 200
    assert status(url, basic(USER, PASSWORD + "x")) == 401
    assert status(url, basic("someone", PASSWORD)) == 401
    assert status(url, basic(USER, "")) == 401
    assert status(url, bearer(PASSWORD)) == 401  # basic only: a bearer token is not accepted
    assert status(url, {"Authorization": "Basic %%%not-base64"}) == 401
    assert status(url, {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:x").decode()}) == 401
    # Health and readiness stay open for orchestrators.
    assert status(server.url + "/healthz") == 200
    wait_http(server.url + "/readyz")


def test_bearer_token(serve: Serve) -> None:
    server = serve(metrics_bearer_token=TOKEN)
    url = server.url + "/metrics"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert status(url, bearer(TOKEN)) == 200
    assert status(url, {"Authorization": f"bearer {TOKEN}"}) == 200  # the scheme is case-insensitive
    assert status(url, bearer(TOKEN[:-1])) == 401
    assert status(url, bearer(TOKEN + "x")) == 401
    assert status(url, basic(USER, TOKEN)) == 401
    assert status(server.url + "/healthz") == 200


def test_basic_and_bearer_together(serve: Serve) -> None:
    server = serve(metrics_username=USER, metrics_password=PASSWORD, metrics_bearer_token=TOKEN)
    url = server.url + "/metrics"
    r = httpx.get(url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Basic realm="metrics", Bearer realm="metrics"'
    assert status(url, basic(USER, PASSWORD)) == 200
    assert status(url, bearer(TOKEN)) == 200
    assert status(url, bearer(PASSWORD)) == 401


def test_metrics_disabled_leaves_health_endpoints(serve: Serve) -> None:
    server = serve(metrics_enabled=False)
    assert status(server.url + "/metrics") == 404
    assert status(server.url + "/healthz") == 200


def test_secrets_come_from_env_or_files_and_stay_out_of_repr(tmp_path: Path) -> None:
    env = {
        "BOILERHOUSE_METRICS_USERNAME": USER,
        "BOILERHOUSE_METRICS_PASSWORD": PASSWORD,
        "BOILERHOUSE_METRICS_BEARER_TOKEN": TOKEN,
    }
    settings = AggregatorSettings.from_env(env)
    assert (settings.metrics_username, settings.metrics_password, settings.metrics_bearer_token) == (
        USER,
        PASSWORD,
        TOKEN,
    )
    for text in (repr(settings), str(settings), repr(settings.with_(port=1234))):
        assert PASSWORD not in text and TOKEN not in text
        assert USER in text  # the user name is not a secret and helps debugging
    # *_FILE variants (Docker and Kubernetes secrets); the trailing newline of the file is not part of it.
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    (tmp_path / "tok").write_text(TOKEN + "\n")
    from_files = AggregatorSettings.from_env(
        {
            "BOILERHOUSE_METRICS_USERNAME": USER,
            "BOILERHOUSE_METRICS_PASSWORD_FILE": str(tmp_path / "pw"),
            "BOILERHOUSE_METRICS_BEARER_TOKEN_FILE": str(tmp_path / "tok"),
        }
    )
    assert (from_files.metrics_password, from_files.metrics_bearer_token) == (PASSWORD, TOKEN)
    with pytest.raises(SettingsError, match="BOILERHOUSE_METRICS_PASSWORD_FILE") as missing:
        AggregatorSettings.from_env(
            {
                "BOILERHOUSE_METRICS_USERNAME": USER,
                "BOILERHOUSE_METRICS_PASSWORD_FILE": str(tmp_path / "nope"),
            }
        )
    assert PASSWORD not in str(missing.value)
    with pytest.raises(SettingsError, match="must not contain"):
        AggregatorSettings.from_env(
            {"BOILERHOUSE_METRICS_USERNAME": "a:b", "BOILERHOUSE_METRICS_PASSWORD": "c"}
        )
    with pytest.raises(SettingsError, match="go together") as half:
        AggregatorSettings.from_env({"BOILERHOUSE_METRICS_PASSWORD": PASSWORD})
    assert PASSWORD not in str(half.value)


def test_secrets_never_logged(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = serve(metrics_username=USER, metrics_password=PASSWORD, metrics_bearer_token=TOKEN)
    url = server.url + "/metrics"
    # Near misses and the real secrets, in every place a client can put them.
    for headers in (
        basic(USER, PASSWORD + "1"),
        bearer(TOKEN + "1"),
        bearer(PASSWORD),
        basic(USER, PASSWORD),
        bearer(TOKEN),
        {},
    ):
        httpx.get(url, headers=headers, timeout=10)
    server.__exit__(None, None, None)
    # Everything the server side logged (the test's own HTTP client logs what it sends; it is not ours).
    text = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "rejected scrape" in text  # rejections are logged ...
    assert "auth: basic+bearer" in text  # ... and so is the mode at start-up ...
    assert PASSWORD not in text and TOKEN not in text  # ... but never a secret


def test_aggregator_process_binds_configured_host_and_keeps_secrets_out_of_its_log(
    redis_url: str, tmp_path: Path
) -> None:
    """``boilerhouse aggregator`` with BOILERHOUSE_METRICS_HOST=127.0.0.2: reachable there only."""
    port = free_port("127.0.0.2")
    env = {
        "BOILERHOUSE_REDIS_URL": redis_url,
        "BOILERHOUSE_METRICS_HOST": "127.0.0.2",
        "BOILERHOUSE_METRICS_PORT": str(port),
        "BOILERHOUSE_METRICS_USERNAME": USER,
        "BOILERHOUSE_METRICS_PASSWORD": PASSWORD,
        "BOILERHOUSE_METRICS_BEARER_TOKEN": TOKEN,
    }
    proc = boilerhouse(
        ["--log-level", "DEBUG", "aggregator", "--pidfile", str(tmp_path / "agg.pid")],
        tmp_path,
        "aggregator",
        env,
    )
    try:
        wait_http(f"http://127.0.0.2:{port}/readyz", proc=proc)
        assert status(f"http://127.0.0.2:{port}/metrics", basic(USER, PASSWORD)) == 200
        assert status(f"http://127.0.0.2:{port}/metrics", bearer(TOKEN + "!")) == 401
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (tmp_path / "agg.pid").read_text().strip() == str(proc.pid)
    finally:
        proc.stop()
    log = proc.output()
    assert "127.0.0.2" in log and "rejected scrape" in log
    assert PASSWORD not in log and TOKEN not in log


def test_prometheus_scrapes_with_basic_auth(serve: Serve, tmp_path: Path) -> None:
    """The documented scrape config works against a protected aggregator, and wrong credentials show as down."""
    server = serve(metrics_username=USER, metrics_password=PASSWORD)
    (tmp_path / "pw").write_text(PASSWORD)
    (tmp_path / "bad").write_text("wrong")
    target = f"127.0.0.1:{server.port}"
    good = Prometheus(
        tmp_path / "good",
        [target],
        rule_files=[],
        auth={"basic_auth": {"username": USER, "password_file": str(tmp_path / "pw")}},
    )
    bad = Prometheus(
        tmp_path / "bad-prom",
        [target],
        rule_files=[],
        auth={"basic_auth": {"username": USER, "password_file": str(tmp_path / "bad")}},
    )
    with good, bad:
        up = 'up{job="boilerhouse-aggregator"}'
        good.wait_for(up, lambda r: [s.value for s in r] == [1.0])
        bad.wait_for(up, lambda r: [s.value for s in r] == [0.0])
        assert good.value("count(boilerhouse_aggregator_checkpoint_age_seconds)") == 1.0
        assert bad.query("boilerhouse_aggregator_checkpoint_age_seconds") == []


def _fill_state(redis_url: str, server_url: str, series: int, headers: dict[str, str] | None = None) -> None:
    """Give the aggregator ``series`` HTTP histogram series so that one scrape takes a while to render."""
    pub = Publisher(redis_url, "load", heartbeat_interval_s=3600, flush_interval_s=0.01)
    try:
        for i in range(series):
            pub.emit(
                "http.request", {"method": "GET", "path": f"/load/{i}", "status": 200, "duration_s": 0.01}
            )
        assert pub.flush(30)
    finally:
        pub.close()
    name = "boilerhouse_http_requests_total"
    for _ in range(200):
        samples = parse(httpx.get(server_url + "/metrics", headers=headers or {}, timeout=30).text)
        if sum(1 for n, _ in samples if n == name) >= series:
            return
    raise AssertionError("events were not folded")


def _concurrent_scrapes(
    url: str, n: int, headers: list[dict[str, str]] | None = None
) -> list[httpx.Response]:
    """``n`` scrapes released at once (the i-th with ``headers[i]``); responses in completion order."""
    barrier = threading.Barrier(n)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def scrape(h: dict[str, str]) -> None:
        with httpx.Client(timeout=60, headers=h) as client:
            barrier.wait()
            r = client.get(url)
        with lock:
            responses.append(r)

    threads = [threading.Thread(target=scrape, args=((headers or [{}] * n)[i],)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(responses) == n
    return responses


def test_concurrent_scrape_limit(serve: Serve, redis_url: str) -> None:
    limited = serve(max_concurrent_scrapes=1)
    _fill_state(redis_url, limited.url, 3000)
    responses = _concurrent_scrapes(limited.url + "/metrics", 6)
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert set(codes) == {200, 429}
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "too_many_scrapes"
    # Slots are given back: sequential scrapes all succeed, and health checks never count against the limit.
    assert [status(limited.url + "/metrics") for _ in range(3)] == [200, 200, 200]
    assert status(limited.url + "/healthz") == 200

    # With as many slots as concurrent scrapers, nobody is turned away (same events, own consumer group).
    roomy = serve(max_concurrent_scrapes=4, group="roomy")
    wait_http(roomy.url + "/readyz")
    _wait_same_series(roomy.url, 3000)
    assert sorted(r.status_code for r in _concurrent_scrapes(roomy.url + "/metrics", 4)) == [200] * 4


def _wait_same_series(url: str, series: int) -> None:
    def http_series() -> int:
        samples = parse(httpx.get(url + "/metrics", timeout=30).text)
        return sum(1 for n, _ in samples if n == "boilerhouse_http_requests_total")

    wait_for(
        http_series,
        f"the second aggregator folds {series} request series",
        within_s=60,
        accept=lambda n: n >= series,
    )


def test_unauthenticated_scrapes_never_take_a_slot(serve: Serve, redis_url: str) -> None:
    """Credentials are checked before the concurrency limit: strangers get 401, never 429."""
    server = serve(max_concurrent_scrapes=1, metrics_bearer_token=TOKEN)
    _fill_state(redis_url, server.url, 3000, bearer(TOKEN))
    good, bad = bearer(TOKEN), bearer("guess")
    responses = _concurrent_scrapes(server.url + "/metrics", 8, [good, bad] * 4)
    by_auth: dict[bool, list[int]] = {True: [], False: []}
    for r in responses:
        by_auth[r.request.headers["authorization"] == good["Authorization"]].append(r.status_code)
    assert sorted(set(by_auth[False])) == [401]
    assert 200 in by_auth[True] and 429 in by_auth[True], by_auth[True]


def test_scrape_limit_setting_from_env() -> None:
    assert AggregatorSettings.from_env({}).max_concurrent_scrapes == 4
    assert (
        AggregatorSettings.from_env(
            {"BOILERHOUSE_METRICS_MAX_CONCURRENT_SCRAPES": "2"}
        ).max_concurrent_scrapes
        == 2
    )
    with pytest.raises(SettingsError, match="BOILERHOUSE_METRICS_MAX_CONCURRENT_SCRAPES"):
        AggregatorSettings.from_env({"BOILERHOUSE_METRICS_MAX_CONCURRENT_SCRAPES": "0"})
    assert AggregatorSettings.from_env({"BOILERHOUSE_METRICS_HOST": "0.0.0.0"}).host == "0.0.0.0"
