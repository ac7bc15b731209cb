"""The ``podman`` runtime: each container is a real OCI container (podman + runc), data dir bind-mounted."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.api.workloads import Workload

from .base import ContainerRuntime, ContainerRuntimeError, clear_directory

logger = logging.getLogger(__name__)

#: Where the data directory is mounted inside the container (and the container's working directory).
CONTAINER_DATA_DIR = "/data"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class _Box:
    podman_id: str
    name: str
    workload: Workload
    data_dir: Path


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class PodmanRuntime(ContainerRuntime):
    """Containers run by ``podman --runtime runc``; destroyed by the id podman returned.

    Parameters:
        podman: the podman binary.
        oci_runtime: passed as ``--runtime`` (runc works where crun does not).
        ulimits: ``--ulimit`` values; explicit ones are needed where podman's defaults exceed the host's.
        network: ``--network`` mode; ``none`` needs no network set-up and starts fastest.
        name_prefix: container names are ``{name_prefix}-{container_id}``; the default holds a random
            nonce so names are unique per runtime instance (and per test run).
        global_args: extra podman options before the subcommand (``--root``, ``--cgroup-manager`` ...).
        command_timeout_s: upper bound for one podman command.
    """

    name = "podman"

    def __init__(
        self,
        *,
        podman: str = "podman",
        oci_runtime: str = "runc",
        ulimits: tuple[str, ...] = ("nofile=1024:1024", "nproc=1024:1024"),
        network: str = "none",
        name_prefix: str | None = None,
        global_args: tuple[str, ...] = (),
        command_timeout_s: float = 60.0,
        health_timeout_s: float = 10.0,
    ) -> None:
        self.podman = podman
        self.oci_runtime = oci_runtime
        self.ulimits = ulimits
        self.network = network
        self.name_prefix = name_prefix or f"bh-{secrets.token_hex(3)}"
        self.global_args = global_args
        self.command_timeout_s = command_timeout_s
        self.health_timeout_s = health_timeout_s
        self._boxes: dict[str, _Box] = {}

    def podman_id(self, container_id: str) -> str | None:
        """The id podman gave a container, or None if this runtime does not track it."""
        box = self._boxes.get(container_id)
        return box.podman_id if box else None

    def container_name(self, container_id: str) -> str:
        return _NAME_UNSAFE.sub("_", f"{self.name_prefix}-{container_id}")[:250]

    def containers(self) -> list[str]:
        return list(self._boxes)

    async def run(self, *args: str, timeout_s: float | None = None) -> CommandResult:
        """Run one podman command and collect its output (never raises for a non-zero exit)."""
        argv = (self.podman, "--runtime", self.oci_runtime, *self.global_args, *args)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.podman} is not installed (apt-get install podman runc)") from exc
        limit = timeout_s or self.command_timeout_s
        try:
            out, err = await asyncio.wait_for(proc.communicate(), limit)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if proc.returncode is None:
                proc.kill()  # our own child, by its pid
                await proc.wait()
            if isinstance(exc, TimeoutError):
                raise TimeoutError(f"podman {' '.join(args[:2])} did not finish within {limit:g}s") from None
            raise
        return CommandResult(
            argv, proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )

    async def create(self, container_id: str, workload: Workload, data_dir: Path) -> None:
        if container_id in self._boxes:
            raise ContainerRuntimeError(container_id, "create", "a container with this id already exists")
        name = self.container_name(container_id)
        try:
            source = await asyncio.to_thread(_make_dir, data_dir)
        except OSError as exc:
            raise ContainerRuntimeError(container_id, "create", str(exc)) from exc
        args = ["run", "-d", "--pull", "never", "--name", name, "--network", self.network]
        for ulimit in self.ulimits:
            args += ["--ulimit", ulimit]
        # --mount, not -v: pool ids (and so data paths) may contain ':'.
        args += [
            "--mount",
            f"type=bind,source={source},destination={CONTAINER_DATA_DIR}",
            "-w",
            CONTAINER_DATA_DIR,
            "--label",
            f"boilerhouse.container_id={container_id}",
            "--label",
            f"boilerhouse.workload_id={workload.id}",
            "-e",
            f"BOILERHOUSE_DATA_DIR={CONTAINER_DATA_DIR}",
            "-e",
            f"BOILERHOUSE_CONTAINER_ID={container_id}",
            "-e",
            f"BOILERHOUSE_WORKLOAD_ID={workload.id}",
        ]
        for key, value in workload.env.items():
            args += ["-e", f"{key}={value}"]
        args += [workload.image, *workload.command]
        try:
            result = await self.run(*args)
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):  # podman may have created it before we gave up
                await self._remove_quietly(name)
            raise ContainerRuntimeError(container_id, "create", str(exc) or type(exc).__name__) from exc
        podman_id = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        if result.returncode != 0 or not podman_id:
            if podman_id or "already in use" not in result.stderr:
                await self._remove_quietly(podman_id or name)
            hint = ""
            if "image not known" in result.stderr or "unable to find" in result.stderr.lower():
                hint = f" (build the image with scripts/build-busybox-image.sh: {workload.image})"
            raise ContainerRuntimeError(
                container_id,
                "create",
                f"podman run exited {result.returncode}: {result.stderr.strip()}{hint}",
            )
        self._boxes[container_id] = _Box(podman_id, name, workload, data_dir)
        logger.debug("container %s is podman %s (%s)", container_id, podman_id[:12], name)

    async def _remove_quietly(self, name_or_id: str) -> None:
        """Best-effort removal of a half-created container (its own, generous time limit)."""
        try:
            await self.run("rm", "-f", "-t", "0", name_or_id, timeout_s=max(30.0, self.command_timeout_s))
        except (OSError, TimeoutError) as exc:
            logger.warning("could not remove podman container %s: %s", name_or_id, exc)

    async def destroy(self, container_id: str) -> None:
        box = self._boxes.get(container_id)
        if box is None:
            return
        try:
            result = await self.run("rm", "-f", "-t", "0", box.podman_id)
        except (OSError, TimeoutError) as exc:
            raise ContainerRuntimeError(container_id, "destroy", str(exc) or type(exc).__name__) from exc
        if result.returncode != 0 and "no such container" not in result.stderr.lower():
            raise ContainerRuntimeError(
                container_id, "destroy", f"podman rm exited {result.returncode}: {result.stderr.strip()}"
            )
        del self._boxes[container_id]

    async def wipe(self, container_id: str) -> None:
        box = self._boxes.get(container_id)
        if box is None:
            raise ContainerRuntimeError(container_id, "wipe", "no such container")
        try:
            await asyncio.to_thread(clear_directory, box.data_dir)
        except OSError as exc:
            raise ContainerRuntimeError(container_id, "wipe", f"cannot clear {box.data_dir}: {exc}") from exc

    async def healthy(self, container_id: str) -> bool:
        box = self._boxes.get(container_id)
        if box is None:
            return False
        try:
            state = await self.run("inspect", "--format", "{{.State.Running}}", box.podman_id)
            if state.returncode != 0 or state.stdout.strip() != "true":
                return False
            if not box.workload.health_command:
                return True
            probe = await self.run(
                "exec", box.podman_id, *box.workload.health_command, timeout_s=self.health_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            logger.info("health check of %s failed: %s", container_id, exc)
            return False
        return probe.returncode == 0

    async def close(self) -> None:
        for container_id in list(self._boxes):
            await self.destroy(container_id)

    def __repr__(self) -> str:
        return f"PodmanRuntime(prefix={self.name_prefix!r}, containers={len(self._boxes)})"


def _make_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and return its absolute, resolved form (bind mounts need one)."""
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
