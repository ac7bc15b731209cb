"""The container manager: creates, destroys, wipes and health-checks containers; times and reports each."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.events.emit import Emit

from .clock import Clock, SystemClock
from .runtimes.base import ContainerRuntime, ContainerRuntimeError
from .workloads import Workload

logger = logging.getLogger(__name__)

PENDING = "pending"
AVAILABLE = "available"
RESERVED = "reserved"
BORROWED = "borrowed"


@dataclass(eq=False, slots=True)
class Container:
    """One container of a pool.

    ``state`` is ``pending`` (being created, wiped or destroyed), ``available``, ``reserved`` (released,
    held for ``tenant_id`` until ``reserved_until``, monotonic seconds) or ``borrowed`` (by ``tenant_id``).
    """

    id: str
    pool_id: str
    workload_id: str
    data_dir: Path
    runtime: str
    tenant_id: str | None = None
    state: str = PENDING
    created_at: float = 0.0
    reserved_until: float | None = None
    #: The last health check's verdict. A borrowed container that fails one stays with its tenant and
    #: is destroyed (and replaced) when released, instead of being wiped and reused.
    healthy: bool = True
    pid: int | None = field(default=None, repr=False)

    def info(self) -> dict[str, Any]:
        """A JSON-able view for the API."""
        return {
            "id": self.id,
            "pool_id": self.pool_id,
            "workload_id": self.workload_id,
            "state": self.state,
            "healthy": self.healthy,
            "tenant_id": self.tenant_id,
            "data_dir": str(self.data_dir),
            "runtime": self.runtime,
        }


class ContainerManager:
    """Creates and destroys containers through a runtime and reports each operation as an event.

    Parameters:
        runtime: the container runtime (process, podman ...); closed by :meth:`close`.
        emit: ``Publisher.emit`` or any ``emit(type, fields)``.
        data_root: containers' data directories are ``{data_root}/{pool_id}/{container_id}``.
        clock: measures operation durations (monotonic).
    """

    def __init__(
        self, runtime: ContainerRuntime, emit: Emit, data_root: Path, clock: Clock | None = None
    ) -> None:
        self.runtime = runtime
        self.emit = emit
        self.data_root = Path(data_root)
        self.clock = clock or SystemClock()
        self._containers: dict[str, Container] = {}

    def containers(self) -> list[Container]:
        """Every container this manager created and has not destroyed."""
        return list(self._containers.values())

    async def create(self, pool_id: str, workload: Workload) -> Container:
        """Create and start one container; emits ``container.created`` (success or failure)."""
        container_id = f"{pool_id}-{secrets.token_hex(4)}"
        data_dir = self.data_root / pool_id / container_id
        start = self.clock.monotonic()
        try:
            await self.runtime.create(container_id, workload, data_dir)
        except BaseException as exc:
            self._emit_op("container.created", pool_id, start, "failure", workload_id=workload.id)
            await asyncio.to_thread(shutil.rmtree, data_dir, True)
            if isinstance(exc, Exception) and not isinstance(exc, ContainerRuntimeError):
                raise ContainerRuntimeError(container_id, "create", f"{type(exc).__name__}: {exc}") from exc
            raise
        self._emit_op("container.created", pool_id, start, "success", workload_id=workload.id)
        container = Container(
            container_id, pool_id, workload.id, data_dir, self.runtime.name, created_at=self.clock.monotonic()
        )
        container.pid = self.runtime.pid(container_id)
        self._containers[container_id] = container
        logger.debug("created %s for pool %s", container_id, pool_id)
        return container

    async def destroy(self, container: Container) -> None:
        """Stop and remove a container and its data directory; emits ``container.destroyed``."""
        start = self.clock.monotonic()
        container.state = PENDING
        try:
            await self.runtime.destroy(container.id)
            await asyncio.to_thread(shutil.rmtree, container.data_dir, True)
        except BaseException as exc:
            self._emit_op("container.destroyed", container.pool_id, start, "failure")
            if isinstance(exc, Exception) and not isinstance(exc, ContainerRuntimeError):
                raise ContainerRuntimeError(container.id, "destroy", f"{type(exc).__name__}: {exc}") from exc
            raise
        finally:
            self._containers.pop(container.id, None)
        self._emit_op("container.destroyed", container.pool_id, start, "success")

    async def wipe(self, container: Container) -> None:
        """Clear a container's data directory (the container keeps running); emits ``container.wiped``."""
        start = self.clock.monotonic()
        try:
            await self.runtime.wipe(container.id)
        except BaseException as exc:
            self._emit_op("container.wiped", container.pool_id, start, "failure")
            if isinstance(exc, Exception) and not isinstance(exc, ContainerRuntimeError):
                raise ContainerRuntimeError(container.id, "wipe", f"{type(exc).__name__}: {exc}") from exc
            raise
        self._emit_op("container.wiped", container.pool_id, start, "success")

    async def health_check(self, container: Container) -> bool:
        """True if the container is healthy; emits ``container.health_check_failed`` otherwise."""
        try:
            ok = await self.runtime.healthy(container.id)
        except Exception as exc:  # noqa: BLE001 -- a check that raises, for any reason, is a failed check
            logger.info("health check of %s raised: %s", container.id, exc)
            ok = False
        if not ok:
            logger.info("container %s of pool %s failed its health check", container.id, container.pool_id)
            self.emit("container.health_check_failed", {"pool_id": container.pool_id})
        return ok

    async def close(self) -> None:
        """Destroy whatever the runtime still runs (containers of pools that were not closed)."""
        for container in list(self._containers.values()):
            try:
                await self.destroy(container)
            except ContainerRuntimeError as exc:
                logger.warning("%s", exc)
        await self.runtime.close()

    def _emit_op(self, type_: str, pool_id: str, start: float, status: str, **extra: str) -> None:
        duration = max(0.0, self.clock.monotonic() - start)
        self.emit(type_, {"pool_id": pool_id, **extra, "status": status, "duration_s": float(duration)})

    def __repr__(self) -> str:
        return f"ContainerManager(runtime={self.runtime.name}, containers={len(self._containers)})"
