"""ASGI middleware that publishes one ``http.request`` event per request, labelled by route template,
and takes part in the request's W3C trace (``traceparent``)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.events.emit import Emit
from shared.events.schema import HTTP_METHODS, UNMATCHED_PATH
from shared.events.trace import (
    SAMPLED,
    TRACE_ID,
    format_traceparent,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)

_TRACEPARENT = b"traceparent"

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


def request_trace(scope: Scope) -> tuple[str, int]:
    """The trace id and flags this request continues: its ``traceparent``'s if it has exactly one valid
    header, else a new trace (an invalid header is never an error: the request is served in a new
    trace, as W3C Trace Context says)."""
    found = None
    for name, value in scope.get("headers", ()):
        if name == _TRACEPARENT:
            if found is not None:  # more than one: invalid
                return new_trace_id(), SAMPLED
            found = value
    parent = parse_traceparent(found)
    if parent is None:
        return new_trace_id(), SAMPLED
    return parent.trace_id, parent.flags


class EventsMiddleware:
    """Measures each HTTP request with a monotonic clock and emits it; never touches Redis itself.

    Each request is served in a W3C trace: the one of its ``traceparent`` header, or a new one. The
    trace id is set in :data:`~shared.events.trace.TRACE_ID` while the request is served (so the events
    emitted meanwhile through ``traced(emit)`` carry it), sent in the ``http.request`` event, and the
    response gets a ``traceparent`` header with it and a new span id (this server's span).

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
        trace_id, flags = request_trace(scope)
        traceparent = format_traceparent(trace_id, new_span_id(), flags).encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (_TRACEPARENT, traceparent)]}
            await send(message)

        token = TRACE_ID.set(trace_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            TRACE_ID.reset(token)
            method = scope["method"]
            self.emit(
                "http.request",
                {
                    "method": method if method in HTTP_METHODS else "OTHER",
                    "path": route_template(scope),
                    "status": status,
                    "duration_s": _perf() - start,
                    "trace_id": trace_id,
                },
            )
