"""Publisher shutdown: close() keeps its deadline even when the bus hangs, and spools what it could not send."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.embedded import free_port
from shared.events.codec import decode_batch
from shared.events.publisher import Publisher
from tests.support.wait import wait_until


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    server.close()


def _spooled_events(spool: Path) -> list[dict]:
    events = []
    for path in sorted(spool.glob("*.batch")):
        events += decode_batch(path.read_bytes()).events  # numbered as the aggregator numbers them
    return events


@pytest.mark.timeout(60)
def test_close_keeps_its_deadline_when_redis_hangs(blackhole: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = Publisher(blackhole, "hung", heartbeat_interval_s=10**6, spool_dir=spool)
    for _ in range(100):
        pub.emit("container.health_check_failed", {"pool_id": "p"})
    time.sleep(0.2)  # the flusher is now stuck waiting for a reply
    started = time.monotonic()
    pub.close(timeout=1.0)
    took = time.monotonic() - started
    assert took < 1.5, f"close() took {took:.2f}s with a 1s deadline"
    # Once the stuck call times out, the flusher spools everything, source.stopped included.
    wait_until(lambda: not pub._thread.is_alive(), "the flusher thread ends after spooling", within_s=30)
    events = _spooled_events(spool)
    assert [e["seq"] for e in events] == list(range(1, 103))
    assert events[-1]["type"] == "source.stopped"


@pytest.mark.timeout(30)
def test_close_with_redis_down_spools_everything_quickly(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = Publisher(f"redis://127.0.0.1:{free_port()}/0", "down", heartbeat_interval_s=10**6, spool_dir=spool)
    for _ in range(400):
        pub.emit("container.health_check_failed", {"pool_id": "p"})
    started = time.monotonic()
    pub.close(timeout=3.0)
    assert time.monotonic() - started < 3.5
    events = _spooled_events(spool)
    assert pub.dropped == 0
    assert [e["seq"] for e in events] == list(range(1, 403))
    assert {e["type"] for e in events} == {
        "source.started",
        "container.health_check_failed",
        "source.stopped",
    }
