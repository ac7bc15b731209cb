"""The Redis edge: every client the project uses is built here from one :class:`RedisSettings`.

After arq's ``RedisSettings`` + ``create_pool()``: URL, credentials, TLS (``rediss://``), timeouts and
retries live in one place, with one profile per role (see :data:`ROLES`), so a publisher, the
aggregator and the command-line tools differ only where their jobs differ.

The bus is a single Redis or a Redis Cluster; :func:`connect` asks the first seed that answers
(``INFO cluster``) and returns redis-py's ``Redis`` or ``RedisCluster`` accordingly. Callers catch
:data:`ERRORS` (``RedisClusterException`` is not a ``RedisError``), and reach the master that serves
one key with :func:`node_client` where redis-py's cluster client cannot do what they need (``WAIT``
counts the writes of its own connection, so it must follow the ``XADD`` s on the same one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoPermissionError, RedisClusterException
from redis.retry import Retry

from shared.settings import SettingsError, env_secret

logger = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_URL = "redis://127.0.0.1:6379/0"

Role = Literal["publisher", "consumer", "tool"]

#: The client type every component receives: one server, or a cluster (both binary, RESP2).
Client: TypeAlias = redis.Redis | RedisCluster


class NotReplicated(redis.RedisError):
    """``WAIT`` saw fewer replicas acknowledge a write than asked for: it may not survive a failover."""


#: Everything the bus can raise for reasons outside the caller: ``RedisError`` (connection errors,
#: timeouts, ``MOVED``/``ASK``/``CLUSTERDOWN`` replies...) and ``RedisClusterException``, which is not a
#: ``RedisError`` (no reachable seed, a slot not covered during a failover, a cross-slot transaction).
ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


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


def seed_urls(url: str) -> list[str]:
    """The URL of each seed node in ``url``: ``redis://[user:pass@]host1:port1,host2:port2[/0][?query]``
    lists several nodes of one cluster, sharing the scheme, credentials, database and query; a
    comma-separated list of whole URLs (``redis://h1:7000,redis://h2:7000``) is taken as it is."""
    whole = [part.strip() for part in url.split(",")]
    if len(whole) > 1 and all("://" in part for part in whole):
        return whole
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or "," not in hostpart:
        return [url]
    cut = min((i for i in (hostpart.find("/"), hostpart.find("?")) if i >= 0), default=len(hostpart))
    hosts, tail = hostpart[:cut], hostpart[cut:]
    return [f"{scheme}://{userinfo}{at}{host.strip()}{tail}" for host in hosts.split(",")]


def check_url(url: str) -> None:
    """Reject a Redis URL that cannot be used, with a message naming the setting (never credentials)."""
    seeds = seed_urls(url)
    if len(seeds) > 1:
        where = "(BOILERHOUSE_REDIS_URL or --redis-url)"
        if not all(seed.startswith(("redis://", "rediss://")) for seed in seeds):
            raise SettingsError(f"several seed nodes need a redis:// or rediss:// URL {where}")
        if any(not urlsplit(seed).netloc.rpartition("@")[2] for seed in seeds):
            raise SettingsError(f"Redis URL has an empty seed between commas {where}")
        for seed in seeds:
            _check_one_url(seed)
        if urlsplit(seeds[0]).path.strip("/") not in ("", "0"):
            raise SettingsError(f"a Redis Cluster has only database 0 {where}")
        return
    _check_one_url(url)


def _check_one_url(url: str) -> None:
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

    @property
    def seeds(self) -> list[str]:
        """One URL per seed node (one, unless the URL lists several nodes of a cluster)."""
        return seed_urls(self.url)

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


def _probe(seeds: list[str], auth: Mapping[str, str], profile: Profile) -> tuple[bool, str]:
    """Ask the seeds in turn whether they are cluster nodes (``INFO cluster``); the first answer counts.

    Returns (cluster?, the seed that answered). Raises ``redis.ConnectionError`` when none answers.
    """
    failures = []
    for url in seeds:
        probe = redis.Redis.from_url(
            urlsplit(url)._replace(path="").geturl(),  # no SELECT: a cluster node refuses it
            protocol=2,
            socket_timeout=profile.connect_timeout_s,
            socket_connect_timeout=profile.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
            **auth,
        )
        try:
            enabled = probe.info("cluster").get("cluster_enabled")
        except NoPermissionError as exc:
            # An ACL user without INFO: several seeds can only mean a cluster.
            logger.info("cannot ask %s whether it is a cluster node (%s)", safe_url(url), exc)
            return len(seeds) > 1, url
        except redis.AuthenticationError:
            raise  # the credentials are wrong, not the seed: another seed would say the same
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            failures.append(f"{safe_url(url)}: {exc}")
            continue
        finally:
            probe.close()
        return bool(enabled), url
    raise redis.ConnectionError("no Redis answered: " + "; ".join(failures))


def connect(settings: RedisSettings, role: Role, *, extra_timeout_s: float = 0.0) -> Client:
    """A client for ``role`` (binary replies, RESP2: the reply shapes :mod:`shared.events.replies` reads).

    A ``redis.Redis`` for a single server, a ``RedisCluster`` when the first seed that answers is a
    cluster node (it discovers the others). Asks a seed first, so it raises one of :data:`ERRORS`
    when no seed answers: long-running roles connect from their retry loops. A ``unix://`` URL is a
    single server and is not asked.

    ``extra_timeout_s`` is added to the socket timeout for clients that issue blocking reads.
    """
    profile = ROLES[role]
    auth: dict[str, str] = {}
    if settings.username is not None:
        auth["username"] = settings.username
    if settings.password is not None:
        auth["password"] = settings.password
    common: dict[str, object] = {
        "protocol": 2,
        "socket_timeout": profile.socket_timeout_s + extra_timeout_s,
        "socket_connect_timeout": profile.connect_timeout_s,
        "health_check_interval": profile.health_check_interval_s,
        **auth,
    }
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), profile.retries)
    seeds = settings.seeds
    if seeds[0].startswith("unix://"):
        return redis.Redis.from_url(settings.url, retry=retry, **common)
    cluster, answered = _probe(seeds, auth, profile)
    if not cluster:
        if len(seeds) > 1:
            logger.warning("%s is a single Redis, not a cluster node: using it alone", safe_url(answered))
        return redis.Redis.from_url(answered, retry=retry, **common)
    if urlsplit(answered).path.strip("/") not in ("", "0"):
        raise SettingsError("a Redis Cluster has only database 0 (BOILERHOUSE_REDIS_URL or --redis-url)")
    others = [
        ClusterNode(parts.hostname, parts.port or 6379)  # type: ignore[no-untyped-call]  # redis.cluster is unannotated
        for parts in (urlsplit(seed) for seed in seeds if seed != answered)
    ]
    # redis-py's own retries follow the role (none for publishers and consumers: a re-run transaction
    # whose reply was lost would apply twice); MOVED/ASK/TRYAGAIN redirects are followed regardless.
    return RedisCluster.from_url(answered, startup_nodes=others, retry=retry, **common)


