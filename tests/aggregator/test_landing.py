"""The landing page at ``/`` (issue 13, part 3), through a real aggregator on a real uvicorn server and a
real redis-server: what it shows, the metrics credentials, escaping of what producers send, a Redis
that is down or slow, and the page as Debian's chromium renders it (headless)."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services import __version__
from services.aggregator import landing
from services.embedded import EmbeddedRedis, free_port
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import dead_letter_key, stream_key
from tests.aggregator.harness import RunningAggregator, aggregator, publisher, wait_applied
from tests.conftest import real_redis_binary
from tests.support.cluster import LocalRedisCluster
from tests.support.page import Page, parse_page
from tests.support.wait import wait_for, wait_until

USER, PASSWORD, TOKEN = "prometheus", "pw-landing-3f1c", "tok-landing-88ab"
#: Text a producer sent inside an invalid event: it reaches the dead letter's detail and payload, never
#: the page.
TENANT_SECRET = "acme-tenant-secret-7"
#: A source id, service and host a hostile producer could send (a source without ``source.started``
#: gets its service from the part of ``src`` before the first ``:``).
HOSTILE_SERVICE = "<script>alert(1)</script>"
HOSTILE_HOST = "<img src=x onerror=alert(2)>&amp;\"'"
HOSTILE_SRC = f"{HOSTILE_SERVICE}:{HOSTILE_HOST}:4242:c0ffee"


def get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=20, **kw)


def page_of(agg: RunningAggregator, **kw: Any) -> Page:
    r = get(agg.url + "/", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    return parse_page(r.text)


def xadd_raw(client: redis.Redis, src: str, events: list[dict[str, Any]]) -> None:
    client.xadd(stream_key(0), {ENTRY_FIELD: encode_batch(src, events)})


def emit_mix(redis_url: str) -> None:
    """A well-behaved producer (``landing-test``) with one invalid event (a raw URL as route)."""
    pub = publisher(redis_url, "landing-test")
    try:
        for _ in range(3):
            pub.emit("container.health_check_failed", {"pool_id": "p"})
        pub.emit(
            "http.request",
            {"method": "GET", "path": f"/t/../{TENANT_SECRET}", "status": 200, "duration_s": 0.1},
        )
        assert pub.flush(10)
    finally:
        pub.close(5)


def wait_page(agg: RunningAggregator, ready: Any, what: str, **kw: Any) -> Page:
    return wait_for(lambda: page_of(agg, **kw), what, within_s=20, accept=ready, show=repr)


# ---- content ------------------------------------------------------------------------------------


def test_the_page_names_the_exporter_links_and_shows_the_shard_at_a_glance(
    redis_url: str, redis_client: redis.Redis
) -> None:
    emit_mix(redis_url)
    live = publisher(redis_url, "landing-live")  # stays up: a live source
    try:
        live.emit("container.health_check_failed", {"pool_id": "q"})
        assert live.flush(10)
        with aggregator(redis_url) as agg:
            wait_applied(agg.url, 7)  # 2 x source.started, 3 + 1 checks, source.stopped (1 invalid)
            page = wait_page(
                agg,
                lambda p: "dead-letters" in p.tables and p.text.get("live-sources") == "1",
                "the dead letter and the live source on the page",
            )
            assert page.title == landing.TITLE
            assert page.text["version"] == __version__
            # The exporter toolkit's convention: a link to the metrics path, plus the health endpoints.
            assert page.links == {
                "metrics-link": "./metrics",
                "readyz-link": "./readyz",
                "healthz-link": "./healthz",
            }
            for link in page.links.values():
                assert get(agg.url + link[1:]).status_code == 200, link
            assert page.text["consumer-status"] == "consuming"
            assert page.text["newest-event"].endswith(" s ago"), page.text["newest-event"]

            length = redis_client.xlen(stream_key(0))
            (partition,) = page.records("partitions")
            assert partition["partition"] == "0"
            assert partition["length (entries)"] == f"{length:,}"
            assert partition["lag (entries)"] == "0"
            assert partition["pending"] == "0"
            assert partition["position"] == redis_client.xrevrange(stream_key(0), count=1)[0][0].decode()

            (source,) = page.records("sources")  # the stopped producer is not live
            host, pid, _ = live.src.split(":", 1)[1].rsplit(":", 2)
            assert source["service"] == "landing-live"
            assert (source["host"], source["pid"], source["version"]) == (host, pid, "9.9.9")
            assert source["source id"] == live.src

            (letter,) = page.records("dead-letters")
            (raw_id, fields), *_ = redis_client.xrevrange(dead_letter_key(0), count=1)
            assert letter["reason"] == "invalid_field" == fields[b"reason"].decode()
            assert letter["entry id"] == fields[b"entry_id"].decode()
            assert letter["dead letter id"] == raw_id.decode()
            assert letter["partition"] == "0"
            # What the producer sent stays in Redis: neither the detail nor the payload is on the page.
            assert TENANT_SECRET.encode() in fields[b"detail"] + fields[b"payload"]
            assert TENANT_SECRET not in get(agg.url + "/").text
            assert "bus-problem" not in page.text
    finally:
        live.close(5)


def test_head_unknown_paths_and_metrics_are_unchanged(redis_url: str) -> None:
    with aggregator(redis_url) as agg:
        head = httpx.head(agg.url + "/", timeout=20)
        assert head.status_code == 200
        assert head.headers["content-type"] == "text/html; charset=utf-8"
        assert head.content == b""
        assert get(agg.url + "/nope").status_code == 404
        assert get(agg.url + "/index.html").status_code == 404
        assert httpx.post(agg.url + "/", timeout=20).status_code == 405
        assert "# TYPE boilerhouse_pool_size gauge" in get(agg.url + "/metrics").text
        # No script may run and nothing may load; only the page's own stylesheet applies.
        csp = get(agg.url + "/").headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-")


def test_few_dead_letters_of_many_are_read_and_shown_newest_first(
    redis_url: str, redis_client: redis.Redis
) -> None:
    for i in range(25):
        redis_client.xadd(dead_letter_key(0), {"entry_id": f"1-{i}", "reason": f"reason_{i}", "detail": "x"})
    with aggregator(redis_url) as agg:
        page = page_of(agg)
        assert page.column("dead-letters", "entry id") == [f"1-{i}" for i in range(24, 14, -1)]
        assert len(page.tables["dead-letters"]) == 1 + landing.DEAD_LETTERS_SHOWN


def test_metrics_disabled_or_elsewhere(redis_url: str) -> None:
    with aggregator(redis_url, metrics_enabled=False) as agg:
        page = page_of(agg)
        assert "metrics-link" not in page.links
        assert "disabled" in page.text["metrics-disabled"]
        assert get(agg.url + "/metrics").status_code == 404
    with aggregator(redis_url, metrics_path="/internal/prom") as agg:
        assert page_of(agg).links["metrics-link"] == "./internal/prom"
    with aggregator(redis_url, metrics_path="/") as agg:  # the metrics endpoint itself is at /
        assert "# TYPE boilerhouse_pool_size gauge" in get(agg.url + "/").text


def test_on_a_redis_cluster_every_partition_is_read(redis_cluster: LocalRedisCluster) -> None:
    """Four partitions spread over three masters: the one pipeline reaches every one."""
    url = "redis://" + ",".join(n.addr for n in redis_cluster.masters())
    client = redis_cluster.client()
    try:
        for p in range(4):
            client.xadd(dead_letter_key(p), {"entry_id": f"{p}-1", "reason": f"reason_{p}", "detail": "x"})
        with aggregator(url, partitions=4) as agg:
            page = wait_page(
                agg,
                lambda p: p.text.get("consumer-status") == "consuming" and "bus-problem" not in p.text,
                "the consumer set up on every partition",
            )
            assert page.column("partitions", "partition") == ["0", "1", "2", "3"]
            assert page.column("partitions", "length (entries)") == ["0"] * 4
            assert page.column("partitions", "pending") == ["0"] * 4
            assert sorted(page.column("dead-letters", "reason")) == [f"reason_{p}" for p in range(4)]
    finally:
        client.close()


# ---- credentials ----------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("settings", "good", "bad"),
    [
        ({"metrics_username": USER, "metrics_password": PASSWORD}, basic(USER, PASSWORD), basic(USER, "no")),
        (
            {"metrics_bearer_token": TOKEN},
            {"Authorization": f"Bearer {TOKEN}"},
            {"Authorization": "Bearer no"},
        ),
    ],
    ids=["basic", "bearer"],
)
def test_the_page_needs_the_metrics_credentials(
    redis_url: str, settings: dict[str, str], good: dict[str, str], bad: dict[str, str]
) -> None:
    with aggregator(redis_url, **settings) as agg:
        for headers in ({}, bad):
            for method in ("GET", "HEAD"):
                r = httpx.request(method, agg.url + "/", headers=headers, timeout=20)
                m = httpx.request(method, agg.url + "/metrics", headers=headers, timeout=20)
                assert (r.status_code, m.status_code) == (401, 401), (method, headers)
                assert r.headers["www-authenticate"] == m.headers["www-authenticate"] != ""
                assert "<html" not in r.text
        assert page_of(agg, headers=good).title == landing.TITLE
        # The health endpoints stay open, as they are for /metrics.
        assert get(agg.url + "/healthz").status_code == 200


# ---- escaping ---------------------------------------------------------------------------------------


def test_what_producers_send_is_escaped(redis_url: str, redis_client: redis.Redis) -> None:
    now = time.time()
    xadd_raw(
        redis_client,
        HOSTILE_SRC,
        [{"type": "container.health_check_failed", "seq": 1, "ts": now, "pool_id": "p"}],
    )
    started = {"type": "source.started", "seq": 1, "ts": now, "service": "fine", "version": "<b>1.0</b>"}
    xadd_raw(
        redis_client, "fine:<i>h</i>:7:aa", [{**started, "host": "<i>h</i>", "pid": 7, "start_time_s": now}]
    )
    redis_client.xadd(dead_letter_key(0), {"entry_id": "<u>1-0</u>", "reason": "<marquee>x", "detail": "d"})
    with aggregator(redis_url) as agg:
        wait_applied(agg.url, 2)
        r = get(agg.url + "/")
        raw = r.text
        for markup in ("<script", "<img", "<b>", "<i>", "<u>", "<marquee"):
            assert markup not in raw, markup
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
        assert "&lt;img src=x onerror=alert(2)&gt;&amp;amp;&quot;&#x27;" in raw
        page = parse_page(raw)
        by_service = {s["service"]: s for s in page.records("sources")}
        assert set(by_service) == {HOSTILE_SERVICE, "fine"}
        assert by_service[HOSTILE_SERVICE]["host"] == HOSTILE_HOST
        assert by_service[HOSTILE_SERVICE]["source id"] == HOSTILE_SRC
        assert by_service["fine"]["version"] == "<b>1.0</b>"
        assert page.records("dead-letters")[0]["reason"] == "<marquee>x"
        assert set(page.tags) <= {
            "html",
            "head",
            "meta",
            "title",
            "style",
            "body",
            "header",
            "h1",
            "h2",
            "p",
            "span",
            "code",
            "main",
            "nav",
            "ul",
            "li",
            "a",
            "section",
            "dl",
            "dt",
            "dd",
            "table",
            "thead",
            "tbody",
            "tr",
            "th",
            "td",
        }, page.tags


# ---- a Redis that is down or slow ------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own (it is stopped, or made slow), stopped by pid afterwards."""
    server = EmbeddedRedis(
        workdir=tmp_path / "redis",
        binary=real_redis_binary(),
        allow_fake=False,
        extra_args=("--enable-debug-command", "local"),
    ).start()
    yield server
    server.stop()


