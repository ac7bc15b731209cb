"""The container runtime plug point: the base class every runtime derives from, and its error type."""

from __future__ import annotations

import logging
import shutil
from abc import ABC, abstractmethod
from pathlib import Path

from services.api.workloads import Workload

logger = logging.getLogger(__name__)


class ContainerRuntimeError(Exception):
    """A runtime operation failed.

    Parameters:
        container_id: the manager's container id.
        operation: ``create``, ``destroy``, ``wipe`` or ``healthy``.
        detail: what went wrong (command output, exit status, exception text).
    """

    def __init__(self, container_id: str, operation: str, detail: str) -> None:
        super().__init__(container_id, operation, detail)
        self.container_id = container_id
        self.operation = operation
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.operation} of container {self.container_id!r} failed: {self.detail}"


class ContainerRuntime(ABC):
    """Runs containers: one isolated process (tree) per container with its own data directory.

    ``create`` starts the container with ``data_dir`` as its data directory (``BOILERHOUSE_DATA_DIR``
    inside); ``destroy`` stops and removes it (unknown ids are a no-op); ``wipe`` clears the data
    directory while the container keeps running; ``healthy`` is False for unknown or stopped
    containers and when the workload's health command fails. ``close`` destroys every container the
    runtime still tracks. Failures raise :class:`ContainerRuntimeError`.

    Optional capabilities have a default here, so callers never probe for them: ``pid`` is None
    unless the runtime knows a host pid for the container.
    """

    #: The runtime's name as in settings (``process``, ``podman``); reported with each container.
    name: str

    @abstractmethod
    async def create(self, container_id: str, workload: Workload, data_dir: Path) -> None: ...

    @abstractmethod
    async def destroy(self, container_id: str) -> None: ...

    @abstractmethod
    async def wipe(self, container_id: str) -> None: ...

    @abstractmethod
    async def healthy(self, container_id: str) -> bool: ...

    @abstractmethod
    async def close(self) -> None: ...

    def pid(self, container_id: str) -> int | None:
        """The host pid of a container's main process, if this runtime knows one (None by default)."""
        return None


def clear_directory(path: Path) -> int:
    """Remove everything inside ``path`` (not ``path`` itself, so a process's cwd survives).

    Returns the number of entries removed. A missing directory is created empty.
    """
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        return 0
    removed = 0
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed += 1
    return removed
