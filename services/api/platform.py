"""The Boilerhouse service layer: workloads, pools by id, which tenant holds which pool, sync, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from shared.events.emit import Emit
from shared.events.schema import ID_PATTERN

from .clock import Clock, SystemClock
from .containers import Container, ContainerManager
from .limits import POOL_FIELDS
from .pool import ContainerPool
from .sync import SyncCoordinator, SyncNotConfigured
from .workloads import Workload

logger = logging.getLogger(__name__)


class PlatformError(Exception):
    """A request the platform cannot serve; subclasses say why (mapped to HTTP in errors.py)."""


class UnknownPool(PlatformError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"no pool {pool_id!r}")
        self.pool_id = pool_id


class UnknownWorkload(PlatformError):
    def __init__(self, workload_id: str, known: list[str]) -> None:
        super().__init__(f"no workload {workload_id!r}; known: {known}")
        self.workload_id = workload_id


class UnknownTenant(PlatformError):
    def __init__(self) -> None:
        super().__init__("this tenant holds no container")


class PoolExists(PlatformError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"pool {pool_id!r} already exists")
        self.pool_id = pool_id


class TenantBusy(PlatformError):
    def __init__(self, pool_id: str) -> None:
        super().__init__(f"this tenant already holds a container in pool {pool_id!r}; release it first")
        self.pool_id = pool_id


class InvalidPool(PlatformError):
    """A pool specification that cannot be used (from a pools file or a caller that skipped validation)."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What a pool is made of; timings in seconds."""

    pool_id: str
    workload_id: str
    min_size: int = 1
    max_size: int = 4
    affinity_timeout_s: float = 60.0
    acquire_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    health_interval_s: float = 10.0

    def check(self) -> None:
        """Refuse a spec outside the ranges of :data:`limits.POOL_FIELDS` (what the API accepts)."""
        if not ID_PATTERN.match(self.pool_id):
            raise InvalidPool(f"pool_id {self.pool_id!r} must match {ID_PATTERN.pattern}")
        for name, limits in POOL_FIELDS.items():
            problem = limits.problem(getattr(self, name))
            if problem is not None:
                raise InvalidPool(f"{name} {problem}, got {getattr(self, name)!r}")
        if self.min_size > self.max_size:
            raise InvalidPool(f"need min_size <= max_size ({self.min_size}, {self.max_size})")


@dataclass(frozen=True, slots=True)
class Holding:
    """The container a tenant holds, and its pool."""

    pool: ContainerPool
    container: Container