def test_the_page_renders_without_redis() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    with aggregator(nowhere) as agg:
        page = page_of(agg)
        assert page.text["consumer-status"].startswith("starting:")
        assert page.text["dead-letters-unknown"]
        assert page.text["bus-problem"].startswith("Redis: not read")
        assert page.column("partitions", "length (entries)") == ["unknown"]
        assert get(agg.url + "/readyz").status_code == 503


def test_the_page_renders_when_redis_goes_away(own_redis: EmbeddedRedis) -> None:
    emit_mix(own_redis.url)
    with aggregator(own_redis.url) as agg:
        wait_applied(agg.url, 5)  # source.started, 3 checks, source.stopped (the invalid one is not)
        own_redis.stop()
        page = page_of(agg)
        assert "not read" in page.text["bus-problem"]
        assert page.column("partitions", "lag (entries)") == ["unknown"]
        # What the aggregator holds in memory is still shown.
        assert page.text["newest-event"].endswith("ago")


def test_a_slow_redis_does_not_hang_the_page(own_redis: EmbeddedRedis) -> None:
    with aggregator(own_redis.url) as agg:
        page_of(agg)
        admin = redis.Redis.from_url(own_redis.url, protocol=2, socket_timeout=30)
        sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "6"), daemon=True)
        sleeper.start()
        probe = redis.Redis.from_url(own_redis.url, protocol=2, socket_timeout=0.2)
        wait_until(lambda: not answers(probe), "Redis asleep")
        probe.close()
        t0 = time.monotonic()
        pages = [page_of(agg) for _ in range(3)]  # the third finds the read slots taken
        took = time.monotonic() - t0
        sleeper.join(30)
        admin.close()
        assert took < 3 * landing.BUS_DEADLINE_S + 3, took
        for page in pages:
            assert page.text["bus-problem"].startswith("Redis: not read"), page.text
            assert page.column("partitions", "length (entries)") == ["unknown"]
        assert f"within {landing.BUS_DEADLINE_S:g} s" in pages[0].text["bus-problem"]
        # Once Redis is back, so are the values.
        wait_page(agg, lambda p: "bus-problem" not in p.text, "Redis values back on the page")


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# ---- a real browser: Debian's chromium, headless ---------------------------------------------------


