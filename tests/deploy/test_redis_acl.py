"""The shipped Redis ACL users (deploy/redis/users.acl), against a real redis-server started with that file.

Issue 11, item 14: a producer can append events and nothing else (no reads, trims, acknowledgements,
checkpoints or dead letters: it cannot impersonate the aggregator); the aggregator does its whole job
with its own user and cannot write events; the command-line tools read with a user that cannot write.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.aggregator import retention
from services.aggregator.rebuild import rebuild_partition
from services.aggregator.settings import AggregatorSettings
from services.embedded import EmbeddedRedis
from shared.events.bus import RedisSettings, connect
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.publisher import Publisher
from shared.events.streams import checkpoint_key, dead_letter_key, stream_key
from tests.aggregator.harness import aggregator, wait_for
from tests.conftest import real_redis_binary
from tests.deploy.queries import REPO
from tests.support.expo import value
from tests.support.page import parse_page

ACL_DIR = REPO / "deploy" / "redis"
ACL_FILE = ACL_DIR / "users.acl"
#: role (the secret file's name) -> ACL user
USERS = {
    "admin": "admin",
    "producer": "boilerhouse-producer",
    "aggregator": "boilerhouse-aggregator",
    "reader": "boilerhouse-reader",
}
P = "boilerhouse_"
EVENTS, DEAD, CHECKPOINT = stream_key(0), dead_letter_key(0), checkpoint_key(0, "aggregator")


def secret(role: str, acl_dir: Path = ACL_DIR) -> str:
    return (acl_dir / "secrets" / f"{role}.password").read_text().rstrip("\n")


def start_redis(workdir: Path, acl_file: Path) -> EmbeddedRedis:
    server = EmbeddedRedis(
        workdir=workdir, binary=real_redis_binary(), allow_fake=False, extra_args=("--aclfile", str(acl_file))
    )
    return server.start()


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = start_redis(tmp_path_factory.mktemp("acl-redis"), ACL_FILE)
    yield server
    server.stop()


@pytest.fixture
def url(acl_server: EmbeddedRedis) -> str:
    """The ACL server, emptied by the admin user for this test."""
    admin = as_user(acl_server.url, "admin")
    admin.flushall()
    admin.close()
    return acl_server.url


def settings_of(url: str, role: str) -> RedisSettings:
    return RedisSettings(url, USERS[role], secret(role))


def as_user(url: str, role: str) -> redis.Redis:
    return connect(settings_of(url, role), "tool")


def refused(client: redis.Redis, *command: str) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


# ---- the file ---------------------------------------------------------------------------------------------


def test_the_acl_file_holds_hashes_of_the_shipped_secrets_and_no_plain_passwords() -> None:
    lines = {line.split()[1]: line.split() for line in ACL_FILE.read_text().splitlines() if line}
    assert set(lines) == {"default", *USERS.values()}
    assert " ".join(lines["default"]) == "user default on nopass resetkeys resetchannels -@all +ping"
    for role, user in USERS.items():
        rules = lines[user]
        hashes = [r[1:] for r in rules if r.startswith("#")]
        assert hashes == [hashlib.sha256(secret(role).encode()).hexdigest()], user
        assert not [r for r in rules if r.startswith(">") or r == "nopass"], f"{user}: a plain password"
        assert len(secret(role)) >= 32, f"{role}: a short password"


def test_unauthenticated_clients_may_only_ping(url: str) -> None:
    anonymous = redis.Redis.from_url(url, protocol=2)
    assert anonymous.ping()
    for command in (("XRANGE", EVENTS, "-", "+"), ("XADD", EVENTS, "*", "b", "x"), ("GET", CHECKPOINT)):
        assert refused(anonymous, *command), command
    anonymous.close()


# ---- producer ---------------------------------------------------------------------------------------------


def test_a_producer_appends_events_and_can_do_nothing_else(url: str) -> None:
    pub = Publisher(settings_of(url, "producer"), "acl-producer", heartbeat_interval_s=10**6)
    try:
        pub.emit("container.health_check_failed", {"pool_id": "p"})
        assert pub.flush(10), "the publisher writes with the producer user"
    finally:
        pub.close(5)
    admin = as_user(url, "admin")
    assert admin.xlen(EVENTS) >= 1
    admin.xgroup_create(EVENTS, "aggregator", id="0")
    admin.hset(CHECKPOINT, "meta", b"the aggregator's state")
    producer = as_user(url, "producer")
    forbidden = [
        ("XRANGE", EVENTS, "-", "+"),  # read
        ("XREVRANGE", EVENTS, "+", "-"),
        ("XREAD", "STREAMS", EVENTS, "0"),
        ("XREADGROUP", "GROUP", "aggregator", "c", "STREAMS", EVENTS, ">"),
        ("XLEN", EVENTS),
        ("XINFO", "STREAM", EVENTS),
        ("XTRIM", EVENTS, "MAXLEN", "0"),  # trim or delete
        ("XDEL", EVENTS, "1-0"),
        ("DEL", EVENTS),
        ("UNLINK", EVENTS),
        ("RENAME", EVENTS, "elsewhere"),
        ("XACK", EVENTS, "aggregator", "1-0"),  # the aggregator's job
        ("XGROUP", "SETID", EVENTS, "aggregator", "$"),
        ("XGROUP", "DESTROY", EVENTS, "aggregator"),
        ("XGROUP", "CREATE", EVENTS, "mine", "0"),
        ("HSET", CHECKPOINT, "meta", "forged"),  # the checkpoint (a hash)
        ("HGETALL", CHECKPOINT),
        ("DEL", CHECKPOINT),
        ("SET", CHECKPOINT, "forged"),
        ("XADD", DEAD, "*", "reason", "forged"),
        ("XADD", "boilerhouse:elsewhere", "*", "b", "x"),  # other keys
        ("SET", "anything", "x"),
        ("FLUSHALL",),  # the server
        ("CONFIG", "SET", "appendonly", "no"),
        ("ACL", "SETUSER", "boilerhouse-producer", "+@all"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("EVAL", "return 1", "0"),
    ]
    assert [c for c in forbidden if not refused(producer, *c)] == []
    assert admin.hget(CHECKPOINT, "meta") == b"the aggregator's state"
    producer.close()
    admin.close()


# ---- aggregator -------------------------------------------------------------------------------------------


def test_the_aggregator_does_its_whole_job_with_its_user(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Read, fold, checkpoint, dead-letter, acknowledge (and rebuild, trim) with the aggregator's user."""
    caplog.set_level(logging.INFO, logger="services.aggregator")
    pub = Publisher(settings_of(url, "producer"), "acl-api", heartbeat_interval_s=10**6)
    try:
        for _ in range(5):
            pub.emit("container.health_check_failed", {"pool_id": "p"})
        pub.emit("http.request", {"method": "GET", "path": "/a/../b", "status": 200, "duration_s": 0.1})
        assert pub.flush(10)
    finally:
        pub.close(5)
    agg_redis = settings_of(url, "aggregator")
    with aggregator(url, redis_username=agg_redis.username, redis_password=agg_redis.password) as agg:
        s = wait_for(
            agg.url,
            lambda s: value(s, f"{P}aggregator_dead_letters_total", reason="invalid_field") == 1,
            what="events folded and the invalid one dead-lettered",
        )
        assert value(s, f"{P}container_health_check_failures_total", pool_id="p") == 5
        admin = as_user(url, "admin")
        wait_for(
            agg.url,
            lambda _: admin.exists(CHECKPOINT) == 1 and admin.xpending(EVENTS, "aggregator")["pending"] == 0,
            what="checkpointed and acknowledged",
        )
        assert admin.xlen(DEAD) == 1
        assert agg.app.state.consumer.bus_problem is None
        # The landing page reads what it shows with the same user: XINFO GROUPS and XLEN of the
        # events, XREVRANGE of the dead letters.
        r = httpx.get(agg.url + "/", timeout=20)
        assert r.status_code == 200
        page = parse_page(r.text)
        assert "bus-problem" not in page.text, page.text["bus-problem"]
        assert page.column("dead-letters", "reason") == ["invalid_field"]
        assert page.column("partitions", "length (entries)") == [f"{admin.xlen(EVENTS):,}"]
        assert page.column("partitions", "pending") == ["0"]
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == [], problems

    aggregator_client = as_user(url, "aggregator")
    result = rebuild_partition(
        aggregator_client, AggregatorSettings(redis_url=url, redis_username=agg_redis.username), 0
    )
    assert result.events == 8  # source.started, 5 events, the invalid one, source.stopped
    assert retention.trim_by_age(aggregator_client, EVENTS, 0.0, time.time(), approximate=False) >= 1
    # It cannot pose as a producer, nor touch the server.
    for command in (("XADD", EVENTS, "*", "b", "x"), ("DEL", EVENTS), ("FLUSHALL",), ("SET", "other", "x")):
        assert refused(aggregator_client, *command), command
    aggregator_client.close()
    admin.close()


