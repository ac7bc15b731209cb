"""API server configuration, built once from the environment by the entry point and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.events.bus import DEFAULT_URL, RedisSettings, check_url
from shared.events.streams import DEFAULT_PREFIX
from shared.settings import SettingsError, env_number

from .limits import SETTINGS


@dataclass(frozen=True)
class ApiSettings:
    """Everything the API server needs."""

    redis_url: str = DEFAULT_URL
    redis_username: str | None = None
    redis_password: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    key_prefix: str = DEFAULT_PREFIX
    partitions: int = 1
    heartbeat_interval_s: float = 5.0
    buffer_size: int = 100_000
    #: Replicas that must have each batch before it counts as written (WAIT); 0: do not wait.
    publish_wait_replicas: int = 0
    publish_wait_timeout_ms: int = 100
    spool_dir: str | None = None
    workloads_dir: str | None = None
    data_dir: str = ".boilerhouse/data"
    runtime: str = "process"
    # Pool and sync defaults; a pool-creation request may override each per pool.
    affinity_timeout_s: float = 60.0
    acquire_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    health_interval_s: float = 10.0
    rclone: str = "rclone"
    #: YAML file of pools created at start-up (a list of pool-creation bodies).
    pools_file: str | None = None
    #: Seconds a client has to send a whole request (headers and body) before its connection is closed.
    http_read_timeout_s: float = 10.0
    #: Open connections the HTTP server holds at most (also kept below the open-files limit).
    http_max_connections: int = 1000

    def __post_init__(self) -> None:
        check_url(self.redis_url)
        for variable, (name, limits) in SETTINGS.items():
            value = getattr(self, name)
            problem = limits.problem(value)
            if problem is not None:
                raise SettingsError(f"{variable} ({name}) {problem}, got {value!r}")

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings(self.redis_url, self.redis_username, self.redis_password)

    def with_(self, **changes: Any) -> ApiSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Settings from ``BOILERHOUSE_*`` variables; numbers are range-checked (:data:`limits.SETTINGS`)."""
        env = os.environ if environ is None else environ
        d = cls()
        bus = RedisSettings.from_env(env)
        numbers = {}
        for variable, (name, limits) in SETTINGS.items():
            kind = int if limits.integer else float
            try:
                numbers[name] = env_number(env, variable, getattr(d, name), kind, -math.inf)
            except SettingsError as exc:
                raise SettingsError(f"{exc} in {limits}") from None
        return cls(
            redis_url=bus.url,
            redis_username=bus.username,
            redis_password=bus.password,
            host=env.get("BOILERHOUSE_API_HOST", d.host),
            key_prefix=env.get("BOILERHOUSE_STREAM_PREFIX", d.key_prefix),
            spool_dir=env.get("BOILERHOUSE_SPOOL_DIR") or None,
            workloads_dir=env.get("BOILERHOUSE_WORKLOADS_DIR") or None,
            data_dir=env.get("BOILERHOUSE_DATA_DIR", d.data_dir),
            runtime=env.get("BOILERHOUSE_RUNTIME", d.runtime),
            rclone=env.get("BOILERHOUSE_RCLONE", d.rclone),
            pools_file=env.get("BOILERHOUSE_POOLS_FILE") or None,
            **numbers,
        )
