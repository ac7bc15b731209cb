"""The /api/v1 endpoints: validate every body and path parameter, call the platform, answer JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.events.schema import DIRECTIONS, ID_PATTERN

from .errors import BadRequest
from .platform import Boilerhouse, PoolSpec
from .settings import ApiSettings
from .sync import TENANT_PATTERN  # tenant ids are never labels, but they are one remote path segment

PREFIX = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
MAX_POOL_SIZE = 1000

_POOL_FIELDS = {
    "pool_id",
    "workload_id",
    "min_size",
    "max_size",
    "affinity_timeout_s",
    "acquire_timeout_s",
    "idle_timeout_s",
    "health_interval_s",
}


def _platform(request: Request) -> Boilerhouse:
    return request.app.state.platform  # type: ignore[no-any-return]


async def json_body(request: Request, *, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` unless one is required."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body is {len(raw)} bytes; at most {MAX_BODY_BYTES}", error="body_too_large")
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required", error="body_required")
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", error="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {type(body).__name__}", error="invalid_body")
    return body


def _reject_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; known: {sorted(known)}", error="unknown_field")


def _string(
    body: dict[str, Any], name: str, pattern: re.Pattern[str], *, required: bool = True
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"field {name!r} is required", error="missing_field")
        return None
    if not isinstance(value, str):
        raise BadRequest(
            f"field {name!r} must be a string, got {type(value).__name__}", error="invalid_field"
        )
    if not pattern.match(value):
        raise BadRequest(
            f"field {name!r}: {value[:80]!r} does not match {pattern.pattern}", error="invalid_field"
        )
    return value


def _int(body: dict[str, Any], name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(
            f"field {name!r} must be an integer, got {type(value).__name__}", error="invalid_field"
        )
    if not minimum <= value <= maximum:
        raise BadRequest(
            f"field {name!r} must be in {minimum}..{maximum}, got {value}", error="invalid_field"
        )
    return value


def _seconds(body: dict[str, Any], name: str, default: float, *, positive: bool = False) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"field {name!r} must be a number of seconds, got {value!r}", error="invalid_field")
    if value < 0 or (positive and value == 0):
        raise BadRequest(
            f"field {name!r} must be {'> 0' if positive else '>= 0'}, got {value}", error="invalid_field"
        )
    return float(value)


def path_id(request: Request, name: str, pattern: re.Pattern[str]) -> str:
    value = str(request.path_params[name])
    if not pattern.match(value):
        raise BadRequest(f"{name} {value[:80]!r} does not match {pattern.pattern}", error="invalid_" + name)
    return value


def pool_spec(body: dict[str, Any], defaults: ApiSettings) -> PoolSpec:
    """A pool-creation body validated into a :class:`PoolSpec`; omitted timings come from settings."""
    _reject_unknown(body, _POOL_FIELDS)
    d = defaults
    min_size = _int(body, "min_size", 1, 0, MAX_POOL_SIZE)
    max_size = _int(body, "max_size", max(min_size, 4), 1, MAX_POOL_SIZE)
    if max_size < min_size:
        raise BadRequest(f"max_size {max_size} is below min_size {min_size}", error="invalid_field")
    return PoolSpec(
        pool_id=_string(body, "pool_id", ID_PATTERN) or "",
        workload_id=_string(body, "workload_id", ID_PATTERN) or "",
        min_size=min_size,
        max_size=max_size,
        affinity_timeout_s=_seconds(body, "affinity_timeout_s", d.affinity_timeout_s),
        acquire_timeout_s=_seconds(body, "acquire_timeout_s", d.acquire_timeout_s),
        idle_timeout_s=_seconds(body, "idle_timeout_s", d.idle_timeout_s),
        health_interval_s=_seconds(body, "health_interval_s", d.health_interval_s, positive=True),
    )


# ---- endpoints ------------------------------------------------------------------------------------


async def create_pool(request: Request) -> Response:
    spec = pool_spec(await json_body(request, required=True), request.app.state.settings)
    return JSONResponse(await _platform(request).create_pool(spec), status_code=201)


async def list_pools(request: Request) -> Response:
    return JSONResponse({"pools": _platform(request).pools_info()})


async def get_pool(request: Request) -> Response:
    return JSONResponse(_platform(request).pool_info(path_id(request, "pool_id", ID_PATTERN)))


async def delete_pool(request: Request) -> Response:
    pool_id = path_id(request, "pool_id", ID_PATTERN)
    await _platform(request).delete_pool(pool_id)
    return JSONResponse({"deleted": pool_id})


async def claim(request: Request) -> Response:
    tenant = path_id(request, "tenant_id", TENANT_PATTERN)
    body = await json_body(request, required=True)
    _reject_unknown(body, {"pool_id"})
    pool_id = _string(body, "pool_id", ID_PATTERN) or ""
    return JSONResponse(await _platform(request).claim(tenant, pool_id))


async def release(request: Request) -> Response:
    tenant = path_id(request, "tenant_id", TENANT_PATTERN)
    _reject_unknown(await json_body(request, required=False), set())
    return JSONResponse(await _platform(request).release(tenant))


async def sync(request: Request) -> Response:
    tenant = path_id(request, "tenant_id", TENANT_PATTERN)
    body = await json_body(request, required=False)
    _reject_unknown(body, {"direction"})
    direction = body.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise BadRequest(f"direction {direction!r} is not one of {sorted(DIRECTIONS)}", error="invalid_field")
    return JSONResponse(await _platform(request).sync(tenant, direction))


async def get_tenant(request: Request) -> Response:
    return JSONResponse(_platform(request).tenant_info(path_id(request, "tenant_id", TENANT_PATTERN)))


async def list_containers(request: Request) -> Response:
    return JSONResponse({"containers": _platform(request).containers_info()})


async def list_workloads(request: Request) -> Response:
    return JSONResponse({"workloads": _platform(request).workloads_info()})


Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One endpoint per path, so a 405 lists every allowed method in its Allow header."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


def api_routes() -> list[Route]:
    table: dict[str, dict[str, Endpoint]] = {
        f"{PREFIX}/pools": {"GET": list_pools, "POST": create_pool},
        f"{PREFIX}/pools/{{pool_id}}": {"GET": get_pool, "DELETE": delete_pool},
        f"{PREFIX}/tenants/{{tenant_id}}/claim": {"POST": claim},
        f"{PREFIX}/tenants/{{tenant_id}}/release": {"POST": release},
        f"{PREFIX}/tenants/{{tenant_id}}/sync": {"POST": sync},
        f"{PREFIX}/tenants/{{tenant_id}}": {"GET": get_tenant},
        f"{PREFIX}/containers": {"GET": list_containers},
        f"{PREFIX}/workloads": {"GET": list_workloads},
    }
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in table.items()]
