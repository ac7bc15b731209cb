"""The API server's app factory: routes, error handlers, the request-events middleware and the lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services import __version__
from shared.events.publisher import Publisher
from shared.events.trace import traced

from .clock import Clock, SystemClock
from .containers import ContainerManager
from .demo import DemoDriver
from .errors import ApiError, exception_handlers
from .middleware import EventsMiddleware
from .platform import Boilerhouse, PoolSpec
from .route_table import HEALTH
from .routes import api_routes, pool_spec
from .runtimes import RUNTIMES, ContainerRuntime, UnknownRuntime, make_runtime
from .settings import ApiSettings
from .sync import SyncCoordinator
from .workloads import Workload, WorkloadError, load_workloads

logger = logging.getLogger(__name__)


def make_publisher(settings: ApiSettings, service: str = "api") -> Publisher:
    return Publisher(
        settings.redis,
        service,
        version=__version__,
        partitions=settings.partitions,
        prefix=settings.key_prefix,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        buffer_size=settings.buffer_size,
        spool_dir=settings.spool_dir,
        wait_replicas=settings.publish_wait_replicas,
        wait_timeout_ms=settings.publish_wait_timeout_ms,
    )


def load_pools_file(path: str) -> list[dict[str, Any]]:
    """Pool-creation bodies from a YAML file (a list of mappings, or ``{pools: [...]}``)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise WorkloadError(f"{path}: cannot read pools file: {exc}") from exc
    if isinstance(doc, dict) and "pools" in doc:
        doc = doc["pools"]
    if not isinstance(doc, list) or not all(isinstance(p, dict) for p in doc):
        raise WorkloadError(f"{path}: expected a list of pool mappings")
    return doc


DATA_DIR_VAR = "${BOILERHOUSE_DATA_DIR}"


def with_data_dir(workloads: dict[str, Workload], data_dir: str) -> dict[str, Workload]:
    """Workloads whose sync remote contains ``${BOILERHOUSE_DATA_DIR}``, with it replaced by ``data_dir``."""
    out = {}
    for wid, w in workloads.items():
        if w.sync is not None and DATA_DIR_VAR in w.sync.remote:
            out[wid] = replace(w, sync=replace(w.sync, remote=w.sync.remote.replace(DATA_DIR_VAR, data_dir)))
        else:
            out[wid] = w
    return out


def pool_specs(settings: ApiSettings, workloads: dict[str, Workload]) -> list[PoolSpec]:
    """The pools of ``settings.pools_file``, validated like request bodies (errors name the file)."""
    assert settings.pools_file
    specs = []
    for i, body in enumerate(load_pools_file(settings.pools_file)):
        try:
            spec = pool_spec(body, settings)
        except ApiError as exc:
            raise WorkloadError(f"{settings.pools_file}: pool #{i + 1}: {exc.detail}") from None
        if spec.workload_id not in workloads:
            raise WorkloadError(
                f"{settings.pools_file}: pool {spec.pool_id!r}: no workload {spec.workload_id!r}"
            )
        specs.append(spec)
    return specs


def create_app(
    settings: ApiSettings,
    publisher: Publisher | None = None,
    *,
    demo: bool = False,
    workloads: dict[str, Workload] | None = None,
    runtime: ContainerRuntime | None = None,
    clock: Clock | None = None,
) -> Starlette:
    """Build the API app.

    The platform (pools, containers, sync) is built and started in the ASGI lifespan and closed with
    it; so is the publisher (flushed). ``runtime`` overrides the container runtime named in settings;
    ``demo`` starts the traffic driver of :mod:`services.api.demo` once the app is up.
    """
    defs = with_data_dir(
        workloads if workloads is not None else load_workloads(settings.workloads_dir), settings.data_dir
    )
    pools = pool_specs(settings, defs) if settings.pools_file else []
    if runtime is None and settings.runtime not in RUNTIMES:
        raise UnknownRuntime(settings.runtime)
    pub = publisher or make_publisher(settings)  # last: it starts a flusher thread

    async def healthz(request: Request) -> Response:
        platform = getattr(request.app.state, "platform", None)
        return JSONResponse(
            {
                "status": "ok" if platform is not None else "starting",
                "pools": len(platform.pools_info()) if platform is not None else 0,
                "events_buffered": pub.buffered(),
                "bus_connected": pub.connected,
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        data_dir = Path(settings.data_dir)
        the_clock = clock or SystemClock()
        rt = runtime if runtime is not None else make_runtime(settings.runtime, data_dir)
        # Events emitted while a request is served carry its trace id (middleware.py sets it).
        emit = traced(pub.emit)
        manager = ContainerManager(rt, emit, data_dir / "containers", the_clock)
        syncer = SyncCoordinator(emit, rclone=settings.rclone, bisync_workdir=data_dir / "bisync")
        platform = Boilerhouse(defs, emit, manager, syncer, the_clock)
        driver: DemoDriver | None = None
        try:
            await platform.start()
            for spec in pools:
                await platform.create_pool(spec)
            app.state.platform = platform
            pub.add_snapshot(platform.snapshot)
            if demo:
                driver = DemoDriver(app, platform, settings)
                await driver.start()
            logger.info("api up: %d workloads, %d pools, runtime %s", len(defs), len(pools), settings.runtime)
            yield
        finally:
            if driver is not None:
                await driver.stop()
            await platform.close()
            app.state.platform = None
            await pub.aclose()

    app = Starlette(
        routes=[Route(HEALTH, healthz), *api_routes()],
        middleware=[Middleware(EventsMiddleware, emit=pub.emit)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    # No redirect to the slash-less path: Starlette builds its Location from the client's Host header.
    app.router.redirect_slashes = False
    app.state.publisher = pub
    app.state.settings = settings
    app.state.platform = None
    return app