def _node_of(client: RedisCluster, key: str) -> ClusterNode:
    """The master serving ``key`` per the client's slot map (``SlotNotCoveredError`` if none)."""
    node: ClusterNode = client.get_node_from_key(key)  # type: ignore[no-untyped-call]  # redis.cluster is unannotated
    return node


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def node_client(client: Client, key: str) -> redis.Redis:
    """The plain client of the master serving ``key`` (``client`` itself on a single Redis).

    It neither follows redirects nor retries: a ``MOVED`` reply surfaces as ``MovedError``; call
    :func:`refresh` and try again.
    """
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(_node_of(client, key))
    return client


def node_at(client: RedisCluster, name: str) -> redis.Redis:
    """The plain client of the cluster node ``host:port`` (also one the slot map does not list yet, such
    as a master just added without slots), with the cluster client's credentials and timeouts."""
    node = client.get_node(node_name=name)  # type: ignore[no-untyped-call]  # redis.cluster is unannotated
    if node is None:
        host, _, port = name.rpartition(":")
        node = ClusterNode(host, int(port))  # type: ignore[no-untyped-call]  # redis.cluster is unannotated
    return client.get_redis_connection(node)


def node_name(client: Client, key: str) -> str:
    """``host:port`` of the master serving ``key`` (as the client's slot map has it), for tools."""
    if isinstance(client, RedisCluster):
        return str(_node_of(client, key).name)
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', 6379)}"


def refresh(client: Client) -> None:
    """Read the cluster's slot map again (after ``MOVED``, a failover, a refused connection)."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()


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
    if isinstance(exc, RedisClusterException) and not isinstance(exc, redis.RedisError):
        return BusProblem("unreachable", f"no Redis Cluster node of {where} answered ({said})")
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
