"""The /api/v1 endpoints: validate every body and path parameter, call the platform, answer JSON."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.events.schema import DIRECTIONS, ID_PATTERN

from . import route_table as table
from .errors import ApiError, BadRequest
from .limits import POOL_FIELDS, Range
from .platform import Boilerhouse, PoolSpec
from .settings import ApiSettings
from .sync import TENANT_PATTERN  # tenant ids are never labels, but they are one remote path segment

PREFIX = table.PREFIX
MAX_BODY_BYTES = 64 * 1024
#: Request bodies are flat objects; deeper nesting is refused before anything looks at it.
MAX_JSON_DEPTH = 32
JSON_MEDIA_TYPE = "application/json"

_POOL_KEYS = {"pool_id", "workload_id", *POOL_FIELDS}


def _platform(request: Request) -> Boilerhouse:
    platform: Boilerhouse = request.app.state.platform
    return platform


def _show(value: object) -> str:
    """A short, safe rendering of a client's value for an error message (never a deep repr)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"


async def _read_body(request: Request) -> bytes:
    """The raw body, refused as soon as it passes ``MAX_BODY_BYTES`` (never buffered beyond that)."""
    too_large = BadRequest(f"body is over {MAX_BODY_BYTES} bytes", error="body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _check_media_type(request: Request) -> None:
    """A body must be declared ``application/json`` (UTF-8): any other type is a 415.

    Browsers send ``text/plain``, form and multipart bodies cross-origin without a CORS preflight; a
    JSON type requires one, so a web page cannot make a visitor's browser post to a loopback API.
    """
    declared = request.headers.get("content-type")
    media, _, params = (declared or "").partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media.strip().lower() != JSON_MEDIA_TYPE or charset not in ("", "utf-8", "utf8"):
        raise ApiError(
            f"a request body must have Content-Type: {JSON_MEDIA_TYPE} (UTF-8), got {_show(declared)}",
            error="unsupported_media_type",
            status=415,
        )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a repeated name: JSON leaves duplicates' meaning open (RFC 8259,
    4), and a proxy or validator that keeps the first could see another request than the API."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_JSON_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


async def json_body(request: Request, *, required: bool) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}`` unless one is required."""
    raw = await _read_body(request)
    if not raw.strip():
        if required:
            raise BadRequest("a JSON object body is required", error="body_required")
        return {}
    _check_media_type(request)
    try:
        body = json.loads(raw, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BadRequest(
            f"body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels", error="invalid_json"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, integers too long
        raise BadRequest(f"body is not valid JSON: {exc}", error="invalid_json") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(
            f"body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels", error="invalid_json"
        )
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object, got {_show(body)}", error="invalid_body")
    return body


def _reject_unknown(body: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        shown = ", ".join(_show(k) for k in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise BadRequest(f"unknown field(s) {shown}; known: {sorted(known)}", error="unknown_field")


def _string(
    body: dict[str, Any], name: str, pattern: re.Pattern[str], *, required: bool = True
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"field {name!r} is required", error="missing_field", field=name)
        return None
    if not isinstance(value, str):
        raise BadRequest(
            f"field {name!r} must be a string, got {_show(value)}", error="invalid_field", field=name
        )
    if not pattern.match(value):
        raise BadRequest(
            f"field {name!r}: {_show(value)} does not match {pattern.pattern}",
            error="invalid_field",
            field=name,
        )
    return value


def _number(body: dict[str, Any], name: str, default: float) -> float:
    """Field ``name`` (or ``default``), checked against its declared range in :data:`POOL_FIELDS`."""
    value = body.get(name, default)
    limits: Range = POOL_FIELDS[name]
    problem = limits.problem(value)
    if problem is not None:
        raise BadRequest(
            f"field {name!r} {problem}, got {_show(value)}",
            error="invalid_field",
            field=name,
            minimum=limits.minimum,
            maximum=limits.maximum,
        )
    return value  # problem() is None only for an int or a float


def path_id(request: Request, name: str, pattern: re.Pattern[str]) -> str:
    value = str(request.path_params[name])
    if not pattern.match(value):
        raise BadRequest(f"{name} {_show(value)} does not match {pattern.pattern}", error="invalid_" + name)
    return value


def pool_spec(body: dict[str, Any], defaults: ApiSettings) -> PoolSpec:
    """A pool-creation body validated into a :class:`PoolSpec`; omitted timings come from settings."""
    _reject_unknown(body, _POOL_KEYS)
    d = defaults
    min_size = int(_number(body, "min_size", 1))
    max_size = int(_number(body, "max_size", max(min_size, 4)))
    if max_size < min_size:
        raise BadRequest(
            f"max_size {max_size} is below min_size {min_size}", error="invalid_field", field="max_size"
        )
    return PoolSpec(
        pool_id=_string(body, "pool_id", ID_PATTERN) or "",
        workload_id=_string(body, "workload_id", ID_PATTERN) or "",
        min_size=min_size,
        max_size=max_size,
        affinity_timeout_s=float(_number(body, "affinity_timeout_s", d.affinity_timeout_s)),
        acquire_timeout_s=float(_number(body, "acquire_timeout_s", d.acquire_timeout_s)),
        idle_timeout_s=float(_number(body, "idle_timeout_s", d.idle_timeout_s)),
        health_interval_s=float(_number(body, "health_interval_s", d.health_interval_s)),
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
    if direction is not None and (not isinstance(direction, str) or direction not in DIRECTIONS):
        raise BadRequest(
            f"direction {_show(direction)} is not one of {sorted(DIRECTIONS)}",
            error="invalid_field",
            field="direction",
        )
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


#: The API's endpoints by route template (services/api/route_table.py) and method.
ROUTES: dict[str, dict[str, Endpoint]] = {
    table.POOLS: {"GET": list_pools, "POST": create_pool},
    table.POOL: {"GET": get_pool, "DELETE": delete_pool},
    table.CLAIM: {"POST": claim},
    table.RELEASE: {"POST": release},
    table.SYNC: {"POST": sync},
    table.TENANT: {"GET": get_tenant},
    table.CONTAINERS: {"GET": list_containers},
    table.WORKLOADS: {"GET": list_workloads},
}


def api_routes() -> list[Route]:
    return [Route(path, _by_method(handlers), methods=list(handlers)) for path, handlers in ROUTES.items()]
