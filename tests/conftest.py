"""Shared fixtures: a real redis-server and a real Redis Cluster per test session (free ports, stopped by pid)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from services.embedded import EmbeddedRedis
from tests.support.cluster import ClusterError, LocalRedisCluster


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


# ---- Redis Cluster (tests/support/cluster.py) ---------------------------------------------------


def _cluster(tmp: Path, **kwargs: Any) -> LocalRedisCluster:
    try:
        return LocalRedisCluster(workdir=tmp, **kwargs).start()
    except ClusterError as exc:
        pytest.fail(f"could not start a Redis Cluster: {exc}")


@pytest.fixture(scope="session")
def redis_cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """3 masters, no replicas, for the whole session. Tests must not change its topology (no kill,
    failover or slot moves): use ``redis_cluster_ha`` for that."""
    cluster = _cluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=0)
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_session: LocalRedisCluster) -> LocalRedisCluster:
    """The session cluster, emptied (FLUSHALL on every master) for this test."""
    redis_cluster_session.flushall()
    return redis_cluster_session


@pytest.fixture
def redis_cluster_client(redis_cluster: LocalRedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def redis_cluster_ha(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A fresh 3 masters + 3 replicas cluster for this test alone (kill, failover, reshard freely);
    ``cluster-node-timeout`` 2000 ms, so a killed master's replica takes over in about 3-5 s."""
    cluster = _cluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=2000)
    yield cluster
    cluster.stop()
