"""The embedded Redis of `boilerhouse up`: one owner per data directory, nothing left behind by a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from services.embedded import (
    PROTO_MAX_BULK_LEN,
    EmbeddedRedis,
    EmbeddedRedisError,
    free_port,
    stale_server,
    stop_pid,
)
from shared.events.codec import ENTRY_FIELD, MAX_ENTRY_BYTES
from shared.events.streams import stream_key
from tests.conftest import real_redis_binary
from tests.support.procs import BOILERHOUSE, Proc, boilerhouse, wait_http
from tests.support.recording import process_alive
from tests.support.refusal import assert_too_long_refused
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]


def server(workdir: Path) -> EmbeddedRedis:
    return EmbeddedRedis(workdir=workdir, binary=real_redis_binary(), allow_fake=False, appendonly=True)


def test_a_second_owner_of_a_data_directory_is_refused(tmp_path: Path) -> None:
    first = server(tmp_path / "redis").start()
    try:
        second = server(tmp_path / "redis")
        with pytest.raises(EmbeddedRedisError) as info:
            second.start()
        assert str(info.value) == (
            f"{tmp_path / 'redis'} is in use by another process (pid {os.getpid()}) running "
            "its Redis; stop it or choose another data directory"
        )
        assert second.pid is None and redis.Redis.from_url(first.url).ping()
    finally:
        first.stop()
    second.start()  # the first owner has stopped: the directory is free again
    second.stop()


ORPHANING_OWNER = """
import os, signal, sys
import redis
from services.embedded import EmbeddedRedis
srv = EmbeddedRedis(workdir=sys.argv[1], binary=sys.argv[2], allow_fake=False, appendonly=True).start()
redis.Redis.from_url(srv.url).set("kept", "yes")
print(srv.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no chance to stop its server
"""


def test_a_server_left_by_a_killed_owner_is_stopped_by_the_next_one_and_its_data_kept(tmp_path: Path) -> None:
    workdir = tmp_path / "redis"
    owner = subprocess.run(
        [sys.executable, "-c", ORPHANING_OWNER, str(workdir), real_redis_binary()],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    orphan = int(owner.stdout)
    try:
        assert process_alive(orphan), "without die_with_parent the server outlives its owner"
        successor = server(workdir).start()
        try:
            assert not process_alive(orphan), "the successor stopped the orphan before starting"
            client = redis.Redis.from_url(successor.url)
            assert client.get("kept") == b"yes", "the orphan's data was written out and loaded"
            client.close()
        finally:
            successor.stop()
    finally:
        if process_alive(orphan):
            stop_pid(orphan)


def test_up_killed_outright_takes_its_redis_with_it(tmp_path: Path) -> None:
    data = tmp_path / "bh"

    def start(name: str) -> Proc:
        api, metrics = free_port(), free_port()
        up = boilerhouse(
            ["up", "--api-port", str(api), "--metrics-port", str(metrics), "--data-dir", str(data)],
            tmp_path,
            name,
            {"BOILERHOUSE_REDIS_URL": ""},
        )
        wait_http(f"http://127.0.0.1:{api}/healthz", timeout=60, proc=up)
        # `up` names the aggregator's landing page too, and it answers there.
        assert f"  status:     http://127.0.0.1:{metrics}/  " in up.output()
        assert (
            "<h1>Boilerhouse metrics aggregator</h1>"
            in wait_http(f"http://127.0.0.1:{metrics}/", proc=up).text
        )
        return up

    up = start("up-1")
    try:
        redis_pid = int((data / "redis" / "redis.pid").read_text())
        assert process_alive(redis_pid)
        # A second `up` on the same data directory is refused with a message, not a traceback.
        clash = subprocess.run(
            [
                *BOILERHOUSE,
                "up",
                "--data-dir",
                str(data),
                "--api-port",
                str(free_port()),
                "--metrics-port",
                str(free_port()),
            ],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={**os.environ, "BOILERHOUSE_REDIS_URL": ""},
        )
        assert clash.returncode == 2, clash.stderr
        assert f"is in use by another process (pid {up.pid}) running its Redis" in clash.stderr
        assert "Traceback" not in clash.stderr
        up.kill()  # SIGKILL: no shutdown code runs
        wait_until(lambda: not process_alive(redis_pid), "the embedded Redis gone with `up`", within_s=15)
        assert "Received SIGTERM" in (data / "redis" / "redis.log").read_text(), (
            "a clean shutdown, AOF written"
        )
    finally:
        if up.popen.poll() is None:
            up.stop()
        leftover = stale_server(data / "redis" / "redis.pid", data / "redis")
        if leftover is not None:  # a failed run leaves nothing behind
            stop_pid(leftover)
    again = start("up-2")  # the data directory is free again
    try:
        assert again.popen.poll() is None
    finally:
        assert again.stop(sig=signal.SIGINT, timeout=30) == 0, again.output()[-3000:]


def test_up_runs_its_redis_with_the_shipped_entry_size_limit(tmp_path: Path) -> None:
    """Issue 11, item 5: the Redis `up` starts accepts no value longer than 2 MiB (as compose.yaml's), so
    no stream entry costs a reader more; an entry a little over MAX_ENTRY_BYTES still gets in (and is
    dead-lettered by the aggregator as too_large)."""
    data = tmp_path / "bh"
    api, metrics = free_port(), free_port()
    up = boilerhouse(
        ["up", "--api-port", str(api), "--metrics-port", str(metrics), "--data-dir", str(data)],
        tmp_path,
        "up",
        {"BOILERHOUSE_REDIS_URL": ""},
    )
    try:
        wait_http(f"http://127.0.0.1:{metrics}/readyz", timeout=60, proc=up)
        redis_pid = int((data / "redis" / "redis.pid").read_text())
        # redis-server sets its process title to "redis-server 127.0.0.1:<port>"
        title = Path(f"/proc/{redis_pid}/cmdline").read_bytes().decode()
        client = redis.Redis(port=int(title.split(":")[1].split()[0].rstrip("\0")), protocol=2)
        try:
            assert PROTO_MAX_BULK_LEN == "2mb"
            assert client.config_get("proto-max-bulk-len") == {"proto-max-bulk-len": str(2 * MAX_ENTRY_BYTES)}
            near = client.xadd(stream_key(0), {ENTRY_FIELD: b"\x00" * (MAX_ENTRY_BYTES + 1)})
            assert_too_long_refused(
                client, lambda: client.xadd(stream_key(0), {ENTRY_FIELD: b"\x00" * (2 * MAX_ENTRY_BYTES + 1)})
            )
            # The API's own entries (source.started, heartbeats) are small; the refused one is not there.
            sizes = {i: len(f[ENTRY_FIELD]) for i, f in client.xrange(stream_key(0))}
            assert {i: n for i, n in sizes.items() if n > 4096} == {near: MAX_ENTRY_BYTES + 1}, sizes
        finally:
            client.close()
    finally:
        assert up.stop(sig=signal.SIGINT, timeout=30) == 0, up.output()[-3000:]
