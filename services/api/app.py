"""The API server's app factory: routes, the request-events middleware and the publisher's lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import __version__
from shared.events.publisher import Publisher

from .middleware import EventsMiddleware
from .settings import ApiSettings

logger = logging.getLogger(__name__)


def make_publisher(settings: ApiSettings, service: str = "api") -> Publisher:
    return Publisher(
        settings.redis_url,
        service,
        version=__version__,
        partitions=settings.partitions,
        prefix=settings.key_prefix,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        buffer_size=settings.buffer_size,
        spool_dir=settings.spool_dir,
    )


def create_app(settings: ApiSettings, publisher: Publisher | None = None) -> Starlette:
    """Build the API app. The publisher is closed (flushed) when the app shuts down."""
    pub = publisher or make_publisher(settings)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "events_buffered": pub.buffered(), "bus_connected": pub.connected})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await pub.aclose()

    app = Starlette(
        routes=[Route("/healthz", healthz)],
        middleware=[Middleware(EventsMiddleware, emit=pub.emit)],
        lifespan=lifespan,
    )
    app.state.publisher = pub
    app.state.settings = settings
    return app
