"""The Redis edge: every client the project uses is built here from one :class:`RedisSettings`.

After arq's ``RedisSettings`` + ``create_pool()``: URL, credentials, TLS (``rediss://``), timeouts and
retries live in one place, with one profile per role (see :data:`ROLES`), so a publisher, the
aggregator and the command-line tools differ only where their jobs differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.settings import SettingsError, env_secret

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_URL = "redis://127.0.0.1:6379/0"

Role = Literal["publisher", "consumer", "tool"]


@dataclass(frozen=True, slots=True)
class Profile:
    """Timeouts and retries of one role.

    ``socket_timeout_s`` bounds every reply (a blocking read adds its own block time);
    ``retries`` is how often redis-py itself retries a command after a connection error or timeout.
    """

    socket_timeout_s: float
    connect_timeout_s: float
    retries: int
    health_check_interval_s: int


#: Why they differ: a publisher's flusher must notice an outage within seconds and has its own
#: backoff and spool. The aggregator waits longer (its reads block). Neither lets redis-py retry: a
#: retried MULTI/EXEC whose reply was lost runs twice (measured: the checkpoint's dead letters were
#: written twice), and a retried XADD is a duplicate entry; both loops retry themselves, knowing what
#: may have happened (the consumer compares the checkpoint it tried to write). Tools only read (and
#: rebuild writes idempotent keys), so one transparent retry is harmless there; they read large pages.
ROLES: Mapping[Role, Profile] = {
    "publisher": Profile(socket_timeout_s=2.0, connect_timeout_s=1.0, retries=0, health_check_interval_s=0),
    "consumer": Profile(socket_timeout_s=10.0, connect_timeout_s=2.0, retries=0, health_check_interval_s=30),
    "tool": Profile(socket_timeout_s=30.0, connect_timeout_s=5.0, retries=1, health_check_interval_s=0),
}


def check_url(url: str) -> None:
    """Reject a Redis URL that cannot be used, with a message naming the setting (never credentials)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    where = "(BOILERHOUSE_REDIS_URL or --redis-url)"
    if scheme not in SCHEMES:
        raise SettingsError(
            f"Redis URL must start with {', '.join(s + '://' for s in SCHEMES)} {where}; "
            f"got scheme {scheme or 'none'!r}"
        )
    if scheme == "unix":
        if not urlsplit(url).path:
            raise SettingsError(f"Redis URL unix:// needs a socket path, e.g. unix:///run/redis.sock {where}")
        return
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        netloc = parts.netloc.rpartition("@")[2]
        hint = " (an IPv6 address goes in brackets: redis://[::1]:6379)" if netloc.count(":") > 1 else ""
        raise SettingsError(f"Redis URL has an invalid port in {netloc!r}{hint} {where}") from None
    if port == 0:
        raise SettingsError(f"Redis URL port must be in 1..65535 {where}")
    if not parts.hostname:
        raise SettingsError(f"Redis URL has no host {where}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise SettingsError(f"Redis URL database must be a number, got {db!r} {where}")


def safe_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the event bus is and how to reach it. Secrets are excluded from ``repr``.

    Parameters:
        url: ``redis://``, ``rediss://`` (TLS; ``?ssl_ca_certs=...`` etc. as redis-py reads them) or
            ``unix://``. May carry ``user:password@`` too, but ``username``/``password`` keep the
            secret out of process listings.
        username: Redis ACL user (``BOILERHOUSE_REDIS_USERNAME``).
        password: its password (``BOILERHOUSE_REDIS_PASSWORD`` or ``BOILERHOUSE_REDIS_PASSWORD_FILE``).
    """

    url: str = DEFAULT_URL
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_url(self.url)

    def __repr__(self) -> str:
        auth = f", username={self.username!r}" if self.username else ""
        return f"RedisSettings(url={safe_url(self.url)!r}{auth})"

    def with_url(self, url: str | None) -> RedisSettings:
        return self if url is None else replace(self, url=url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisSettings:
        env = os.environ if environ is None else environ
        return cls(
            url=env.get("BOILERHOUSE_REDIS_URL") or DEFAULT_URL,  # empty = unset
            username=env.get("BOILERHOUSE_REDIS_USERNAME") or None,
            password=env_secret(env, "BOILERHOUSE_REDIS_PASSWORD"),
        )


#: The client type every component receives.
Client = redis.Redis


def connect(settings: RedisSettings, role: Role, *, extra_timeout_s: float = 0.0) -> Client:
    """A client for ``role`` (binary replies, RESP2: the reply shapes :mod:`shared.events.replies` reads).

    ``extra_timeout_s`` is added to the socket timeout for clients that issue blocking reads.
    """
    profile = ROLES[role]
    kwargs: dict[str, object] = {}
    if settings.username is not None:
        kwargs["username"] = settings.username
    if settings.password is not None:
        kwargs["password"] = settings.password
    return redis.Redis.from_url(
        settings.url,
        protocol=2,
        socket_timeout=profile.socket_timeout_s + extra_timeout_s,
        socket_connect_timeout=profile.connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), profile.retries),
        health_check_interval=profile.health_check_interval_s,
        **kwargs,
    )


@dataclass(frozen=True, slots=True)
class BusProblem:
    """Why the event bus cannot be used, said for an operator: ``reason`` is a stable token (for /readyz
    and alerts), ``detail`` a sentence naming the setting to check. Never holds a secret."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def diagnose(exc: BaseException, settings: RedisSettings) -> BusProblem:
    """What a Redis error says about the configuration (wrong password, no such host, refused ...)."""
    where = safe_url(settings.url)
    user = f"user {settings.username!r}" if settings.username else "the default user"
    said = str(exc)[:200]
    credentials = "BOILERHOUSE_REDIS_USERNAME / BOILERHOUSE_REDIS_PASSWORD(_FILE)"
    if isinstance(exc, redis.AuthenticationError):
        if "required" in said.lower():
            return BusProblem(
                "authentication_required",
                f"authentication required: Redis at {where} wants credentials and none were given "
                f"(set {credentials})",
            )
        return BusProblem(
            "authentication_failed",
            f"authentication failed: Redis at {where} refused {user} or its password "
            f"(check {credentials}; Redis said: {said})",
        )
    if isinstance(exc, redis.ResponseError) and "without any password configured" in said:
        return BusProblem(
            "authentication_failed",
            f"authentication failed: Redis at {where} has no password set, but one was given "
            "(unset BOILERHOUSE_REDIS_PASSWORD, or configure Redis' users)",
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return BusProblem(
            "permission_denied",
            f"permission denied: the Redis ACL of {user} at {where} does not allow what this service needs "
            f"(see the ACL users in docs/operations.md; Redis said: {said})",
        )
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return BusProblem("timeout", f"timed out talking to Redis at {where} ({said})")
    if isinstance(exc, redis.ConnectionError | OSError):
        if "refused" in said.lower():
            return BusProblem(
                "connection_refused",
                f"connection refused by {where}: is Redis running there? (BOILERHOUSE_REDIS_URL)",
            )
        if any(s in said for s in ("Name or service not known", "nodename nor servname", "resolution")):
            return BusProblem("unknown_host", f"cannot resolve the host of {where} (BOILERHOUSE_REDIS_URL)")
        return BusProblem("unreachable", f"cannot reach Redis at {where}: {said}")
    return BusProblem("bus_error", f"event bus error at {where}: {type(exc).__name__}: {said}")
