"""The landing page at ``/``: the exporter, its version and links, and this shard's state at a glance.

Prometheus' exporter toolkit answers ``/`` with a page naming the exporter and linking its metrics path;
this one adds what an operator checks first: the consumer's status, each partition's length, lag,
pending entries and checkpoint age, the live sources, the newest event's age and the newest dead
letters (their reason and ids: never their detail or payload, which hold what a producer sent). Plain
HTML rendered on the server, no script; every value is escaped (source ids, services and versions come
from producers). It is guarded by the metrics credentials (``BOILERHOUSE_METRICS_USERNAME`` ...).

What the page reads from Redis it reads in one pipelined round trip (``XINFO GROUPS``, ``XLEN`` and
``XREVRANGE ... COUNT n`` per partition), waited for at most :data:`BUS_DEADLINE_S`: a slow or down
Redis leaves those cells "unknown" with the reason, and the rest of the page (from memory) still shows.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from services import __version__
from shared.events import replies
from shared.events.bus import ERRORS, Client, diagnose
from shared.events.streams import dead_letter_key, parse_id, stream_key

from .consumer import Consumer
from .settings import AggregatorSettings

logger = logging.getLogger(__name__)

TITLE = "Boilerhouse metrics aggregator"
#: Dead letters shown: the newest of this shard's partitions.
DEAD_LETTERS_SHOWN = 10
#: Dead letters read at most per page, over all partitions (each holds up to ~4.6 KiB of payload): with
#: many partitions fewer are read from each, at least one.
DEAD_LETTERS_READ = 64
#: Live sources listed, most recently heard first (the count covers all of them).
SOURCES_SHOWN = 50
#: Pages rendered at once; more get 429 at once (each copies the fold state).
CONCURRENT_RENDERS = 2
#: How long a page waits for its Redis round trip; past it the page shows without those values.
BUS_DEADLINE_S = 2.0
#: Redis reads of pages in flight at once (one that outlived its deadline still holds its slot until
#: its socket timeout), so a slow Redis cannot pile up threads.
CONCURRENT_READS = 2

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f23;background:#fff}"
    "header{background:#1f4e79;color:#fff;padding:12px 24px}"
    "header h1{margin:0;font-size:1.4em}header p{margin:4px 0 0}"
    "main{padding:4px 24px 16px}h2{font-size:1.1em;margin:16px 0 6px}"
    "table{border-collapse:collapse}"
    "th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}"
    "th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    "td.id{max-width:40em;overflow-wrap:anywhere;font-family:monospace}"
    "dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dd{margin:0}"
    ".note{color:#57606a}.problem{color:#9a3412}"
)
#: No script may run, nothing may load, and only the page's own stylesheet applies (by its hash), so
#: even an escaping mistake could not run a producer's text as code.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class PartitionRow:
    """One partition of this shard; None: unknown (Redis did not answer, or not in time)."""

    partition: int
    length: int | None
    lag: int | None
    pending: int | None
    checkpoint_age_s: float | None
    position: str | None


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A live producer process: its source id, service, host and pid (from a ``service:host:pid:nonce``
    source id, None otherwise), version and how long ago Redis last heard of it."""

    src: str
    service: str
    host: str | None
    pid: int | None
    version: str
    age_s: float


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """A dead letter: when it was written (its id), the entry it came from and why. Its ``detail`` and
    ``payload`` fields are not read: they quote what the producer sent."""

    partition: int
    letter_id: str
    age_s: float
    entry_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BusView:
    """What the page reads from Redis, per partition: stream length, the group's lag and pending count,
    and the newest dead letters (None: not read). ``problem`` says what went wrong, if anything."""

    lengths: Mapping[int, int | None] = field(default_factory=dict)
    lags: Mapping[int, int | None] = field(default_factory=dict)
    pendings: Mapping[int, int | None] = field(default_factory=dict)
    dead_letters: Sequence[DeadLetterRow] | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Overview:
    """What the page shows; gathered by :func:`gather`, rendered by :func:`render`.

    ``dead_letters`` is None when they could not be read; ``bus_problem`` then says why.
    """

    consumer_status: str
    partitions: Sequence[PartitionRow]
    live_sources: int
    sources: Sequence[SourceRow]
    vanished: Mapping[str, int]
    newest_event_age_s: float | None
    dead_letters: Sequence[DeadLetterRow] | None
    bus_problem: str | None = None


