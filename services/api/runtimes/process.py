"""The ``process`` runtime (embedded default): each container is a local subprocess with its own data dir."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.api.workloads import Workload
from services.children import die_with_parent

from .base import ContainerRuntime, ContainerRuntimeError, clear_directory

logger = logging.getLogger(__name__)

#: The only variables a container inherits from the server (its secrets, e.g. the Redis URL, stay out).
INHERITED_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"})


@dataclass
class _Child:
    popen: subprocess.Popen[bytes]
    workload: Workload
    data_dir: Path
    env: dict[str, str]


class ProcessRuntime(ContainerRuntime):
    """Containers as subprocesses, each in its own session (process group), tracked and stopped by pid.

    Parameters:
        log_dir: where each container's stdout/stderr goes (``{container_id}.log``); discarded if None.
        stop_timeout_s: how long ``destroy`` waits after SIGTERM before SIGKILL.
        health_timeout_s: how long a health command may run before it counts as failed.
    """

    name = "process"

    def __init__(
        self, log_dir: Path | None = None, *, stop_timeout_s: float = 5.0, health_timeout_s: float = 10.0
    ) -> None:
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.health_timeout_s = health_timeout_s
        self._children: dict[str, _Child] = {}

    def pid(self, container_id: str) -> int | None:
        """The pid of a container's main process, or None if the runtime does not track it."""
        child = self._children.get(container_id)
        return child.popen.pid if child else None

    def containers(self) -> list[str]:
        return list(self._children)

    async def create(self, container_id: str, workload: Workload, data_dir: Path) -> None:
        if container_id in self._children:
            raise ContainerRuntimeError(container_id, "create", "a container with this id already exists")
        env = {
            **{k: v for k, v in os.environ.items() if k in INHERITED_ENV},
            **workload.env,
            "BOILERHOUSE_DATA_DIR": str(data_dir),
            "BOILERHOUSE_CONTAINER_ID": container_id,
            "BOILERHOUSE_WORKLOAD_ID": workload.id,
        }
        try:
            log = await asyncio.to_thread(self._prepare, container_id, data_dir)
            if container_id in self._children:  # created concurrently while the directories were made
                raise ContainerRuntimeError(container_id, "create", "a container with this id already exists")
            with log if log is not None else contextlib.nullcontext():
                popen = self._spawn(workload, data_dir, env, log if log is not None else subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ContainerRuntimeError(
                container_id, "create", f"cannot start {list(workload.command)}: {exc}"
            ) from exc
        self._children[container_id] = _Child(popen, workload, data_dir, env)
        logger.debug("container %s started as pid %d", container_id, popen.pid)

    def _prepare(self, container_id: str, data_dir: Path) -> IO[bytes] | None:
        """Make the data directory and open the container's log file (None when logs are discarded)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"{container_id}.log", "ab")

    @staticmethod
    def _spawn(
        workload: Workload, data_dir: Path, env: dict[str, str], out: int | IO[bytes]
    ) -> subprocess.Popen[bytes]:
        # Spawned from the event loop's thread, which lives as long as the server: the signal
        # fires when the server process dies (PR_SET_PDEATHSIG follows the creating thread).
        return subprocess.Popen(  # noqa: S603 -- the operator's workload definition, never request input
            list(workload.command),
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),  # noqa: PLW1509 -- thread-safe, see its docstring
        )

    async def destroy(self, container_id: str) -> None:
        child = self._children.pop(container_id, None)
        if child is None:
            return
        popen = child.popen
        if popen.poll() is None:
            _signal_group(popen.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(popen.wait, self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("container %s (pid %d) ignored SIGTERM; killing", container_id, popen.pid)
                _signal_group(popen.pid, signal.SIGKILL)
                await asyncio.to_thread(popen.wait)
        # The main process is gone; anything left in its session is stopped too.
        _signal_group(popen.pid, signal.SIGKILL)

    async def wipe(self, container_id: str) -> None:
        child = self._children.get(container_id)
        if child is None:
            raise ContainerRuntimeError(container_id, "wipe", "no such container")
        try:
            await asyncio.to_thread(clear_directory, child.data_dir)
        except OSError as exc:
            raise ContainerRuntimeError(
                container_id, "wipe", f"cannot clear {child.data_dir}: {exc}"
            ) from exc

    async def healthy(self, container_id: str) -> bool:
        child = self._children.get(container_id)
        if child is None or child.popen.poll() is not None:
            return False
        if not child.workload.health_command:
            return True
        try:
            result = await asyncio.to_thread(
                subprocess.run,
                list(child.workload.health_command),
                cwd=child.data_dir,
                env=child.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.health_timeout_s,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.info("health command of %s failed: %s", container_id, exc)
            return False
        return result.returncode == 0 and child.popen.poll() is None

    async def close(self) -> None:
        for container_id in list(self._children):
            await self.destroy(container_id)

    def __repr__(self) -> str:
        return f"ProcessRuntime(containers={len(self._children)})"


def _signal_group(pgid: int, sig: int) -> None:
    """Signal the session a container runs in; its leader's pid is the group id (we started it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