# ---- command-line tools -----------------------------------------------------------------------------------


def cli(url: str, role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "BOILERHOUSE_REDIS_URL": url,
            "BOILERHOUSE_REDIS_USERNAME": USERS[role],
            "BOILERHOUSE_REDIS_PASSWORD_FILE": str(ACL_DIR / "secrets" / f"{role}.password"),
        },
        check=False,
    )


def test_the_tools_read_with_the_reader_user_which_cannot_write(url: str) -> None:
    producer = as_user(url, "producer")
    events = [
        {"type": "container.health_check_failed", "seq": i, "ts": 1_767_225_600.0 + i, "pool_id": "p"}
        for i in range(1, 4)
    ]
    producer.xadd(EVENTS, {ENTRY_FIELD: encode_batch("api:h:1:aa", events)})
    producer.close()
    admin = as_user(url, "admin")
    admin.xadd(DEAD, {"entry_id": "1-0", "reason": "undecodable", "detail": "x", "payload": b"x"})
    admin.xgroup_create(EVENTS, "aggregator", id="0")
    admin.close()

    stats = cli(url, "reader", "events", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "container.health_check_failed" in stats.stdout and "undecodable" in stats.stdout
    for args in (
        ("events", "range"),
        ("events", "tail", "-n", "2"),
        ("replay", "--at", "2026-01-01T00:01:00Z"),
    ):
        done = cli(url, "reader", *args)
        assert done.returncode == 0, (args, done.stderr)
    assert "pool_id=p" in cli(url, "reader", "events", "range").stdout
    # With the producer's user the same command is refused, and says why.
    denied = cli(url, "producer", "events", "stats")
    assert (
        denied.returncode == 1 and "permission denied" in denied.stderr and "Traceback" not in denied.stderr
    )

    reader = as_user(url, "reader")
    forbidden = [
        ("XADD", EVENTS, "*", "b", "x"),
        ("XADD", DEAD, "*", "reason", "x"),
        ("SET", CHECKPOINT, "x"),
        ("XTRIM", EVENTS, "MAXLEN", "0"),
        ("XDEL", EVENTS, "1-0"),
        ("XACK", EVENTS, "aggregator", "1-0"),
        ("XGROUP", "CREATE", EVENTS, "g", "0"),
        ("XGROUP", "SETID", EVENTS, "aggregator", "$"),
        ("XREADGROUP", "GROUP", "aggregator", "c", "STREAMS", EVENTS, ">"),  # moves the group's cursor
        ("DEL", EVENTS),
        ("FLUSHALL",),
    ]
    assert [c for c in forbidden if not refused(reader, *c)] == []
    reader.close()


# ---- rotating the passwords -------------------------------------------------------------------------------


def test_rotate_passwords_replaces_every_secret_and_its_hash(tmp_path: Path) -> None:
    copy = tmp_path / "redis"
    shutil.copytree(ACL_DIR, copy)
    done = subprocess.run(
        [str(copy / "rotate-passwords"), str(copy)], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 0, done.stderr
    for role in USERS:
        assert secret(role, copy) != secret(role), role
        assert hashlib.sha256(secret(role, copy).encode()).hexdigest() in (copy / "users.acl").read_text()
    assert [line.split()[4:] for line in (copy / "users.acl").read_text().splitlines()] == [
        line.split()[4:] for line in ACL_FILE.read_text().splitlines()
    ], "only the hashes change"
    server = start_redis(tmp_path / "data", copy / "users.acl")
    try:
        client = connect(RedisSettings(server.url, "boilerhouse-producer", secret("producer", copy)), "tool")
        assert client.ping()
        client.close()
        with pytest.raises(redis.AuthenticationError):
            connect(RedisSettings(server.url, "boilerhouse-producer", secret("producer")), "tool").ping()
    finally:
        server.stop()