def consumer_status(consumer: Consumer) -> str:
    if consumer.error is not None:
        return f"stopped: {consumer.error}"
    if not consumer.ready.is_set():
        problem = consumer.bus_problem
        return "starting: " + (problem.detail if problem is not None else "consumer not set up yet")
    return "consuming"


def split_src(src: str) -> tuple[str | None, int | None]:
    """Host and pid of a source id made as the publishers make them (``service:host:pid:nonce``)."""
    parts = src.split(":")
    if len(parts) >= 4 and parts[-2].isascii() and parts[-2].isdigit() and len(parts[-2]) <= 10:
        return ":".join(parts[1:-2]), int(parts[-2])
    return None, None


def read_bus(client: Client, partitions: Sequence[int], settings: AggregatorSettings, now: float) -> BusView:
    """Length, lag and pending of each partition and its newest dead letters, newest first: one
    pipelined round trip (one per master on a cluster). A command refused (e.g. by an ACL file older
    than the page) leaves its values unknown and is named in ``problem``."""
    if not partitions:
        return BusView(dead_letters=[])
    per_partition = max(1, min(DEAD_LETTERS_SHOWN, DEAD_LETTERS_READ // len(partitions)))
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        stream = stream_key(p, settings.key_prefix)
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        pipe.xrevrange(dead_letter_key(p, settings.key_prefix), count=per_partition)
    results = pipe.execute(raise_on_error=False)
    lengths: dict[int, int | None] = {}
    lags: dict[int, int | None] = {}
    pendings: dict[int, int | None] = {}
    letters: list[DeadLetterRow] = []
    failed: list[str] = []
    dead_ok = True
    for i, p in enumerate(partitions):
        groups, length, dead = results[3 * i : 3 * i + 3]
        lags[p] = pendings[p] = lengths[p] = None
        if isinstance(groups, Exception):
            failed.append(f"XINFO GROUPS: {groups}")
        else:
            group = replies.find_group(groups, settings.group)
            if group is not None:
                lags[p], pendings[p] = group.lag, group.pending
        if isinstance(length, Exception):
            failed.append(f"XLEN: {length}")
        else:
            lengths[p] = int(length)
        if isinstance(dead, Exception):
            failed.append(f"XREVRANGE: {dead}")
            dead_ok = False
            continue
        for raw_id, fields in replies.entries(dead):
            letter_id = replies.text(raw_id)
            got = fields or {}
            letters.append(
                DeadLetterRow(
                    partition=p,
                    letter_id=letter_id,
                    age_s=now - parse_id(letter_id)[0] / 1000,
                    entry_id=replies.text(got.get(b"entry_id", b"")),
                    reason=replies.text(got.get(b"reason", b"")),
                )
            )
    newest = heapq.nlargest(DEAD_LETTERS_SHOWN, letters, key=lambda r: parse_id(r.letter_id))
    problem = None
    if failed:
        problem = f"Redis refused {len(failed)} command(s), first: {failed[0][:200]}"
    return BusView(lengths, lags, pendings, newest if dead_ok else None, problem)


def gather(consumer: Consumer, settings: AggregatorSettings, bus: BusView) -> Overview:
    """Everything the page shows, from memory and ``bus``. No I/O, but copies the fold state."""
    now = consumer.clock.now()
    state = consumer.snapshot()
    mono = time.monotonic()
    partitions = [
        PartitionRow(
            p,
            bus.lengths.get(p),
            bus.lags.get(p),
            bus.pendings.get(p),
            mono - pc.last_checkpoint,  # as the checkpoint-age metric (since start, before the first)
            state.positions.get(p),
        )
        for p, pc in sorted(consumer.parts.items())
    ]
    live = state.live_sources(now, settings.source_ttl_s)
    shown = heapq.nlargest(SOURCES_SHOWN, live, key=lambda s: (state.sources[s].last_seen, s))
    sources = []
    for s in shown:
        info = state.sources[s]
        host, pid = split_src(s)
        sources.append(SourceRow(s, info.service, host, pid, info.version, now - info.last_seen))
    return Overview(
        consumer_status=consumer_status(consumer),
        partitions=partitions,
        live_sources=len(live),
        sources=sources,
        vanished=state.vanished_by_service(now, settings.source_ttl_s),
        newest_event_age_s=now - state.newest_entry_s if state.newest_entry_s else None,
        dead_letters=bus.dead_letters,
        bus_problem=bus.problem,
    )


# ---- rendering ----------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def age(seconds: float | None) -> str:
    """A duration for people: ``4.2 s``, ``17 s``, ``12 min``, ``5 h``, ``3 d``."""
    if seconds is None or math.isnan(seconds):
        return "unknown"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86_400:.0f} d"


def _count(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]]) -> str:
    """A table; each cell is ``(class, text)``, the text escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{cls}">{_e(cell)}</td>' if cls else f"<td>{_e(cell)}</td>" for cls, cell in row
        )
        + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(view: Overview, settings: AggregatorSettings) -> str:
    """The page as HTML. Every value from the state, Redis or a producer goes through ``html.escape``."""
    links = []
    if settings.metrics_enabled:
        # Relative links, so that the page works behind a reverse proxy that adds a path prefix.
        links.append(
            f'<li><a id="metrics-link" href=".{_e(settings.metrics_path)}">Metrics</a> '
            f"<code>{_e(settings.metrics_path)}</code></li>"
        )
    else:
        links.append(
            '<li id="metrics-disabled">Metrics are disabled (BOILERHOUSE_METRICS_ENABLED=false)</li>'
        )
    links.append('<li><a id="readyz-link" href="./readyz">Readiness</a> <code>/readyz</code></li>')
    links.append('<li><a id="healthz-link" href="./healthz">Health</a> <code>/healthz</code></li>')

    vanished = ", ".join(f"{svc}: {n}" for svc, n in sorted(view.vanished.items())) or "none"
    newest = (
        "no event folded yet" if view.newest_event_age_s is None else f"{age(view.newest_event_age_s)} ago"
    )
    status = (
        "<dl>"
        f'<dt>Consumer</dt><dd id="consumer-status">{_e(view.consumer_status)}</dd>'
        f'<dt>Newest event</dt><dd id="newest-event">{_e(newest)}</dd>'
        f'<dt>Live sources</dt><dd id="live-sources">{view.live_sources}</dd>'
        f'<dt>Vanished sources</dt><dd id="vanished">{_e(vanished)}</dd>'
        "</dl>"
    )
    if view.bus_problem:
        status += f'<p class="problem" id="bus-problem">Redis: {_e(view.bus_problem)}</p>'

    partitions = _table(
        "partitions",
        ["partition", "length (entries)", "lag (entries)", "pending", "last checkpoint", "position"],
        [
            [
                ("num", str(r.partition)),
                ("num", _count(r.length)),
                ("num", _count(r.lag)),
                ("num", _count(r.pending)),
                ("num", "none yet" if r.checkpoint_age_s is None else f"{age(r.checkpoint_age_s)} ago"),
                ("id", r.position or "none yet"),
            ]
            for r in view.partitions
        ],
    )

    if view.sources:
        sources = _table(
            "sources",
            ["service", "host", "pid", "version", "last heard", "source id"],
            [
                [
                    ("", s.service),
                    ("id", "?" if s.host is None else s.host),
                    ("num", "?" if s.pid is None else str(s.pid)),
                    ("", s.version or "?"),
                    ("num", f"{age(s.age_s)} ago"),
                    ("id", s.src),
                ]
                for s in view.sources
            ],
        )
        if view.live_sources > len(view.sources):
            sources += (
                f'<p class="note" id="sources-more">and {view.live_sources - len(view.sources):,} more '
                f"(the {SOURCES_SHOWN} most recently heard are listed)</p>"
            )
    else:
        sources = '<p class="note" id="sources-none">No live source.</p>'

    if view.dead_letters is None:
        dead = '<p class="note" id="dead-letters-unknown">Not read (see Status).</p>'
    elif not view.dead_letters:
        dead = '<p class="note" id="dead-letters-none">None.</p>'
    else:
        dead = _table(
            "dead-letters",
            ["written", "partition", "reason", "entry id", "dead letter id"],
            [
                [
                    ("num", f"{age(d.age_s)} ago"),
                    ("num", str(d.partition)),
                    ("", d.reason),
                    ("id", d.entry_id),
                    ("id", d.letter_id),
                ]
                for d in view.dead_letters
            ],
        )

    shard = f"shard {settings.shard} of {settings.shards}" if settings.shards > 1 else "one shard"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(TITLE)}</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(TITLE)}</h1>"
        f'<p>version <span id="version">{_e(__version__)}</span> · consumer group '
        f"<code>{_e(settings.group)}</code> · {_e(shard)}</p></header><main>"
        f'<nav><ul id="links">{"".join(links)}</ul></nav>'
        f'<section id="status"><h2>Status</h2>{status}</section>'
        f'<section id="partitions-section"><h2>Partitions</h2>{partitions}</section>'
        f'<section id="sources-section"><h2>Live sources</h2>{sources}</section>'
        f'<section id="dead-letters-section"><h2>Recent dead letters</h2>{dead}'
        f'<p class="note">The newest {DEAD_LETTERS_SHOWN} of this shard\'s partitions, by reason; '
        "their detail and payload (what the producer sent) are not shown here: "
        f"<code>redis-cli XREVRANGE '{_e(dead_letter_key(0, settings.key_prefix))}' + - COUNT 10</code> "
        "(one stream per partition).</p></section>"
        '<p class="note">Ages are measured on Redis\' clock. Sources are live while heard from within '
        f"{_e(age(settings.source_ttl_s))} (BOILERHOUSE_SOURCE_TTL_S).</p>"
        "</main></body></html>"
    )


# ---- the route ----------------------------------------------------------------------------------


def routes(
    consumer: Consumer,
    settings: AggregatorSettings,
    authorized: Callable[[Request, AggregatorSettings], bool],
    challenge: Callable[[AggregatorSettings], str],
) -> list[Route]:
    """``GET /`` (and HEAD) with the metrics endpoint's credential check (``authorized``,
    ``challenge``); none when the metrics endpoint itself is served at ``/``."""
    if settings.metrics_enabled and settings.metrics_path == "/":
        return []
    renders = threading.BoundedSemaphore(CONCURRENT_RENDERS)
    reads = threading.BoundedSemaphore(CONCURRENT_READS)

    def read() -> BusView:
        """In a worker thread; it holds a ``reads`` slot until Redis answers or its socket times out,
        even when the page stopped waiting, so a slow Redis is never asked by more than a few."""
        if not reads.acquire(blocking=False):
            return BusView(problem="not read: earlier pages' Redis reads are still waiting for Redis")
        try:
            return read_bus(consumer.client, sorted(consumer.parts), settings, consumer.clock.now())
        except ERRORS as exc:
            return BusView(problem=f"not read: {diagnose(exc, settings.redis).detail}")
        finally:
            reads.release()

    async def bus_view() -> BusView:
        if not consumer.connected:
            return BusView(problem="not read: the consumer has not connected to Redis yet")
        view = None
        with anyio.move_on_after(BUS_DEADLINE_S):
            view = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
        if view is None:
            return BusView(problem=f"not read: Redis did not answer within {BUS_DEADLINE_S:g} s")
        return view

    def build(bus: BusView) -> str:
        return render(gather(consumer, settings, bus), settings)

    async def landing(request: Request) -> Response:
        if not authorized(request, settings):
            logger.info(
                "landing page: rejected request from %s", request.client.host if request.client else "?"
            )
            return JSONResponse(
                {"error": "unauthorized", "detail": "this page requires the metrics credentials"},
                status_code=401,
                headers={"WWW-Authenticate": challenge(settings)},
            )
        if not renders.acquire(blocking=False):
            return JSONResponse(
                {"error": "too_many_requests", "detail": f"at most {CONCURRENT_RENDERS} pages at once"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        try:
            bus = await bus_view()
            page = await anyio.to_thread.run_sync(build, bus)
        finally:
            renders.release()
        return HTMLResponse(page, headers=_HEADERS)

    return [Route("/", landing, methods=["GET"])]
