"""ASGI middleware that publishes one ``http.request`` event per request, labelled by route template."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.events.emit import Emit
from shared.events.schema import HTTP_METHODS, UNMATCHED_PATH

_perf = time.perf_counter


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/tenants/{tenant_id}/claim``), never the raw path.

    Mount prefixes are taken from ``root_path`` as matched, so mounts must have static paths.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not path:
        return UNMATCHED_PATH
    prefix = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return (prefix + path) or "/"


class EventsMiddleware:
    """Measures each HTTP request with a monotonic clock and emits it; never touches Redis itself.

    Parameters:
        app: the wrapped ASGI app.
        emit: ``Publisher.emit`` (or anything with that signature).
    """

    def __init__(self, app: ASGIApp, emit: Emit) -> None:
        self.app = app
        self.emit = emit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = _perf()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method = scope["method"]
            self.emit(
                "http.request",
                {
                    "method": method if method in HTTP_METHODS else "OTHER",
                    "path": route_template(scope),
                    "status": status,
                    "duration_s": _perf() - start,
                },
            )
