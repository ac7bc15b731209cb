"""A pool of warm containers that tenants claim and release, with affinity, scaling and health checks."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from shared.events.emit import Emit
from shared.events.trace import untraced_context

from .clock import Clock, SystemClock
from .containers import AVAILABLE, BORROWED, PENDING, RESERVED, Container, ContainerManager
from .runtimes.base import ContainerRuntimeError
from .sync import TenantSync
from .workloads import SyncSpec, Workload

logger = logging.getLogger(__name__)


class PoolError(Exception):
    """Base of the pool's errors; each carries the pool id."""

    def __init__(self, pool_id: str, *args: object) -> None:
        super().__init__(pool_id, *args)
        self.pool_id = pool_id


class PoolExhausted(PoolError):
    """No container became free within the acquire timeout; ``retry_after_s`` is a hint for clients."""

    def __init__(self, pool_id: str, retry_after_s: float, waited_s: float = 0.0) -> None:
        super().__init__(pool_id, retry_after_s, waited_s)
        self.retry_after_s = retry_after_s
        self.waited_s = waited_s

    def __str__(self) -> str:
        return (
            f"pool {self.pool_id!r} is exhausted: no container became free within {self.waited_s:g}s; "
            f"retry after {self.retry_after_s:g}s"
        )


class TenantNotClaimed(PoolError):
    """Release of a tenant that holds no container in this pool."""

    def __init__(self, pool_id: str, tenant_id: str) -> None:
        super().__init__(pool_id, tenant_id)
        self.tenant_id = tenant_id

    def __str__(self) -> str:
        return f"tenant {self.tenant_id!r} holds no container in pool {self.pool_id!r}"


class TenantAlreadyClaimed(PoolError):
    """Acquire by a tenant that already holds (or is acquiring or releasing) a container of this pool."""

    def __init__(self, pool_id: str, tenant_id: str) -> None:
        super().__init__(pool_id, tenant_id)
        self.tenant_id = tenant_id

    def __str__(self) -> str:
        return f"tenant {self.tenant_id!r} already holds a container in pool {self.pool_id!r}"


class PoolClosed(PoolError):
    """The pool was closed (deleted) before or while the operation ran."""

    def __str__(self) -> str:
        return f"pool {self.pool_id!r} is closed"


def sync_direction(spec: SyncSpec, phase: str) -> str | None:
    """The direction to sync on ``acquire`` (data in) or ``release`` (data out), or None to skip.

    bisync is always ``bidirectional``; otherwise an ``upload``-only spec never downloads on acquire and
    a ``download``-only spec never uploads on release.
    """
    if spec.mode == "bisync":
        return "bidirectional"
    wanted = "download" if phase == "acquire" else "upload"
    return wanted if spec.direction in (wanted, "bidirectional") else None


