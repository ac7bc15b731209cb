"""Shared fixtures: a real redis-server per test session (free port, stopped by pid)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from services.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def real_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./scripts/install-system-deps.sh (make test does)")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session; tests that restart or kill Redis start their own."""
    server = EmbeddedRedis(
        workdir=tmp_path_factory.mktemp("redis"), binary=real_redis_binary(), allow_fake=False
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session server, emptied for this test."""
    client = redis.Redis.from_url(redis_server.url, protocol=2)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield client
    client.close()
