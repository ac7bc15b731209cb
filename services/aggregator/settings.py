"""Aggregator configuration, built once from the environment by the entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from services.api.route_table import TEMPLATES as API_TEMPLATES
from shared.events.bus import DEFAULT_URL, RedisSettings, check_url
from shared.events.schema import MAX_PATH_LEN, PATH_PATTERN
from shared.events.streams import DEFAULT_GROUP, DEFAULT_PREFIX
from shared.settings import SettingsError, env_bool, env_number, env_secret

from .fold import Limits

__all__ = ["AggregatorSettings", "SettingsError"]

#: Upper bound of the partition count (each partition is a stream, a consumer-group cursor and a state).
MAX_PARTITIONS = 4096
#: Upper bound of durations in seconds (about 300 years: "forever", but a finite number).
MAX_SECONDS = 1e10


#: ``BOILERHOUSE_HTTP_ROUTES`` words: the Boilerhouse API's route table, or no table at all.
API_ROUTES = "api"
ANY_ROUTE = "any"


def parse_http_routes(spec: str) -> frozenset[str] | None:
    """The route table a ``BOILERHOUSE_HTTP_ROUTES`` value names (None: every valid template is kept).

    ``api`` (the default) is the Boilerhouse API's route table (services/api/route_table.py); ``any`` keeps
    every template the contract allows; otherwise a comma-separated list of route templates, which may
    include ``api``.
    """
    items = [item.strip() for item in spec.split(",") if item.strip()] or [API_ROUTES]
    if ANY_ROUTE in items:
        if len(items) > 1:
            raise SettingsError(f"BOILERHOUSE_HTTP_ROUTES: {ANY_ROUTE!r} cannot be combined with templates")
        return None
    table: set[str] = set()
    for item in items:
        if item == API_ROUTES:
            table |= API_TEMPLATES
        elif len(item) <= MAX_PATH_LEN and PATH_PATTERN.match(item):
            table.add(item)
        else:
            raise SettingsError(
                f"BOILERHOUSE_HTTP_ROUTES: {item[:80]!r} is not a route template "
                "(docs/events.md, Route templates), 'api' or 'any'"
            )
    return frozenset(table)


@dataclass(frozen=True)
class AggregatorSettings:
    """Everything the aggregator needs. Secrets are excluded from ``repr``."""

    redis_url: str = DEFAULT_URL
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
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
    #: Sources remembered at most (dedupe positions, liveness, snapshot values); see fold.Limits.
    max_sources: int = 100_000
    #: A producer timestamp further than this from its entry's time (Redis' clock) counts as clock skew.
    max_clock_skew_s: float = 300.0
    #: ``BOILERHOUSE_HTTP_ROUTES``: which route templates may be ``path`` labels (:func:`parse_http_routes`).
    http_routes: str = API_ROUTES
    read_count: int = 200
    block_ms: int = 500
    max_concurrent_scrapes: int = 4
    metrics_username: str | None = None
    metrics_password: str | None = field(default=None, repr=False)
    metrics_bearer_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_url(self.redis_url)
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
        parse_http_routes(self.http_routes)

    @property
    def route_table(self) -> frozenset[str] | None:
        """The route table of ``http_routes`` (None: any valid template is kept as the ``path`` label)."""
        return parse_http_routes(self.http_routes)

    @property
    def limits(self) -> Limits:
        return Limits(
            series_cap=self.series_cap,
            routes=self.route_table,
            max_sources=self.max_sources,
            clock_skew_s=self.max_clock_skew_s,
        )

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings(self.redis_url, self.redis_username, self.redis_password)

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
        bus = RedisSettings.from_env(env)
        return cls(
            redis_url=bus.url,
            redis_username=bus.username,
            redis_password=bus.password,
            host=env.get("BOILERHOUSE_METRICS_HOST", d.host),
            port=env_number(env, "BOILERHOUSE_METRICS_PORT", d.port, int, 1, 65535),
            metrics_enabled=env_bool(env, "BOILERHOUSE_METRICS_ENABLED", d.metrics_enabled),
            metrics_path=env.get("BOILERHOUSE_METRICS_PATH", d.metrics_path),
            metrics_prefix=env.get("BOILERHOUSE_METRICS_PREFIX", d.metrics_prefix),
            key_prefix=env.get("BOILERHOUSE_STREAM_PREFIX", d.key_prefix),
            group=env.get("BOILERHOUSE_CONSUMER_GROUP", d.group),
            partitions=env_number(env, "BOILERHOUSE_PARTITIONS", d.partitions, int, 1, MAX_PARTITIONS),
            shard=env_number(env, "BOILERHOUSE_AGGREGATOR_SHARD", d.shard, int, 0, MAX_PARTITIONS - 1),
            shards=env_number(env, "BOILERHOUSE_AGGREGATOR_SHARDS", d.shards, int, 1, MAX_PARTITIONS),
            source_ttl_s=env_number(env, "BOILERHOUSE_SOURCE_TTL_S", d.source_ttl_s, float, 0.1, MAX_SECONDS),
            source_forget_s=env_number(
                env, "BOILERHOUSE_SOURCE_FORGET_S", d.source_forget_s, float, 1, MAX_SECONDS
            ),
            checkpoint_interval_s=env_number(
                env, "BOILERHOUSE_CHECKPOINT_INTERVAL_S", d.checkpoint_interval_s, float, 0.01, MAX_SECONDS
            ),
            retention_s=env_number(env, "BOILERHOUSE_RETENTION_S", d.retention_s, float, 1, MAX_SECONDS),
            series_cap=env_number(env, "BOILERHOUSE_SERIES_CAP", d.series_cap, int, 1, 10_000_000),
            max_sources=env_number(env, "BOILERHOUSE_MAX_SOURCES", d.max_sources, int, 1, 10_000_000),
            max_clock_skew_s=env_number(
                env, "BOILERHOUSE_MAX_CLOCK_SKEW_S", d.max_clock_skew_s, float, 1, MAX_SECONDS
            ),
            http_routes=env.get("BOILERHOUSE_HTTP_ROUTES") or d.http_routes,
            max_concurrent_scrapes=env_number(
                env, "BOILERHOUSE_METRICS_MAX_CONCURRENT_SCRAPES", d.max_concurrent_scrapes, int, 1, 1024
            ),
            metrics_username=env.get("BOILERHOUSE_METRICS_USERNAME") or None,
            metrics_password=env_secret(env, "BOILERHOUSE_METRICS_PASSWORD"),
            metrics_bearer_token=env_secret(env, "BOILERHOUSE_METRICS_BEARER_TOKEN"),
        )
