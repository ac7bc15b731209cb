"""`boilerhouse api` as a real process under `ulimit -n 64`: idle, slow and vanishing clients on real sockets."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from services.embedded import free_port
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.streams import stream_key
from tests.support.procs import BOILERHOUSE, Proc, wait_http
from tests.support.wait import wait_until

NOFILE = 64
READ_TIMEOUT_S = 1.0
#: Liveness bounds (the server must act within them at all), generous for a loaded 2-core machine.
WITHIN_S = 30.0
#: Runs the command with RLIMIT_NOFILE lowered, in the same process (so the pid is the server's).
LOW_NOFILE = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({n}, {n})); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


@dataclass
class Server:
    proc: Proc
    port: int
    redis_url: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WITHIN_S)

    def http_statuses(self, path: str) -> list[int]:
        client = redis.Redis.from_url(self.redis_url, protocol=2)
        try:
            entries = client.xrange(stream_key(0))
        finally:
            client.close()
        events = [ev for _, f in entries for ev in decode_batch(f[ENTRY_FIELD]).events]
        return [e["status"] for e in events if e["type"] == "http.request" and e["path"] == path]

    def log_problems(self) -> list[str]:
        out = self.proc.output()
        return [
            line
            for line in out.splitlines()
            if "Traceback" in line or "Too many open files" in line or "out of system resource" in line
        ]


@pytest.fixture
def server(tmp_path: Path, redis_url: str) -> Iterator[Server]:
    port = free_port()
    env = {
        "BOILERHOUSE_REDIS_URL": redis_url,
        "BOILERHOUSE_HTTP_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "BOILERHOUSE_HEARTBEAT_INTERVAL_S": "0.2",
    }
    args = ["api", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    proc = Proc(
        [sys.executable, "-c", LOW_NOFILE.format(n=NOFILE), *BOILERHOUSE[1:], *args], tmp_path, "api", env
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        assert (
            int(Path(f"/proc/{proc.pid}/limits").read_text().split("Max open files")[1].split()[0]) == NOFILE
        )
        yield Server(proc, port, redis_url)
    finally:
        proc.stop()


def closed_by_peer(sock: socket.socket, within_s: float = WITHIN_S) -> bool:
    """True once the server has closed this connection (EOF or reset), False if it is still open."""
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass  # a response (e.g. a 400) may come first; the close follows
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def wait_for(check: Callable[[], bool], what: str, within_s: float = WITHIN_S) -> None:
    wait_until(check, what, within_s)


def test_idle_sockets_neither_exhaust_open_files_nor_lock_clients_out(server: Server) -> None:
    sockets = [server.connect() for _ in range(70)]  # more than the server's open-files limit
    try:
        # While they are all open, a real client is answered (the oldest idle connections make room).
        r = httpx.get(f"{server.url}/healthz", timeout=WITHIN_S)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # Each idle socket is closed by the server once the read timeout passes (or was shed earlier).
        assert all(closed_by_peer(s) for s in sockets)
    finally:
        for s in sockets:
            s.close()
    r = httpx.get(f"{server.url}/healthz", timeout=WITHIN_S)
    assert r.status_code == 200
    assert server.log_problems() == []


def test_a_client_that_never_finishes_its_headers_is_closed(server: Server) -> None:
    with contextlib.closing(server.connect()) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_peer(sock)
    with contextlib.closing(server.connect()) as sock:  # after a first response, too (keep-alive)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(WITHIN_S)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert closed_by_peer(sock)
    assert server.log_problems() == []


def test_a_client_gone_mid_body_is_a_499_and_no_traceback(server: Server) -> None:
    with contextlib.closing(server.connect()) as sock:
        sock.sendall(
            b"POST /api/v1/pools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"pool_id": "p1", '
        )
        time.sleep(0.2)  # let the server start reading the body; then the client goes away
    wait_for(lambda: server.http_statuses("/api/v1/pools") == [499], "a 499 http.request event")
    assert server.log_problems() == []


def test_a_body_that_never_arrives_is_cut_off_as_408(server: Server) -> None:
    with contextlib.closing(server.connect()) as sock:
        sock.sendall(
            b"POST /api/v1/tenants/alice/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"pool_id": '
        )
        assert closed_by_peer(sock)
    path = "/api/v1/tenants/{tenant_id}/claim"
    wait_for(lambda: server.http_statuses(path) == [408], "a 408 http.request event")
    assert server.log_problems() == []


def test_hostile_requests_on_the_wire_get_4xx_json(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=WITHIN_S) as client:
        r = client.get("/api/v1/pools/", headers={"host": "evil.example"})
        assert r.status_code == 404 and "location" not in r.headers and r.json()["error"] == "not_found"
        deep = b"[" * 1000 + b"]" * 1000
        r = client.post("/api/v1/pools", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_json"
        r = client.post(
            "/api/v1/tenants/a/claim", content=b'{"pool_id": "x"}', headers={"content-type": "text/plain"}
        )
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    assert server.log_problems() == []
