"""Aggregator configuration, built once from the environment by the entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.events.streams import DEFAULT_GROUP, DEFAULT_PREFIX


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """Reject a Redis URL redis-py cannot use, with a message naming the setting (no credentials)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise SettingsError(
            f"Redis URL must start with {', '.join(s + '://' for s in REDIS_SCHEMES)} "
            f"(BOILERHOUSE_REDIS_URL or --redis-url); got scheme {scheme or 'none'!r}"
        )


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def env_number(
    environ: Mapping[str, str], name: str, default: Any, kind: type = int, minimum: float = 0
) -> Any:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name}={raw!r}: expected {expected}") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r}: must be >= {minimum}")
    return value


def env_secret(environ: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME``, or read from the file named by ``NAME_FILE`` (Docker/Kubernetes secrets).

    Error messages name the variable and the file, never the value.
    """
    value = environ.get(name)
    if value:
        return value
    path = environ.get(name + "_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{name}_FILE={path!r}: cannot read it ({exc.strerror})") from None
    return value or None


@dataclass(frozen=True)
class AggregatorSettings:
    """Everything the aggregator needs. Secrets are excluded from ``repr``."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 9464
    metrics_enabled: bool = True
    metrics_path: str = "/metrics"
    metrics_prefix: str = "boilerhouse_"
    key_prefix: str = DEFAULT_PREFIX
    group: str = DEFAULT_GROUP
    partitions: int = 1
    shard: int = 0
    shards: int = 1
    source_ttl_s: float = 30.0
    #: Per-source bookkeeping (last seq for dedupe) is dropped after this much silence (producer clock).
    source_forget_s: float = 86_400.0
    checkpoint_interval_s: float = 2.0
    checkpoint_events: int = 200_000
    retention_s: float = 7 * 24 * 3600.0
    series_cap: int = 10_000
    read_count: int = 200
    block_ms: int = 500
    max_concurrent_scrapes: int = 4
    metrics_username: str | None = None
    metrics_password: str | None = field(default=None, repr=False)
    metrics_bearer_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_redis_url(self.redis_url)
        if not self.metrics_path.startswith("/") or self.metrics_path in ("/healthz", "/readyz"):
            raise SettingsError(f"metrics path {self.metrics_path!r} must start with / and not clash")
        if not 0 <= self.shard < self.shards:
            raise SettingsError(f"shard {self.shard} is not in 0..{self.shards - 1}")
        if self.partitions < 1:
            raise SettingsError("partitions must be >= 1")
        if not 0 < self.port < 65536:
            raise SettingsError(f"port {self.port} is not a TCP port")
        if self.metrics_username and ":" in self.metrics_username:
            raise SettingsError(
                "BOILERHOUSE_METRICS_USERNAME must not contain ':' (basic auth separates at it)"
            )
        if bool(self.metrics_username) != bool(self.metrics_password):
            raise SettingsError("BOILERHOUSE_METRICS_USERNAME and BOILERHOUSE_METRICS_PASSWORD go together")

    @property
    def my_partitions(self) -> list[int]:
        return [p for p in range(self.partitions) if p % self.shards == self.shard]

    @property
    def consumer_name(self) -> str:
        return f"shard-{self.shard}"

    def with_(self, **changes: Any) -> AggregatorSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AggregatorSettings:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            redis_url=env.get("BOILERHOUSE_REDIS_URL") or d.redis_url,  # empty = unset, as for numbers
            host=env.get("BOILERHOUSE_METRICS_HOST", d.host),
            port=env_number(env, "BOILERHOUSE_METRICS_PORT", d.port, minimum=1),
            metrics_enabled=env_bool(env, "BOILERHOUSE_METRICS_ENABLED", d.metrics_enabled),
            metrics_path=env.get("BOILERHOUSE_METRICS_PATH", d.metrics_path),
            metrics_prefix=env.get("BOILERHOUSE_METRICS_PREFIX", d.metrics_prefix),
            key_prefix=env.get("BOILERHOUSE_STREAM_PREFIX", d.key_prefix),
            group=env.get("BOILERHOUSE_CONSUMER_GROUP", d.group),
            partitions=env_number(env, "BOILERHOUSE_PARTITIONS", d.partitions, minimum=1),
            shard=env_number(env, "BOILERHOUSE_AGGREGATOR_SHARD", d.shard),
            shards=env_number(env, "BOILERHOUSE_AGGREGATOR_SHARDS", d.shards, minimum=1),
            source_ttl_s=env_number(env, "BOILERHOUSE_SOURCE_TTL_S", d.source_ttl_s, float, 0.1),
            source_forget_s=env_number(env, "BOILERHOUSE_SOURCE_FORGET_S", d.source_forget_s, float, 1),
            checkpoint_interval_s=env_number(
                env, "BOILERHOUSE_CHECKPOINT_INTERVAL_S", d.checkpoint_interval_s, float, 0.01
            ),
            retention_s=env_number(env, "BOILERHOUSE_RETENTION_S", d.retention_s, float, 1),
            series_cap=env_number(env, "BOILERHOUSE_SERIES_CAP", d.series_cap, minimum=1),
            max_concurrent_scrapes=env_number(
                env, "BOILERHOUSE_METRICS_MAX_CONCURRENT_SCRAPES", d.max_concurrent_scrapes, minimum=1
            ),
            metrics_username=env.get("BOILERHOUSE_METRICS_USERNAME") or None,
            metrics_password=env_secret(env, "BOILERHOUSE_METRICS_PASSWORD"),
            metrics_bearer_token=env_secret(env, "BOILERHOUSE_METRICS_BEARER_TOKEN"),
        )
