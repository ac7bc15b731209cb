"""Issue 11, item 11: configuration mistakes say what is wrong.

Settings that cannot work stop the service at start with a message naming the variable (exit 2, no
traceback); a Redis that refuses the aggregator (wrong password or user, missing permission, nothing
listening) makes ``/readyz`` a 503 whose JSON says why, and the log says it once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.embedded import EmbeddedRedis, free_port
from tests.aggregator.harness import aggregator
from tests.conftest import real_redis_binary
from tests.support.wait import wait_for

PASSWORD = "right-Pa55word"
WRONG = "wr0ng-Pa55word"


def boilerhouse(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )


# ---- refused at start: the examples -------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "message"),
    [
        (
            ["aggregator"],
            {"BOILERHOUSE_METRICS_BEARER_TOKEN": ""},
            "BOILERHOUSE_METRICS_BEARER_TOKEN is set but empty",
        ),
        (["aggregator"], {"BOILERHOUSE_METRICS_BEARER_TOKEN_FILE": "{empty}"}, "the file is empty"),
        (["aggregator"], {"BOILERHOUSE_METRICS_BEARER_TOKEN_FILE": ""}, "_FILE is set but empty"),
        (
            ["aggregator"],
            {"BOILERHOUSE_METRICS_USERNAME": "prom", "BOILERHOUSE_METRICS_PASSWORD_FILE": "{empty}"},
            "BOILERHOUSE_METRICS_PASSWORD_FILE",
        ),
        (["aggregator"], {"BOILERHOUSE_REDIS_PASSWORD_FILE": "{empty}"}, "BOILERHOUSE_REDIS_PASSWORD_FILE"),
        (["api"], {"BOILERHOUSE_REDIS_PASSWORD": ""}, "BOILERHOUSE_REDIS_PASSWORD is set but empty"),
        (["aggregator"], {"BOILERHOUSE_REDIS_URL": "redis://127.0.0.1:99999/0"}, "invalid port"),
        (["aggregator"], {"BOILERHOUSE_REDIS_URL": "redis://::1:6379/0"}, "IPv6 address goes in brackets"),
        (["api"], {"BOILERHOUSE_REDIS_URL": "redis://fe80::1:6379"}, "IPv6 address goes in brackets"),
        (["aggregator"], {"BOILERHOUSE_REDIS_URL": "redis://127.0.0.1:0/0"}, "port must be in 1..65535"),
        (["aggregator"], {"BOILERHOUSE_REDIS_URL": "redis://h:6379/zero"}, "database must be a number"),
        (["aggregator"], {"BOILERHOUSE_HTTP_ROUTES": "/a/../b"}, "BOILERHOUSE_HTTP_ROUTES"),
    ],
)
def test_settings_that_cannot_work_stop_the_service_with_a_message(
    tmp_path: Path, command: list[str], env: dict[str, str], message: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    env = {k: v.replace("{empty}", str(tmp_path / "empty")) for k, v in env.items()}
    result = boilerhouse(command, env)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_ipv6_literal_in_brackets_is_accepted() -> None:
    from services.aggregator.settings import AggregatorSettings

    assert AggregatorSettings(redis_url="redis://[::1]:6379/0").redis.url == "redis://[::1]:6379/0"


# ---- refused by Redis: /readyz and the log say why ------------------------------------------------------


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that wants a password, with a user that may only PING."""
    server = EmbeddedRedis(
        workdir=tmp_path_factory.mktemp("locked-redis"),
        binary=real_redis_binary(),
        allow_fake=False,
        extra_args=("--requirepass", PASSWORD),
    )
    server.start()
    admin = redis.Redis.from_url(server.url, password=PASSWORD)
    admin.acl_setuser("pinger", enabled=True, passwords=[f"+{PASSWORD}"], commands=["+ping", "+hello"])
    admin.close()
    yield server.url
    server.stop()


def _reason(url: str, what: str) -> tuple[int, dict[str, Any]]:
    """(status, body) of /readyz once it gives a reason; a failure shows the last body seen."""

    def probe() -> tuple[int, dict[str, Any]]:
        r = httpx.get(url + "/readyz", timeout=5)
        return r.status_code, r.json()

    return wait_for(probe, what, accept=lambda got: "reason" in got[1])


@pytest.mark.parametrize(
    ("credentials", "reason", "says"),
    [
        ({"redis_password": WRONG}, "authentication_failed", "BOILERHOUSE_REDIS_PASSWORD"),
        ({"redis_username": "nobody", "redis_password": PASSWORD}, "authentication_failed", "user 'nobody'"),
        ({}, "authentication_required", "BOILERHOUSE_REDIS_PASSWORD"),
        ({"redis_username": "pinger", "redis_password": PASSWORD}, "permission_denied", "xgroup|create"),
    ],
    ids=["wrong-password", "unknown-user", "no-password", "missing-permission"],
)
def test_readyz_and_the_log_say_why_redis_refuses_the_aggregator(
    locked_redis: str,
    caplog: pytest.LogCaptureFixture,
    credentials: dict[str, str],
    reason: str,
    says: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.aggregator.consumer")
    with aggregator(locked_redis, **credentials) as agg:
        status, body = _reason(agg.url, f"/readyz gives the reason {reason}")
        assert status == 503
        assert body["status"] == "starting" and body["reason"] == reason, body
        assert says in body["detail"] and body["detail"].startswith("consumer not set up yet: "), body
        # Retried quietly: the reason is logged once, at ERROR, then repeats at DEBUG.
        wait_for(
            lambda: len([r for r in caplog.records if r.levelno == logging.DEBUG]) >= 2 or None,
            "two more attempts",
        )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].startswith("cannot set up the consumer: ") and says in errors[0]
    for text in (str(body), *errors):
        assert PASSWORD not in text and WRONG not in text


def test_readyz_says_nothing_listens_at_the_redis_url(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with aggregator(dead) as agg:
        status, body = _reason(agg.url, "/readyz gives a reason")
        assert httpx.get(agg.url + "/healthz").status_code == 200
    assert status == 503 and body["reason"] == "connection_refused"
    assert (
        body["detail"]
        == f"consumer not set up yet: connection refused by {dead}: is Redis running there? (BOILERHOUSE_REDIS_URL)"
    )


def test_the_right_password_makes_it_ready_without_a_reason(locked_redis: str) -> None:
    with aggregator(locked_redis, redis_password=PASSWORD) as agg:
        wait_for(lambda: httpx.get(agg.url + "/readyz", timeout=5).status_code == 200 or None, "ready")
        assert httpx.get(agg.url + "/readyz").json() == {"status": "ready", "partitions": [0]}