def chromium(args: list[str], tmp_path: Path, timeout_s: float = 90.0) -> str:
    """Run chromium headless with a private profile; its output, or a failure. It runs in a session of
    its own, killed (by its process group id) when it outlives ``timeout_s``."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: run ./scripts/install-system-deps.sh (make test does)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # tests run as root, where chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chromium did not finish within {timeout_s} s:\n{err.decode(errors='replace')[-3000:]}")
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


def png_pixel(png: bytes, x: int, y: int) -> tuple[int, int, int]:
    """The RGB of one pixel of an 8-bit RGB or RGBA PNG (what chromium's --screenshot writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, {}, b""
    while pos < len(png):
        (length,), kind = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        data = png[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat += data
        chunks[kind] = data
        pos += 12 + length
    width, _height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev = bytearray(stride)
    for row in range(y + 1):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
    return prev[x * bpp], prev[x * bpp + 1], prev[x * bpp + 2]


def test_chromium_renders_the_page(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    emit_mix(redis_url)
    now = time.time()
    xadd_raw(
        redis_client,
        HOSTILE_SRC,
        [{"type": "container.health_check_failed", "seq": 1, "ts": now, "pool_id": "p"}],
    )
    with aggregator(redis_url) as agg:
        wait_applied(agg.url, 6)
        wait_page(agg, lambda p: "dead-letters" in p.tables, "the dead letter on the page")
        dumped = chromium(["--dump-dom", agg.url + "/"], tmp_path)
        dom = parse_page(dumped)
        assert dom.title == landing.TITLE
        assert dom.text["version"] == __version__
        assert set(dom.links) == {"metrics-link", "readyz-link", "healthz-link"}
        assert dom.text["consumer-status"] == "consuming"
        assert dom.tables["partitions"][0][:4] == [
            "partition",
            "length (entries)",
            "lag (entries)",
            "pending",
        ]
        assert dom.column("partitions", "partition") == ["0"]
        assert dom.column("sources", "service") == [HOSTILE_SERVICE]  # as text, not as a script
        assert dom.column("dead-letters", "reason") == ["invalid_field"]
        # The browser built no element from what the producer sent, and ran nothing.
        assert "script" not in dom.tags and "img" not in dom.tags
        assert TENANT_SECRET not in dumped

        shot = tmp_path / "landing.png"
        chromium(
            ["--window-size=1024,768", "--hide-scrollbars", f"--screenshot={shot}", agg.url + "/"], tmp_path
        )
        png = shot.read_bytes()
        # The header's colour: the stylesheet applied, i.e. the Content-Security-Policy's hash matches it.
        assert png_pixel(png, 8, 8) == (0x1F, 0x4E, 0x79)
        assert png_pixel(png, 8, 500) == (0xFF, 0xFF, 0xFF)
