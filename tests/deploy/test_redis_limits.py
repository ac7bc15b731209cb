"""The entry size limit of the shipped Redis configurations (issue 11, item 5), on real redis-servers.

compose.yaml's Redis refuses any value longer than 2 MiB (``proto-max-bulk-len``), so no stream entry
costs a reader more than that (the aggregator's reads are bounded anyway: tests/reliability/
test_huge_entry.py). The cluster nodes of deploy/compose-cluster.yaml keep Redis' default, because a
slot's move sends each key whole as one value (``MIGRATE``), and a partition's stream is larger than any
entry limit. ``boilerhouse up``'s own Redis: tests/test_embedded.py.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.embedded import PROTO_MAX_BULK_LEN, EmbeddedRedis
from shared.events.codec import ENTRY_FIELD, MAX_ENTRY_BYTES
from shared.events.streams import stream_key
from tests.conftest import real_redis_binary
from tests.deploy.queries import REPO
from tests.support.compose import compose_config
from tests.support.refusal import assert_too_long_refused

ACL_DIR = REPO / "deploy" / "redis"
SHIPPED_LIMIT = 2 * MAX_ENTRY_BYTES


def secret(role: str) -> str:
    return (ACL_DIR / "secrets" / f"{role}.password").read_text().rstrip("\n")


def start(workdir: Path, args: tuple[str, ...]) -> EmbeddedRedis:
    return EmbeddedRedis(
        workdir=workdir, binary=real_redis_binary(), allow_fake=False, extra_args=args
    ).start()


def keys(server: EmbeddedRedis) -> list[bytes]:
    with redis.Redis.from_url(server.url, protocol=2) as client:
        return sorted(client.keys())


@pytest.fixture
def compose_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A real redis-server with the arguments compose.yaml gives its Redis (the ACL file from the repo)."""
    command = compose_config(REPO / "compose.yaml")["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    args = [str(ACL_DIR / "users.acl") if a == "/etc/redis/users.acl" else a for a in command[1:]]
    assert args[args.index("--proto-max-bulk-len") + 1] == PROTO_MAX_BULK_LEN
    server = start(tmp_path / "redis", tuple(args))
    yield server
    server.stop()


def test_the_compose_redis_refuses_a_value_longer_than_2_mib(compose_redis: EmbeddedRedis) -> None:
    admin = redis.Redis.from_url(compose_redis.url, username="admin", password=secret("admin"), protocol=2)
    producer = redis.Redis.from_url(
        compose_redis.url, username="boilerhouse-producer", password=secret("producer"), protocol=2
    )
    try:
        assert admin.config_get("proto-max-bulk-len") == {"proto-max-bulk-len": str(SHIPPED_LIMIT)}
        # An entry a little over what the aggregator decodes gets in (and is dead-lettered as too_large) ...
        near = producer.xadd(stream_key(0), {ENTRY_FIELD: b"\x00" * (MAX_ENTRY_BYTES + 1)})
        # ... one over the limit does not: Redis answers a protocol error and closes the connection.
        assert_too_long_refused(
            producer, lambda: producer.xadd(stream_key(0), {ENTRY_FIELD: b"\x00" * (SHIPPED_LIMIT + 1)})
        )
        assert [i for i, _ in admin.xrange(stream_key(0))] == [near]
        # Every value, whoever writes it.
        assert_too_long_refused(admin, lambda: admin.set("k", b"\x00" * (SHIPPED_LIMIT + 1)))
        assert admin.exists("k") == 0
    finally:
        admin.close()
        producer.close()


def test_cluster_nodes_keep_the_default_limit_because_moving_a_slot_sends_a_whole_stream(
    tmp_path: Path,
) -> None:
    node = compose_config(REPO / "deploy" / "compose-cluster.yaml")["services"]["redis-1"]
    assert node["command"][:2] == ["sh", "-c"]
    assert "proto-max-bulk-len" not in shlex.split(node["command"][2])

    # What a reshard (or `placement --apply`) does with a partition's stream: MIGRATE it, as one value.
    source = start(tmp_path / "source", ())
    limited = start(tmp_path / "limited", ("--proto-max-bulk-len", PROTO_MAX_BULK_LEN))
    default = start(tmp_path / "default", ())
    client = redis.Redis.from_url(source.url, protocol=2)
    try:
        noise = random.Random(5)  # incompressible: MIGRATE's payload is LZF-compressed
        for _ in range(3):  # each entry within the limit, the stream beyond it
            client.xadd(stream_key(0), {ENTRY_FIELD: noise.randbytes(MAX_ENTRY_BYTES)})
        # The target refuses the value: MIGRATE reports its answer, or IOERR when the target closed the
        # connection while the value was still being written (which of the two is a race).
        with pytest.raises(redis.ResponseError, match=r"IOERR|invalid bulk length"):
            client.execute_command("MIGRATE", limited.host, limited.port, stream_key(0), 0, 10_000, "COPY")
        assert keys(limited) == []
        assert (
            client.execute_command("MIGRATE", default.host, default.port, stream_key(0), 0, 10_000) == b"OK"
        )
        assert keys(default) == [stream_key(0).encode()]
        assert keys(source) == []
    finally:
        client.close()
        for server in (source, limited, default):
            server.stop()