class Boilerhouse:
    """Pools of warm containers that tenants claim and release, with their data synced by rclone.

    Parameters:
        workloads: the workload definitions by id.
        emit: ``Publisher.emit`` (events for pools, containers and sync go through it).
        manager: the container manager (owns the runtime).
        sync: the sync coordinator; every workload with a sync spec is registered with it.
        clock: monotonic clock for pool timing.
    """

    def __init__(
        self,
        workloads: dict[str, Workload],
        emit: Emit,
        manager: ContainerManager,
        sync: SyncCoordinator,
        clock: Clock | None = None,
    ) -> None:
        self.workloads = dict(workloads)
        self.emit = emit
        self.manager = manager
        self.syncer = sync
        self.clock = clock or SystemClock()
        self._pools: dict[str, ContainerPool] = {}
        self._specs: dict[str, PoolSpec] = {}
        self._claims: dict[str, str] = {}  # tenant -> pool id (also while the claim is in progress)
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        for w in self.workloads.values():
            if w.sync is not None:
                sync.register(w)

    def add_workload(self, workload: Workload) -> None:
        """Make one more workload available (the demo's own); an existing id is replaced."""
        self.workloads[workload.id] = workload
        if workload.sync is not None:
            self.syncer.register(workload)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Remember the event loop (snapshots are emitted on it); pools start when created."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Close every pool (destroying its containers and stopping its periodic syncs), then the
        sync coordinator and the runtime."""
        for pool_id in list(self._pools):
            try:
                await self.delete_pool(pool_id)
            except Exception:
                logger.exception("closing pool %s failed", pool_id)
        await self.syncer.close()
        await self.manager.close()
        logger.info("platform closed")

    def snapshot(self) -> None:
        """Publish every gauge snapshot; called on each publisher heartbeat, from its flusher thread.

        The work is handed to the event loop, so a snapshot never interleaves with a pool's own updates
        (a pool.state read before a deletion must not be published after its pool.removed).
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self.emit_snapshots)

    def emit_snapshots(self) -> None:
        for pool in list(self._pools.values()):
            pool.emit_state()
        self.syncer.emit_state()

    # ---- pools ----------------------------------------------------------------------------------

    def _pool(self, pool_id: str) -> ContainerPool:
        pool = self._pools.get(pool_id)
        if pool is None:
            raise UnknownPool(pool_id)
        return pool

    def _workload(self, workload_id: str) -> Workload:
        w = self.workloads.get(workload_id)
        if w is None:
            raise UnknownWorkload(workload_id, sorted(self.workloads))
        return w

    async def create_pool(self, spec: PoolSpec) -> dict[str, Any]:
        spec.check()
        workload = self._workload(spec.workload_id)
        async with self._lock:
            if spec.pool_id in self._pools:
                raise PoolExists(spec.pool_id)
            pool = ContainerPool(
                spec.pool_id,
                workload,
                self.manager,
                self.emit,
                min_size=spec.min_size,
                max_size=spec.max_size,
                affinity_timeout_s=spec.affinity_timeout_s,
                acquire_timeout_s=spec.acquire_timeout_s,
                idle_timeout_s=spec.idle_timeout_s,
                health_interval_s=spec.health_interval_s,
                sync=self.syncer if workload.sync is not None else None,
                clock=self.clock,
            )
            self._pools[spec.pool_id] = pool
            self._specs[spec.pool_id] = spec
        try:
            await pool.start()
        except BaseException:
            self._pools.pop(spec.pool_id, None)
            self._specs.pop(spec.pool_id, None)
            await pool.close()
            raise
        logger.info(
            "pool %s created (workload %s, %d..%d)",
            spec.pool_id,
            spec.workload_id,
            spec.min_size,
            spec.max_size,
        )
        return self.pool_info(spec.pool_id)

    async def delete_pool(self, pool_id: str) -> None:
        pool = self._pool(pool_id)
        async with self._lock:
            self._pools.pop(pool_id, None)
            self._specs.pop(pool_id, None)
            for tenant in [t for t, p in self._claims.items() if p == pool_id]:
                del self._claims[tenant]
        await pool.close()  # stops its tenants' periodic syncs
        logger.info("pool %s deleted", pool_id)

    def pool_info(self, pool_id: str) -> dict[str, Any]:
        pool = self._pool(pool_id)
        return {**asdict(self._specs[pool_id]), "stats": dict(pool.stats())}

    def pools_info(self) -> list[dict[str, Any]]:
        return [self.pool_info(p) for p in sorted(self._pools)]

    # ---- tenants --------------------------------------------------------------------------------

    async def claim(self, tenant: str, pool_id: str) -> dict[str, Any]:
        pool = self._pool(pool_id)
        held = self._claims.get(tenant)
        if held is not None and held != pool_id:
            raise TenantBusy(held)
        self._claims[tenant] = pool_id
        try:
            container = await pool.acquire(tenant)
        except BaseException:
            if held is None and self._claims.get(tenant) == pool_id:
                del self._claims[tenant]
            raise
        return {"tenant_id": tenant, "pool_id": pool_id, "container": container_info(container)}

    async def release(self, tenant: str) -> dict[str, Any]:
        pool_id = self._claims.get(tenant)
        if pool_id is None:
            raise UnknownTenant()
        pool = self._pool(pool_id)
        if tenant not in pool.tenants():
            raise UnknownTenant()
        try:
            await pool.release(tenant)
        finally:
            if tenant not in pool.tenants():
                self._claims.pop(tenant, None)
        return {"tenant_id": tenant, "pool_id": pool_id, "released": True}

    def _held(self, tenant: str) -> Holding:
        pool_id = self._claims.get(tenant)
        pool = self._pools.get(pool_id) if pool_id else None
        container = pool.tenants().get(tenant) if pool is not None else None
        if pool is None or container is None:
            raise UnknownTenant()
        return Holding(pool, container)

    async def sync(self, tenant: str, direction: str | None = None) -> dict[str, Any]:
        held = self._held(tenant)
        workload = held.pool.workload
        if workload.sync is None:
            raise SyncNotConfigured(workload.id)
        result = await self.syncer.sync(workload.id, tenant, held.container.data_dir, direction)
        return {
            "tenant_id": tenant,
            "pool_id": held.pool.pool_id,
            "workload_id": workload.id,
            "direction": direction or workload.sync.direction,
            "mode": workload.sync.mode,
            "bytes": result.bytes,
            "files": result.files,
            "duration_s": round(result.duration_s, 6),
            "resynced": result.resynced,
        }

    def tenant_info(self, tenant: str) -> dict[str, Any]:
        held = self._held(tenant)
        return {
            "tenant_id": tenant,
            "pool_id": held.pool.pool_id,
            "workload_id": held.pool.workload.id,
            "container": container_info(held.container),
        }

    # ---- listings -------------------------------------------------------------------------------

    def containers_info(self) -> list[dict[str, Any]]:
        return [
            {"pool_id": pool_id, **container_info(c)}
            for pool_id in sorted(self._pools)
            for c in self._pools[pool_id].containers()
        ]

    def workloads_info(self) -> list[dict[str, Any]]:
        return [workload_info(w) for _, w in sorted(self.workloads.items())]


def container_info(container: Container) -> dict[str, Any]:
    info = container.info()
    if container.pid is not None:
        info["pid"] = container.pid
    return info


def workload_info(w: Workload) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": w.id,
        "command": list(w.command),
        "image": w.image,
        "health_command": list(w.health_command) or None,
        "sync": None,
    }
    if w.sync is not None:
        info["sync"] = {
            "remote": w.sync.remote,
            "mode": w.sync.mode,
            "direction": w.sync.direction,
            "period_s": w.sync.period_s,
            "concurrency": w.sync.concurrency,
            "timeout_s": w.sync.timeout_s,
        }
    return info
