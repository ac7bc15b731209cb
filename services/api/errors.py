"""Domain errors mapped to HTTP responses, once: the table the app factory installs as exception handlers."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from services.httpserver import READ_TIMED_OUT_KEY

from . import platform, pool, sync
from .runtimes.base import ContainerRuntimeError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """A request that cannot be served as asked.

    Parameters:
        detail: what is wrong, for a person (goes into the JSON body).
        error: a stable machine-readable code; the class default if None.
        status: the HTTP status; the class default if None.
        extra: more JSON fields for the body (``field``, ``minimum``, ``maximum`` ...).
    """

    status = 400
    error = "bad_request"

    def __init__(
        self, detail: str, *, error: str | None = None, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        if error is not None:
            self.error = error
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    """The request body or a path parameter is malformed (400)."""


def error_body(error: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail, **extra}


def json_error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(error_body(error, detail, **extra), status_code=status, headers=headers)


Handler = Callable[[Request, Exception], Awaitable[Response]]


def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_error(exc.status, exc.error, exc.detail, **exc.extra)


def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
        if request.url.path.endswith("/"):
            detail += " (paths have no trailing slash)"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return json_error(exc.status_code, error, str(detail), headers=dict(exc.headers or {}))


#: Status of a request whose client closed the connection before sending all of it (nginx's 499).
CLIENT_CLOSED = 499
#: Status of a request the server stopped reading after ``http_read_timeout_s`` (services/httpserver.py).
READ_TIMEOUT = 408


def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody will read this answer: it exists so the request is recorded (http.request status) as what
    # happened - the client closed (499) or was cut off for being too slow (408) - not as a server error.
    status = READ_TIMEOUT if request.scope.get(READ_TIMED_OUT_KEY) else CLIENT_CLOSED
    logger.info("%s %s: client gone before its body was read (%d)", request.method, request.url.path, status)
    return Response(status_code=status)


def _unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return json_error(500, "internal_error", f"unexpected {type(exc).__name__}; see the server log")


def _status(status: int, error: str) -> Callable[[Request, Exception], Response]:
    def handle(request: Request, exc: Exception) -> Response:
        return json_error(status, error, str(exc))

    return handle


def _pool_exhausted(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, pool.PoolExhausted)
    retry_after = max(1, math.ceil(exc.retry_after_s))
    return json_error(
        503,
        "pool_exhausted",
        str(exc),
        headers={"Retry-After": str(retry_after)},
        pool_id=exc.pool_id,
        retry_after_s=retry_after,
    )


def _sync_failed(request: Request, exc: Exception) -> Response:
    # The remote (or the transfer to it) failed, not the request: a gateway error, 504 if it timed out.
    assert isinstance(exc, sync.SyncFailed)
    status = 504 if exc.error_type == "timeout" else 502
    return json_error(status, "sync_failed", str(exc), error_type=exc.error_type, workload_id=exc.workload_id)


def _container_failed(request: Request, exc: Exception) -> Response:
    logger.error("container runtime failure serving %s %s: %s", request.method, request.url.path, exc)
    return json_error(500, "container_runtime_error", str(exc))


def _async(handler: Callable[[Request, Exception], Response]) -> Handler:
    async def run(request: Request, exc: Exception) -> Response:
        return handler(request, exc)

    return run


def exception_handlers() -> dict[Any, Handler]:
    """Every domain error the API can raise, with its status and error code (one place)."""
    table: dict[Any, Callable[[Request, Exception], Response]] = {
        ApiError: _api_error,
        HTTPException: _http_exception,
        ClientDisconnect: _client_gone,
        platform.UnknownPool: _status(404, "pool_not_found"),
        platform.UnknownWorkload: _status(404, "workload_not_found"),
        platform.UnknownTenant: _status(404, "tenant_not_found"),
        platform.PoolExists: _status(409, "pool_exists"),
        platform.TenantBusy: _status(409, "tenant_busy"),
        platform.InvalidPool: _status(400, "invalid_pool"),
        ContainerRuntimeError: _container_failed,
        pool.PoolExhausted: _pool_exhausted,
        pool.TenantNotClaimed: _status(409, "tenant_not_claimed"),
        pool.TenantAlreadyClaimed: _status(409, "tenant_already_claimed"),
        pool.PoolClosed: _status(409, "pool_closed"),
        sync.SyncFailed: _sync_failed,
        sync.SyncNotConfigured: _status(409, "sync_not_configured"),
        sync.InvalidSyncRequest: _status(400, "invalid_sync_request"),
        sync.SyncClosed: _status(503, "shutting_down"),
        Exception: _unexpected,
    }
    return {cls: _async(h) for cls, h in table.items()}
