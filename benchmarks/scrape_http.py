"""GET /metrics of a real ``boilerhouse aggregator`` process holding many series: time to the last
byte, and the process's peak memory against its steady RSS.

The stream gets ``series`` HTTP histogram series (3 requests each); the aggregator folds them, serves
one scrape (the first builds the label strings it keeps), and then its RSS is the steady state. Its
peak RSS (``VmHWM``, reset before each phase) is read after repeated scrapes, identity and gzip, and
after two concurrent scrapes (which share one rendering).
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import stream_key

from .procs import AggregatorProcess, memory, reset_peak, wait_folded

PER_SERIES = 3
BATCH = 2_000


def preload(client: redis.Redis, series: int) -> int:
    """Write ``series`` HTTP request series, ``PER_SERIES`` events each; returns the events written."""
    src = "load:h:1:00"
    now = time.time()
    methods = ("GET", "POST", "PUT", "DELETE")
    events = [
        {
            "type": "http.request",
            "ts": now,
            "method": methods[i % 4],
            "path": f"/api/v1/r{i // 4}/{{id}}",
            "status": 200,
            "duration_s": (i % 97) / 100 + k,
        }
        for k in range(PER_SERIES)
        for i in range(series)
    ]
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(events), BATCH):
        pipe.xadd(stream_key(0), {ENTRY_FIELD: encode_batch(src, events[start : start + BATCH], start + 1)})
        if len(pipe) >= 32:
            pipe.execute()
    pipe.execute()
    return len(events)


def scrape(url: str, encoding: str) -> tuple[float, int]:
    """Seconds to the last byte, and bytes received (the response as sent, headers and chunk framing
    included).

    A bare HTTP/1.1 request on a socket, read to the end (``Connection: close``) with ``recv_into``: a
    scraper that reads as fast as the network allows, as Prometheus does, rather than a Python client
    whose own parsing would be most of the time measured.
    """
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: {encoding}\r\nConnection: close\r\n\r\n"
    ).encode()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    received = 0
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(request)
        head = sock.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"scrape failed: {head[:200]!r}")
        received = len(head)
        while n := sock.recv_into(view):
            received += n
    return time.perf_counter() - t0, received


@dataclass
class HttpResult:
    series: int
    rss_before_first: int = 0
    first_s: float = 0.0
    first_peak: int = 0
    steady_rss: int = 0
    identity_s: list[float] = field(default_factory=list)
    identity_bytes: int = 0
    identity_peak: int = 0
    gzip_s: list[float] = field(default_factory=list)
    gzip_bytes: int = 0
    gzip_peak: int = 0
    concurrent_s: float = 0.0
    concurrent_peak: int = 0

    @property
    def identity_median(self) -> float:
        return statistics.median(self.identity_s)

    @property
    def gzip_median(self) -> float:
        return statistics.median(self.gzip_s)


def run(redis_url: str, series: int = 100_000, reps: int = 5) -> HttpResult:
    client = redis.Redis.from_url(redis_url, protocol=2)
    client.flushall()
    preload(client, series)
    result = HttpResult(series)
    env = {
        "BOILERHOUSE_SERIES_CAP": str(series * 2),
        "BOILERHOUSE_CONSUMER_GROUP": "bench-http",
        "BOILERHOUSE_HTTP_ROUTES": "any",  # every path a series of its own
    }
    with tempfile.TemporaryDirectory() as tmp, AggregatorProcess(redis_url, Path(tmp), env) as agg:
        wait_folded(client, stream_key(0), "bench-http")
        pid = agg.pid
        result.rss_before_first = memory(pid, "VmRSS")
        reset_peak(pid)
        result.first_s, _ = scrape(agg.url, "identity")
        result.first_peak = memory(pid, "VmHWM")
        time.sleep(0.5)
        result.steady_rss = memory(pid, "VmRSS")
        for encoding, times, attr in (
            ("identity", result.identity_s, "identity"),
            ("gzip", result.gzip_s, "gzip"),
        ):
            reset_peak(pid)
            for _ in range(reps):
                seconds, received = scrape(agg.url, encoding)
                times.append(seconds)
            setattr(result, f"{attr}_bytes", received)
            setattr(result, f"{attr}_peak", memory(pid, "VmHWM"))
        reset_peak(pid)
        done: list[float] = []
        threads = [threading.Thread(target=lambda: done.append(scrape(agg.url, "gzip")[0])) for _ in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result.concurrent_s = time.perf_counter() - t0
        result.concurrent_peak = memory(pid, "VmHWM")
    client.flushall()
    client.close()
    return result
