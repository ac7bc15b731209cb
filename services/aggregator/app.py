"""The aggregator's ASGI app: /metrics (text or OpenMetrics), /healthz, /readyz and the landing page /."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import anyio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shared.events.bus import Client, connect

from . import landing
from .consumer import Consumer
from .exposition import StateCollector
from .render import Renderer
from .scrape import Exposer, Reader, negotiate
from .settings import AggregatorSettings

logger = logging.getLogger(__name__)


def make_registry(consumer: Consumer, settings: AggregatorSettings) -> CollectorRegistry:
    """Everything /metrics shows, through prometheus_client (the renderer's fallback and reference)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StateCollector(
            consumer.snapshot,
            settings.metrics_prefix,
            settings.source_ttl_s,
            consumer.readings,
            clock=consumer.clock.now,
        )
    )
    standard_collectors(registry)
    return registry


def standard_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    """The aggregator's own process metrics, from the library's standard collectors."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def make_exposer(consumer: Consumer, settings: AggregatorSettings) -> Exposer:
    """The /metrics renderer: fold state written directly, then the standard collectors."""
    return Exposer(
        Renderer(settings.metrics_prefix, settings.source_ttl_s),
        consumer.capture,
        lambda: consumer.version,
        consumer.readings,
        standard_collectors(CollectorRegistry(auto_describe=False)),
        make_registry(consumer, settings),
        clock=consumer.clock.now,  # liveness and ages run on Redis' clock, as the fold's entry times
    )


async def _rendered_ahead(first: bytes, reader: Reader) -> AsyncIterator[bytes]:
    """The chunks, each next one rendered in a worker thread while this one is being sent (socket
    writes let go of the GIL: sending and rendering overlap)."""
    loop = asyncio.get_running_loop()  # the app runs on asyncio (uvicorn)
    chunk: bytes | None = first
    following: asyncio.Future[bytes | None] | None = None
    try:
        while chunk is not None:
            following = loop.run_in_executor(None, next, reader, None)
            yield chunk
            chunk = await following
            following = None
    finally:
        if following is not None:  # the client went away: the render in flight is dropped (the
            following.cancel()  # reader, closed by the response, takes nothing more from it)


class _MetricsResponse(StreamingResponse):
    """The exposition, streamed as it is rendered; ``done`` runs once it was sent, failed or the client
    went away (it closes the reader and gives the scrape slot back)."""

    def __init__(
        self, first: bytes, reader: Reader, done: Callable[[], None], headers: dict[str, str]
    ) -> None:
        super().__init__(_rendered_ahead(first, reader), headers=headers)
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._done()


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that does not reveal the expected length either."""
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def _authorized(request: Request, settings: AggregatorSettings) -> bool:
    if not (settings.metrics_bearer_token or settings.metrics_username):
        return True
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if settings.metrics_bearer_token and scheme.lower() == "bearer":
        return _same(credentials.strip(), settings.metrics_bearer_token)
    if settings.metrics_username and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = _same(user, settings.metrics_username)
        ok_pass = _same(password, settings.metrics_password or "")
        return ok_user and ok_pass
    return False


def _challenge(settings: AggregatorSettings) -> str:
    """The WWW-Authenticate value: one challenge per accepted scheme."""
    challenges = []
    if settings.metrics_username:
        challenges.append('Basic realm="metrics"')
    if settings.metrics_bearer_token:
        challenges.append('Bearer realm="metrics"')
    return ", ".join(challenges)


def _auth_mode(settings: AggregatorSettings) -> str:
    modes = [
        name
        for name, on in (("basic", settings.metrics_username), ("bearer", settings.metrics_bearer_token))
        if on
    ]
    return "+".join(modes) or "none"


