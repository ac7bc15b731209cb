"""The Redis edge without a server: seed lists in BOILERHOUSE_REDIS_URL, their checks, and the error set."""

from __future__ import annotations

import pytest
import redis
from redis.exceptions import CrossSlotTransactionError, RedisClusterException, SlotNotCoveredError

from shared.events.bus import ERRORS, NotReplicated, RedisSettings, check_url, safe_url, seed_urls
from shared.settings import SettingsError


@pytest.mark.parametrize(
    ("url", "seeds"),
    [
        ("redis://h:6379/0", ["redis://h:6379/0"]),
        ("unix:///run/redis.sock", ["unix:///run/redis.sock"]),
        ("redis://a:7000,b:7001,c:7002", ["redis://a:7000", "redis://b:7001", "redis://c:7002"]),
        (
            "rediss://u:p@a:7000, b:7001/0?ssl_cert_reqs=none",
            ["rediss://u:p@a:7000/0?ssl_cert_reqs=none", "rediss://u:p@b:7001/0?ssl_cert_reqs=none"],
        ),
        ("redis://[::1]:7000,[::1]:7001", ["redis://[::1]:7000", "redis://[::1]:7001"]),
        ("redis://a:7000,redis://b:7001", ["redis://a:7000", "redis://b:7001"]),
        # A comma in the password is not a seed separator.
        ("redis://u:p,w@a:7000,b:7001", ["redis://u:p,w@a:7000", "redis://u:p,w@b:7001"]),
    ],
)
def test_seed_lists(url: str, seeds: list[str]) -> None:
    check_url(url)
    assert seed_urls(url) == seeds
    assert RedisSettings(url).seeds == seeds


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///a.sock,unix:///b.sock", "several seed nodes need a redis:// or rediss:// URL"),
        ("redis://a:7000,,b:7001", "empty seed"),
        ("redis://a:7000,b:x", "invalid port"),
        ("redis://a:7000,b:7001/1", "only database 0"),
    ],
)
def test_bad_seed_lists_name_the_setting(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as err:
        check_url(url)
    assert "BOILERHOUSE_REDIS_URL" in str(err.value)


def test_a_seed_list_hides_its_password() -> None:
    url = "redis://user:s3cret@a:7000,b:7001"
    assert "s3cret" not in safe_url(url)
    assert "s3cret" not in repr(RedisSettings(url))


def test_every_cluster_failure_is_a_bus_error() -> None:
    """What callers catch covers what a cluster client raises outside RedisError (see docs/operations.md)."""
    for exc in (
        redis.ConnectionError("refused"),
        redis.exceptions.MovedError("1 127.0.0.1:7000"),
        redis.exceptions.ClusterDownError("CLUSTERDOWN"),
        RedisClusterException("Redis Cluster cannot be connected"),
        SlotNotCoveredError("slot 1 is not covered"),
        CrossSlotTransactionError("cross slot"),
        NotReplicated("0 of 1 replicas"),
    ):
        assert isinstance(exc, ERRORS), exc
    assert not issubclass(RedisClusterException, redis.RedisError)  # why ERRORS exists
