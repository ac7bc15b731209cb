"""GET /metrics as scrapers see it: the same samples as prometheus_client, gzip, shared renderings,
streaming that gives its slot back, and the library path for escapings the renderer does not write."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from services.aggregator.app import standard_collectors
from services.aggregator.exposition import StateCollector
from services.aggregator.fold import HANDLERS, State
from services.aggregator.render import Renderer
from services.aggregator.scrape import Exposer, gzip_accepted, negotiate
from tests.aggregator.harness import aggregator, publisher, wait_applied
from tests.support.expo import parse
from tests.support.wait import wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Keep every route template as a ``path`` label: each /load/{i} is a series of its own.
ANY_ROUTE = {"http_routes": "any"}
#: Samples that differ between two scrapes of an idle aggregator (the process, and the clock).
VOLATILE = (
    "process_",
    "python_gc_",
    "boilerhouse_aggregator_checkpoint_age_seconds",
    "boilerhouse_aggregator_newest_event_age_seconds",
)


def stable(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {k: v for k, v in parse(text).items() if not k[0].startswith(VOLATILE)}


def fill(redis_url: str, series: int) -> int:
    """Publish ``series`` distinct HTTP request series; returns the events published."""
    pub = publisher(redis_url)
    try:
        for i in range(series):
            pub.emit(
                "http.request", {"method": "GET", "path": f"/load/{i}", "status": 200, "duration_s": 0.01}
            )
        assert pub.flush(30)
    finally:
        pub.close()
    return series + 2  # source.started and source.stopped


def test_metrics_are_the_librarys_samples_in_both_formats_and_gzipped(redis_url: str) -> None:
    events = fill(redis_url, 300)
    with aggregator(redis_url, **ANY_ROUTE) as agg:
        wait_applied(agg.url, events)
        consumer = agg.app.state.consumer
        reference = CollectorRegistry(auto_describe=False)
        reference.register(
            StateCollector(consumer.snapshot, "boilerhouse_", agg.settings.source_ttl_s, consumer.readings)
        )
        standard_collectors(reference)
        for accept, library in (("", generate_latest), (OPENMETRICS, generate_openmetrics)):
            plain = httpx.get(agg.url + "/metrics", headers={"Accept": accept, "Accept-Encoding": "identity"})
            assert "content-encoding" not in plain.headers
            expected = bytes(library(reference)).decode()
            assert stable(plain.text) == stable(expected)
            assert plain.text.endswith("# EOF\n") == bool(accept)
            zipped = httpx.get(agg.url + "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.headers["content-type"] == plain.headers["content-type"]
            assert stable(zipped.text) == stable(plain.text)  # httpx decompressed it
            assert zipped.num_bytes_downloaded * 5 < len(plain.content)


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("br;q=1, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip;q=0", False),  # refused: prometheus_client's gzip_accepted says yes
        ("gzip;q=0.000", False),
        ("gzip; q=0, identity", False),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # the explicit refusal wins over the wildcard
        ("gzip;q=nan", False),
        ("gzip;q=2", False),
        ("gzip;q=abc", False),
        (";;,,;", False),
    ],
)
def test_gzip_only_when_the_client_accepts_it(header: str, gzip: bool) -> None:
    assert gzip_accepted(header) is gzip
    assert negotiate("", header).gzip is gzip


def test_a_client_refusing_gzip_gets_identity(redis_url: str) -> None:
    with aggregator(redis_url) as agg:
        r = httpx.get(agg.url + "/metrics", headers={"Accept-Encoding": "gzip;q=0, identity"})
        assert r.status_code == 200 and "content-encoding" not in r.headers
        assert r.num_bytes_downloaded == len(r.content) and "# TYPE" in r.text


def test_an_escaping_the_renderer_does_not_write_gets_the_librarys_output(redis_url: str) -> None:
    events = fill(redis_url, 20)
    accept = "application/openmetrics-text; version=1.0.0; escaping=dots"
    with aggregator(redis_url, **ANY_ROUTE) as agg:
        wait_applied(agg.url, events)
        r = httpx.get(agg.url + "/metrics", headers={"Accept": accept})
        assert r.headers["content-type"].endswith("escaping=dots")
        # Dots escaping doubles every underscore of a name: the library wrote this, not the renderer.
        assert "boilerhouse__http__requests__total" in r.text and r.text.endswith("# EOF\n")


def test_a_client_leaving_mid_body_gives_its_scrape_slot_back(redis_url: str) -> None:
    events = fill(redis_url, 3000)  # ~4 MB of text: many chunks
    with aggregator(redis_url, max_concurrent_scrapes=1, **ANY_ROUTE) as agg:
        wait_applied(agg.url, events)
        for _ in range(3):
            with httpx.stream("GET", agg.url + "/metrics", headers={"Accept-Encoding": "identity"}) as r:
                assert r.status_code == 200
                next(r.iter_raw(65536))  # then hang up
        # Given back once the server noticed; then every sequential scrape gets the slot.
        wait_until(lambda: httpx.get(agg.url + "/metrics").status_code == 200, "scrape slot given back")
        assert [httpx.get(agg.url + "/metrics").status_code for _ in range(3)] == [200, 200, 200]


# ---- sharing, without a server ----------------------------------------------------------------------


class _Source:
    """A fold state and its version, captured as the consumer does (under a lock)."""

    def __init__(self, series: int) -> None:
        self.state = State()
        self.version = 1
        self.lock = threading.Lock()
        for i in range(series):
            HANDLERS["http.request"](
                self.state,
                "s:h:1:00",
                {"method": "GET", "path": f"/p/{i}", "status": 200, "duration_s": i / 1e3},
            )

    def capture(self, take):  # type: ignore[no-untyped-def]
        with self.lock:
            return take([self.state], self.version)


def exposer(source: _Source, retain: int = 16 << 20) -> Exposer:
    return Exposer(
        Renderer(),
        source.capture,
        lambda: source.version,
        dict,
        standard_collectors(CollectorRegistry(auto_describe=False)),
        CollectorRegistry(auto_describe=False),
        retain_bytes=retain,
    )


def chunks(reader: Iterator[bytes]) -> list[bytes]:
    return list(reader)


def test_scrapes_of_the_same_state_share_one_rendering() -> None:
    source = _Source(2000)
    ex = exposer(source)
    fmt = negotiate("", "gzip")
    first, second = ex.open(fmt), ex.open(fmt)
    a, b = chunks(first), chunks(second)
    first.close()
    second.close()
    assert (ex.renderings, ex.joined) == (1, 1)
    assert a == b and len(a) > 1
    assert b"boilerhouse_http_requests_total" in gzip.decompress(b"".join(a))

    other = ex.open(negotiate(OPENMETRICS, "gzip"))  # another format: its own rendering
    third = ex.open(fmt)  # the first rendering is over: a new one
    chunks(other), chunks(third)
    other.close()
    third.close()
    assert (ex.renderings, ex.joined) == (3, 1)


def test_a_changed_state_is_never_served_from_an_older_rendering() -> None:
    source = _Source(100)
    ex = exposer(source)
    fmt = negotiate("", "")
    before = ex.open(fmt)
    head = next(before)
    HANDLERS["http.request"](
        source.state, "s:h:1:00", {"method": "PUT", "path": "/new", "status": 201, "duration_s": 1}
    )
    source.version += 1
    after = ex.open(fmt)
    body_after = b"".join(after)
    body_before = head + b"".join(before)
    before.close()
    after.close()
    assert (ex.renderings, ex.joined) == (2, 0)
    assert b'path="/new"' in body_after and b'path="/new"' not in body_before


def test_a_rendering_past_its_retention_streams_and_takes_no_late_joiner() -> None:
    source = _Source(3000)
    ex = exposer(source, retain=1 << 20)
    fmt = negotiate("", "")
    early = ex.open(fmt)
    read = [next(early)]
    while sum(map(len, read)) < 2 << 20:  # more than the 1 MiB kept
        read.append(next(early))
    late = ex.open(fmt)
    rest = b"".join(early)
    whole = b"".join(late)
    early.close()
    late.close()
    assert ex.joined == 0 and ex.renderings == 2
    state_part = b"".join(read) + rest
    cut = state_part.index(b"# HELP process_")  # the process's own metrics change from one render to the next
    assert state_part[:cut] == whole[:cut] and len(state_part) > 3 << 20