def create_app(
    settings: AggregatorSettings,
    client: Client | None = None,
    rebuild: bool = False,
) -> Starlette:
    """Build the app; the consumer thread starts and stops with the ASGI lifespan.

    Without ``client`` the consumer connects from its retry loop (the bus need not be up yet, and
    whether it is a single Redis or a cluster is learnt then).
    """
    consumer = Consumer(
        client or (lambda: connect(settings.redis, "consumer", extra_timeout_s=settings.block_ms / 1000)),
        settings,
        rebuild=rebuild,
    )
    exposer = make_exposer(consumer, settings)
    scrape_slots = threading.BoundedSemaphore(settings.max_concurrent_scrapes)
    started = time.monotonic()

    async def metrics(request: Request) -> Response:
        if not _authorized(request, settings):
            # Who asked and how, never what they sent: the header may hold a near-miss of the secret.
            scheme = request.headers.get("authorization", "").partition(" ")[0] or "none"
            logger.info(
                "metrics: rejected scrape from %s (authorization scheme: %s)",
                request.client.host if request.client else "?",
                scheme[:16],
            )
            return JSONResponse(
                {"error": "unauthorized", "detail": "metrics require credentials"},
                status_code=401,
                headers={"WWW-Authenticate": _challenge(settings)},
            )
        if not scrape_slots.acquire(blocking=False):
            return JSONResponse(
                {
                    "error": "too_many_scrapes",
                    "detail": f"at most {settings.max_concurrent_scrapes} concurrent scrapes",
                },
                status_code=429,
                headers={"Retry-After": "1"},
            )
        try:
            fmt = negotiate(request.headers.get("accept", ""), request.headers.get("accept-encoding", ""))
            reader = exposer.open(fmt)
        except BaseException:
            scrape_slots.release()
            raise

        def done() -> None:
            reader.close()
            scrape_slots.release()

        try:
            # The first chunk (and so the capture of the state) before the status line: a failure to
            # render is still a 500, not a truncated 200.
            first = await anyio.to_thread.run_sync(next, reader, b"")
        except BaseException:
            done()
            raise
        headers = {"Content-Type": fmt.content_type}
        if fmt.gzip:
            headers["Content-Encoding"] = "gzip"
        return _MetricsResponse(first, reader, done, headers)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "uptime_s": round(time.monotonic() - started, 3)})

    async def readyz(request: Request) -> Response:
        if consumer.error is not None:
            return JSONResponse({"status": "error", "detail": str(consumer.error)}, status_code=503)
        if not consumer.ready.is_set():
            problem = consumer.bus_problem
            if problem is None:
                return JSONResponse(
                    {"status": "starting", "detail": "consumer not set up yet"}, status_code=503
                )
            return JSONResponse(
                {
                    "status": "starting",
                    "reason": problem.reason,
                    "detail": f"consumer not set up yet: {problem.detail}",
                },
                status_code=503,
            )
        stalls = consumer.stalls()
        if stalls:
            # Entries wait and the consumer cannot get on (Redis answers): say which partition, since when.
            return JSONResponse(
                {
                    "status": "stalled",
                    "reason": "no_progress",
                    "detail": "; ".join(
                        f"partition {s.partition}: no progress for {s.seconds:.0f}s while entries wait "
                        f"({s.why})"
                        for s in stalls
                    ),
                    "partitions": [
                        {
                            "partition": s.partition,
                            "since": datetime.fromtimestamp(s.since, UTC).isoformat(timespec="seconds"),
                            "since_unix_s": round(s.since, 3),
                            "error": s.why,
                        }
                        for s in stalls
                    ],
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready", "partitions": sorted(consumer.parts)})

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    routes += landing.routes(consumer, settings, _authorized, _challenge)
    if settings.metrics_enabled:
        routes.append(Route(settings.metrics_path, metrics, methods=["GET"]))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        consumer.start()
        logger.info(
            "aggregator consuming partitions %s as group %r; metrics at %s (auth: %s, "
            "at most %d concurrent scrapes)",
            sorted(consumer.parts),
            settings.group,
            settings.metrics_path,
            _auth_mode(settings),
            settings.max_concurrent_scrapes,
        )
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(consumer.stop)
            consumer.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.consumer = consumer
    app.state.exposer = exposer
    app.state.settings = settings
    return app