class ContainerPool:
    """Warm containers of one workload, claimed by tenants.

    Containers are ``pending`` (being created, wiped or destroyed), ``available`` (idle; this includes
    affinity reservations, which a claim takes over when nothing else is free and the pool is at
    ``max_size``) or ``borrowed`` (held by a tenant, or being released).

    Parameters:
        pool_id, workload: what the pool is and runs.
        manager: creates/destroys/wipes containers (and emits their events).
        emit: ``Publisher.emit`` for pool and acquire/release events.
        min_size, max_size: bounds of the pool; the target size moves between them.
        affinity_timeout_s: how long a released container stays reserved for its tenant (0: not at all).
        acquire_timeout_s: how long an acquire waits for a container when the pool is exhausted.
        idle_timeout_s: without a claim for this long, the target size goes back to ``min_size``.
        health_interval_s: how often containers are health-checked (idle ones are replaced when they
            fail; a borrowed one is flagged and replaced when its tenant releases it).
        spare: idle containers to keep warm while there is demand (the scale-up low-water mark).
        tick_interval_s: how often the background maintenance runs :meth:`tick`.
        sync: the sync coordinator (used when the workload has a sync spec).
        clock: monotonic time and sleeping (a ``ManualClock`` in tests).
    """

    def __init__(
        self,
        pool_id: str,
        workload: Workload,
        manager: ContainerManager,
        emit: Emit,
        *,
        min_size: int = 1,
        max_size: int = 10,
        affinity_timeout_s: float = 300.0,
        acquire_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        health_interval_s: float = 10.0,
        spare: int = 1,
        tick_interval_s: float = 1.0,
        sync: TenantSync | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}")
        self.pool_id = pool_id
        self.workload = workload
        self.manager = manager
        self.emit = emit
        self.min_size = min_size
        self.max_size = max_size
        self.affinity_timeout_s = affinity_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.health_interval_s = health_interval_s
        self.spare = spare
        self.tick_interval_s = tick_interval_s
        self.sync = sync
        self.clock = clock or SystemClock()
        self.target_size = min_size

        # Every container is in exactly one of these (or counted in _creating while it is created).
        self._free: deque[Container] = deque()
        self._reserved: dict[str, Container] = {}  # tenant -> container, oldest release first
        self._borrowed: dict[str, Container] = {}  # tenant -> container (held, or being released)
        self._wiping: set[Container] = set()
        self._destroying: set[Container] = set()
        self._creating = 0

        self._claiming: set[str] = set()  # tenants whose acquire is in progress
        self._waiters: list[asyncio.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_lock = asyncio.Lock()
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = False
        now = self.clock.monotonic()
        self._last_demand = now
        self._next_health = now + health_interval_s

    # ---- views ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """The pool's gauges (the fields of ``pool.state``)."""
        available = len(self._free) + len(self._reserved)
        borrowed = len(self._borrowed)
        pending = self._creating + len(self._wiping) + len(self._destroying)
        return {
            "size": available + borrowed + pending,
            "available": available,
            "borrowed": borrowed,
            "pending": pending,
            "min_size": self.min_size,
            "max_size": self.max_size,
            "target_size": self.target_size,
            "affinity_reservations": len(self._reserved),
        }

    def emit_state(self) -> None:
        """Publish a ``pool.state`` snapshot (on every change, and by the publisher heartbeat)."""
        if self._closed:
            return
        self.emit("pool.state", {"pool_id": self.pool_id, "workload_id": self.workload.id, **self.stats()})

    def tenants(self) -> dict[str, Container]:
        """Tenants holding a container of this pool (reservations are not holdings)."""
        return dict(self._borrowed)

    def reservations(self) -> dict[str, Container]:
        """Tenants whose released container is still reserved for them."""
        return dict(self._reserved)

    def containers(self) -> list[Container]:
        """Every container of the pool that exists now (not those still being created)."""
        return [
            *self._free,
            *self._reserved.values(),
            *self._borrowed.values(),
            *self._wiping,
            *self._destroying,
        ]

    def _size(self) -> int:
        return (
            len(self._free)
            + len(self._reserved)
            + len(self._borrowed)
            + len(self._wiping)
            + len(self._destroying)
            + self._creating
        )

    def _live_size(self) -> int:
        """Containers that stay: those being destroyed are not counted."""
        return self._size() - len(self._destroying)

    def _in_demand(self) -> bool:
        return self.clock.monotonic() - self._last_demand < self.idle_timeout_s

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, maintenance: bool = True) -> None:
        """Fill the pool to ``min_size`` and (unless ``maintenance=False``) start the maintenance task.

        Raises the runtime's error if a container cannot be created (the pool should then be closed).
        """
        self._check_open()
        self.emit_state()
        errors = await self._reconcile()
        if errors:
            raise errors[0]
        if maintenance and self._maintenance is None:
            # Not part of the request that created the pool: no trace id (shared/events/trace.py).
            self._maintenance = asyncio.get_running_loop().create_task(
                self._run(), name=f"pool-{self.pool_id}-maintenance", context=untraced_context()
            )
        logger.info("pool %s started: %s", self.pool_id, self.stats())

    async def close(self) -> None:
        """Destroy every container and emit ``pool.removed``; waiting acquires fail with PoolClosed."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        async with self._tick_lock:  # let a running maintenance round finish its wipes and destroys
            pass
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        await self.settle()
        # Containers being released are destroyed by their release when it finishes.
        for tenant in list(self._borrowed):
            await self._stop_periodic(tenant)
        held = [c for c in self._borrowed.values() if c.state == BORROWED]
        doomed = [*self._free, *self._reserved.values(), *held]
        self._free.clear()
        self._reserved.clear()
        for tenant in [t for t, c in self._borrowed.items() if c.state == BORROWED]:
            del self._borrowed[tenant]
        await asyncio.gather(*(self._destroy(c, update=False) for c in self._mark_destroying(doomed)))
        self.emit("pool.removed", {"pool_id": self.pool_id, "workload_id": self.workload.id})
        logger.info("pool %s closed: %d containers destroyed", self.pool_id, len(doomed))

    async def settle(self) -> None:
        """Wait for the background creations and destructions started so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self) -> None:
        while not self._closed:
            await self.clock.sleep(self.tick_interval_s)
            try:
                await self.tick()
            except Exception:
                logger.exception("maintenance of pool %s failed; continuing", self.pool_id)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed(self.pool_id)

    # ---- acquire / release -----------------------------------------------------------------------

    async def acquire(self, tenant_id: str) -> Container:
        """Give ``tenant_id`` a container: its reserved one (affinity hit) or any other (miss).

        Emits ``container.acquired``. Raises PoolExhausted after waiting ``acquire_timeout_s``; a failed
        download or container creation is raised as is (the container goes back to the pool).
        """
        self._check_open()
        if tenant_id in self._borrowed or tenant_id in self._claiming:
            raise TenantAlreadyClaimed(self.pool_id, tenant_id)
        start = self.clock.monotonic()
        self._last_demand = start
        reserved = self._reserved.pop(tenant_id, None)
        if reserved is not None:
            self._lend(reserved, tenant_id)
            self._emit_acquired(start, "success", "hit")
            self._after_change()
            self._start_periodic(tenant_id, reserved)
            return reserved
        self._claiming.add(tenant_id)
        try:
            try:
                container = await self._take(start)
            except PoolExhausted:
                self._emit_acquired(start, "timeout", "miss")
                raise
            except Exception:
                self._emit_acquired(start, "failure", "miss")
                self._after_change()
                raise
            self._lend(container, tenant_id)
            self.emit_state()
            direction = sync_direction(self.workload.sync, "acquire") if self.workload.sync else None
            if direction is not None and self.sync is not None:
                try:
                    await self.sync.sync(self.workload.id, tenant_id, container.data_dir, direction)
                    self._check_open()
                except BaseException:
                    self._emit_acquired(start, "failure", "miss")
                    if self._borrowed.get(tenant_id) is container:  # else close() destroyed it
                        del self._borrowed[tenant_id]
                        self._wiping.add(container)
                        await self._recycle(container)
                    raise
        finally:
            self._claiming.discard(tenant_id)
        self._emit_acquired(start, "success", "miss")
        self._after_change()
        self._start_periodic(tenant_id, container)
        return container

    async def release(self, tenant_id: str) -> None:
        """Sync the tenant's data out (if the workload syncs), then reserve the container for it.

        A sync failure still releases (``container.released`` status ``failure``) and is not raised.
        """
        container = self._borrowed.get(tenant_id)
        if container is None or container.state != BORROWED:
            raise TenantNotClaimed(self.pool_id, tenant_id)
        start = self.clock.monotonic()
        container.state = PENDING  # being released: still counted as borrowed
        status = "success"
        await self._stop_periodic(tenant_id)
        direction = sync_direction(self.workload.sync, "release") if self.workload.sync else None
        if direction is not None and self.sync is not None:
            try:
                await self.sync.sync(self.workload.id, tenant_id, container.data_dir, direction)
            except Exception as exc:  # noqa: BLE001 -- a failed sync never fails the release (status failure)
                status = "failure"
                logger.warning("pool %s: sync on release failed, releasing anyway: %s", self.pool_id, exc)
        del self._borrowed[tenant_id]
        if self._closed or not container.healthy:
            if not container.healthy:
                logger.warning(
                    "pool %s: %s failed its health check while borrowed; replacing it",
                    self.pool_id,
                    container.id,
                )
            self.emit("container.released", self._timed(start, status))
            await self._destroy(next(iter(self._mark_destroying([container]))), update=not self._closed)
        elif self.affinity_timeout_s > 0:
            container.state = RESERVED
            container.reserved_until = self.clock.monotonic() + self.affinity_timeout_s
            self._reserved[tenant_id] = container
            self.emit("container.released", self._timed(start, status))
            self._after_change()
        else:
            self._wiping.add(container)
            await self._recycle(container)
            self.emit("container.released", self._timed(start, status))

    # The pool owns its tenants' periodic sync jobs: it starts one with every claim (a hit or a miss)
    # and stops it before every release and when it closes, so a job never outlives its holding.

    def _start_periodic(self, tenant_id: str, container: Container) -> None:
        """Start the tenant's periodic sync job if the workload syncs with a period."""
        spec = self.workload.sync
        if spec is None or spec.period_s <= 0 or self.sync is None:
            return
        try:
            self.sync.start_periodic(self.workload.id, tenant_id, container.data_dir)
        except Exception as exc:  # noqa: BLE001 -- the claim stands without its periodic job; logged
            logger.warning("pool %s: periodic sync not started: %s", self.pool_id, exc)

    async def _stop_periodic(self, tenant_id: str) -> None:
        spec = self.workload.sync
        if spec is None or spec.period_s <= 0 or self.sync is None:
            return
        try:
            await self.sync.stop_periodic(tenant_id)
        except Exception as exc:  # noqa: BLE001 -- a release or close must go on; logged
            logger.warning("pool %s: periodic sync not stopped: %s", self.pool_id, exc)

    async def _take(self, start: float) -> Container:
        """A free, wiped container for a new claim: free, newly created, or a taken-over reservation."""
        deadline = start + self.acquire_timeout_s
        while True:
            self._check_open()
            if self._free:
                return self._free.popleft()
            if self._size() < self.max_size:
                self.target_size = max(self.target_size, min(self.max_size, self._live_size() + 1))
                return await self._create_for_claim()
            if self._reserved:
                return await self._take_over_reservation()
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or not await self._wait(remaining):
                waited = self.clock.monotonic() - start
                raise PoolExhausted(self.pool_id, max(1.0, min(self.acquire_timeout_s, 30.0)), waited)

    async def _create_for_claim(self) -> Container:
        self._creating += 1
        self.emit_state()
        try:
            container = await self.manager.create(self.pool_id, self.workload)
        finally:
            self._creating -= 1
        if self._closed:
            await self._destroy(next(iter(self._mark_destroying([container]))), update=False)
            raise PoolClosed(self.pool_id)
        return container

    async def _take_over_reservation(self) -> Container:
        """Evict the oldest reservation early because a claim needs its container (the pool is full)."""
        tenant = next(iter(self._reserved))
        container = self._reserved.pop(tenant)
        self.emit("affinity.evicted", {"pool_id": self.pool_id})
        container.tenant_id = None
        container.state = PENDING
        self._wiping.add(container)
        self.emit_state()
        try:
            await self.manager.wipe(container)
        except Exception:
            self._wiping.discard(container)
            await self._destroy(next(iter(self._mark_destroying([container]))))
            raise
        self._wiping.discard(container)
        return container

    async def _wait(self, timeout_s: float) -> bool:
        """Wait until the pool changes (True) or ``timeout_s`` passes on the pool's clock (False)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        timer = asyncio.ensure_future(self.clock.sleep(timeout_s))
        try:
            await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if fut in self._waiters:
                self._waiters.remove(fut)
            await asyncio.gather(timer, return_exceptions=True)
        return fut.done()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _lend(self, container: Container, tenant_id: str) -> None:
        container.state = BORROWED
        container.tenant_id = tenant_id
        container.reserved_until = None
        self._borrowed[tenant_id] = container

    def _emit_acquired(self, start: float, status: str, affinity: str) -> None:
        self.emit("container.acquired", {**self._timed(start, status), "affinity": affinity})

    def _timed(self, start: float, status: str) -> dict[str, Any]:
        duration = max(0.0, self.clock.monotonic() - start)
        return {"pool_id": self.pool_id, "status": status, "duration_s": float(duration)}

    def _after_change(self) -> None:
        """Publish the new state, wake waiting claims and bring the pool to its target in the background."""
        self.emit_state()
        self._wake()
        self._scale_up()
        if self._needs_reconcile():
            self._background(self._reconcile())

    def _background(self, job: Any) -> None:
        # Work the pool does for itself after a change, not part of the request that made the change.
        task = asyncio.get_running_loop().create_task(job, context=untraced_context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- returning, destroying, creating ----------------------------------------------------------

    async def _recycle(self, container: Container) -> None:
        """Wipe a container (already in ``_wiping``) and make it free, or destroy it above target."""
        container.tenant_id = None
        container.reserved_until = None
        container.state = PENDING
        self.emit_state()
        try:
            await self.manager.wipe(container)
        except ContainerRuntimeError as exc:  # the manager raises nothing else
            logger.warning("pool %s: wipe failed, destroying the container: %s", self.pool_id, exc)
            self._wiping.discard(container)
            await self._destroy(next(iter(self._mark_destroying([container]))))
            return
        self._wiping.discard(container)
        if self._closed or self._live_size() + 1 > self.target_size:
            await self._destroy(next(iter(self._mark_destroying([container]))), update=not self._closed)
            return
        container.state = AVAILABLE
        self._free.append(container)
        self._after_change()

    def _mark_destroying(self, containers: list[Container]) -> list[Container]:
        """Book containers as being destroyed (synchronously, so concurrent decisions see it)."""
        for c in containers:
            c.state = PENDING
            c.tenant_id = None
            self._destroying.add(c)
        return containers

    async def _destroy(self, container: Container, *, update: bool = True) -> None:
        """Destroy a container booked with :meth:`_mark_destroying`."""
        if update:
            self.emit_state()
        try:
            await self.manager.destroy(container)
        except ContainerRuntimeError as exc:  # the manager raises nothing else
            logger.warning("pool %s: %s", self.pool_id, exc)
        finally:
            self._destroying.discard(container)
        if update and not self._closed:
            self._after_change()

    async def _create_one(self) -> None:
        """Create a container booked in ``_creating`` and make it free."""
        try:
            container = await self.manager.create(self.pool_id, self.workload)
        except Exception:
            self._creating -= 1
            self.emit_state()
            self._wake()  # a waiting claim may now try to create one itself
            raise
        self._creating -= 1
        if self._closed:
            await self._destroy(next(iter(self._mark_destroying([container]))), update=False)
            return
        container.state = AVAILABLE
        self._free.append(container)
        self.emit_state()
        self._wake()

    def _needs_reconcile(self) -> bool:
        live = self._live_size()
        return not self._closed and (
            live < self.target_size or (live > self.target_size and bool(self._free))
        )

    async def _reconcile(self) -> list[BaseException]:
        """Create containers up to the target and destroy free ones above it; returns creation errors.

        The bookkeeping happens before the first await, so concurrent reconciles never over-create.
        """
        if self._closed:
            return []
        jobs: list[Any] = []
        deficit = self.target_size - self._live_size()
        if deficit > 0:
            self._creating += deficit
            jobs += [self._create_one() for _ in range(deficit)]
        excess = [self._free.pop() for _ in range(min(len(self._free), max(0, -deficit)))]
        jobs += [self._destroy(c) for c in self._mark_destroying(excess)]
        if not jobs:
            return []
        self.emit_state()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for exc in errors:
            logger.warning("pool %s: could not create a container: %s", self.pool_id, exc)
        return errors

    def _scale_up(self) -> None:
        """Raise the target while there is demand and idle containers run low (up to ``max_size``)."""
        if not self._in_demand():
            return
        idle = len(self._free) + self._creating
        if idle < self.spare and self.target_size < self.max_size:
            new = min(self.max_size, max(self.target_size, self._live_size() + self.spare - idle))
            if new > self.target_size:
                logger.info("pool %s: scaling target up %d -> %d", self.pool_id, self.target_size, new)
                self.target_size = new

    # ---- maintenance ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One maintenance round: evict expired reservations, scale, health-check idle containers."""
        async with self._tick_lock:
            if self._closed:
                return
            now = self.clock.monotonic()
            expired = [t for t, c in self._reserved.items() if (c.reserved_until or 0.0) <= now]
            evictions = []
            for tenant in expired:
                container = self._reserved.pop(tenant)
                self.emit("affinity.evicted", {"pool_id": self.pool_id})
                self._wiping.add(container)
                evictions.append(self._recycle(container))
            if evictions:
                logger.info("pool %s: %d affinity reservations expired", self.pool_id, len(evictions))
                await asyncio.gather(*evictions)
            if not self._in_demand() and self.target_size > self.min_size:
                logger.info(
                    "pool %s: no claim for %.0fs, scaling target down %d -> %d",
                    self.pool_id,
                    now - self._last_demand,
                    self.target_size,
                    self.min_size,
                )
                self.target_size = self.min_size
                self.emit_state()
            else:
                self._scale_up()
            if now >= self._next_health:
                self._next_health = now + self.health_interval_s
                await self._health_checks()
            await self._reconcile()
            await self.settle()

    async def _health_checks(self) -> None:
        idle: list[tuple[str | None, Container]] = [(None, c) for c in self._free]
        idle += list(self._reserved.items())
        held = [(t, c) for t, c in self._borrowed.items() if c.state == BORROWED]
        if not idle and not held:
            return
        results = await asyncio.gather(*(self.manager.health_check(c) for _, c in idle + held))
        for (holder, container), ok in zip(held, results[len(idle) :], strict=True):
            # Not taken from its tenant: flagged, and replaced on release (see release()).
            if self._borrowed.get(holder) is container and container.state == BORROWED:
                if container.healthy and not ok:
                    logger.warning(
                        "pool %s: borrowed container %s failed its health check", self.pool_id, container.id
                    )
                container.healthy = ok
        failed: list[Container] = []
        for (tenant, container), ok in zip(idle, results[: len(idle)], strict=True):
            if ok:
                continue
            if tenant is None and container in self._free:
                self._free.remove(container)
            elif tenant is not None and self._reserved.get(tenant) is container:
                del self._reserved[tenant]
            else:
                continue  # claimed while being checked; it is checked again once idle
            failed.append(container)
        if failed:
            logger.warning("pool %s: replacing %d unhealthy containers", self.pool_id, len(failed))
            await asyncio.gather(*(self._destroy(c) for c in self._mark_destroying(failed)))

    def __repr__(self) -> str:
        return f"ContainerPool({self.pool_id!r}, workload={self.workload.id!r}, {self.stats()})"
