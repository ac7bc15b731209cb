"""One contract test class run against every container runtime: process and podman (runc)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.api.runtimes import (
    ContainerRuntime,
    ContainerRuntimeError,
    PodmanRuntime,
    ProcessRuntime,
    UnknownRuntime,
    make_runtime,
)
from services.api.workloads import DEFAULT_IMAGE, Workload, load_workloads
from tests.support.recording import process_alive
from tests.support.wait import until, until_async

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGE = REPO / "scripts" / "build-busybox-image.sh"

pytestmark = pytest.mark.anyio


def _sh(script: str) -> tuple[str, ...]:
    return ("sh", "-c", script)


#: Writes a marker (with the env it sees) into its data dir, then runs until stopped.
STARTING = _sh(
    'echo "$GREETING" > "$BOILERHOUSE_DATA_DIR/started"; ulimit -n > "$BOILERHOUSE_DATA_DIR/nofile"; '
    "exec sleep 1000"
)


@pytest.fixture(scope="session")
def busybox_image() -> str:
    """The local busybox image, built (once, idempotently) by the project's script."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run ./scripts/install-system-deps.sh")
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: run ./scripts/install-system-deps.sh")
    result = subprocess.run([str(BUILD_IMAGE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{BUILD_IMAGE} failed:\n{result.stdout}\n{result.stderr}"
    return DEFAULT_IMAGE


class RuntimeContract:
    """What every ContainerRuntime must do; subclasses provide the runtime and runtime-specific probes."""

    @pytest.fixture
    async def runtime(self, tmp_path: Path) -> AsyncIterator[ContainerRuntime]:
        raise NotImplementedError

    def workload(self, **kw: object) -> Workload:
        return Workload(id="contract", **kw)  # type: ignore[arg-type]

    def exists(self, runtime: ContainerRuntime, container_id: str) -> bool:
        """Whether the runtime's underlying process/container still exists (checked outside the runtime)."""
        raise NotImplementedError

    @staticmethod
    def cid() -> str:
        return f"t-{secrets.token_hex(4)}"

    async def test_create_runs_the_command_with_its_data_dir_and_env(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        data = tmp_path / "c1"
        cid = self.cid()
        await runtime.create(cid, self.workload(command=STARTING, env={"GREETING": "hello"}), data)
        await until(lambda: _nonempty(data / "nofile"), "container start marker")
        assert (data / "started").read_text().strip() == "hello"
        assert int((data / "nofile").read_text().strip()) > 0
        assert await runtime.healthy(cid) is True
        assert self.exists(runtime, cid)

    async def test_server_environment_does_not_leak_into_containers(
        self, runtime: ContainerRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("BOILERHOUSE_TEST_SECRET", "do-not-leak")
        data = tmp_path / "pool:with:colons" / "c"  # pool ids may hold ':'
        cid = self.cid()
        script = (
            'cd "$BOILERHOUSE_DATA_DIR"; '
            'echo "${BOILERHOUSE_TEST_SECRET:-none} $BOILERHOUSE_WORKLOAD_ID" > env.tmp; '
            "mv env.tmp env; exec sleep 1000"
        )
        await runtime.create(cid, self.workload(command=_sh(script)), data)
        await until((data / "env").exists, "env marker")
        assert (data / "env").read_text().split() == ["none", "contract"]

    async def test_shipped_workloads_run(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        shipped = load_workloads()
        assert shipped
        for workload in shipped.values():
            cid = self.cid()
            await runtime.create(cid, workload, tmp_path / cid)
            assert await runtime.healthy(cid), f"shipped workload {workload.id} is not healthy"
            await runtime.destroy(cid)

    async def test_destroy_stops_the_container_and_is_idempotent(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        cid = self.cid()
        await runtime.create(cid, self.workload(command=("sleep", "1000")), tmp_path / "c")
        assert self.exists(runtime, cid)
        await runtime.destroy(cid)
        assert not self.exists(runtime, cid)
        assert await runtime.healthy(cid) is False
        await runtime.destroy(cid)  # no-op
        await runtime.destroy("never-created")

    async def test_wipe_clears_the_data_dir_while_the_container_keeps_running(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        data = tmp_path / "c"
        cid = self.cid()
        # The health command writes through the container's own view of its data dir.
        w = self.workload(
            command=("sleep", "1000"), health_command=_sh('touch "$BOILERHOUSE_DATA_DIR/probe"')
        )
        await runtime.create(cid, w, data)
        (data / "tenant.txt").write_text("secret")
        (data / "nested" / "deeper").mkdir(parents=True)
        (data / "nested" / "deeper" / "f").write_text("x")
        (data / ".hidden").write_text("h")
        await runtime.wipe(cid)
        assert data.is_dir() and list(data.iterdir()) == []
        assert await runtime.healthy(cid) is True
        assert (data / "probe").exists(), "the container no longer sees its data dir after the wipe"

    async def test_health_command_decides_health(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        data = tmp_path / "c"
        cid = self.cid()
        w = self.workload(command=("sleep", "1000"), health_command=_sh('test -f "$BOILERHOUSE_DATA_DIR/ok"'))
        await runtime.create(cid, w, data)
        assert await runtime.healthy(cid) is False
        (data / "ok").write_text("")
        assert await runtime.healthy(cid) is True
        await runtime.wipe(cid)
        assert await runtime.healthy(cid) is False

    async def test_exited_container_is_unhealthy(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        cid = self.cid()
        await runtime.create(cid, self.workload(command=_sh("exit 3")), tmp_path / "c")

        async def down() -> bool:
            return not await runtime.healthy(cid)

        await until_async(down, "exited container reported unhealthy")
        await runtime.destroy(cid)
        assert not self.exists(runtime, cid)

    async def test_unknown_container(self, runtime: ContainerRuntime) -> None:
        assert await runtime.healthy("nope") is False
        with pytest.raises(ContainerRuntimeError) as info:
            await runtime.wipe("nope")
        assert info.value.container_id == "nope" and info.value.operation == "wipe"
        assert "nope" in str(info.value) and "wipe" in str(info.value)

    async def test_create_failure_raises_with_data(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        cid = self.cid()
        with pytest.raises(ContainerRuntimeError) as info:
            await runtime.create(cid, self.workload(command=("/no/such/binary",)), tmp_path / "c")
        err = info.value
        assert (err.container_id, err.operation) == (cid, "create")
        assert err.detail and cid in str(err)
        assert await runtime.healthy(cid) is False
        assert not self.exists(runtime, cid)

    async def test_duplicate_id_is_refused(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        cid = self.cid()
        await runtime.create(cid, self.workload(command=("sleep", "1000")), tmp_path / "a")
        with pytest.raises(ContainerRuntimeError, match="already exists"):
            await runtime.create(cid, self.workload(command=("sleep", "1000")), tmp_path / "b")
        assert await runtime.healthy(cid) is True

    async def test_concurrent_creates_and_close(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        ids = [self.cid() for _ in range(3)]
        w = self.workload(command=("sleep", "1000"))
        await asyncio.gather(*(runtime.create(c, w, tmp_path / c) for c in ids))
        assert all(await asyncio.gather(*(runtime.healthy(c) for c in ids)))
        assert all(self.exists(runtime, c) for c in ids)
        await runtime.close()
        assert not any(self.exists(runtime, c) for c in ids)
        assert not any(await asyncio.gather(*(runtime.healthy(c) for c in ids)))


class TestProcessRuntime(RuntimeContract):
    @pytest.fixture
    async def runtime(self, tmp_path: Path) -> AsyncIterator[ContainerRuntime]:
        rt = ProcessRuntime(log_dir=tmp_path / "logs", stop_timeout_s=5.0)
        self._pids: dict[str, int] = {}
        yield rt
        await rt.close()

    def exists(self, runtime: ContainerRuntime, container_id: str) -> bool:
        assert isinstance(runtime, ProcessRuntime)
        pid = runtime.pid(container_id)
        if pid is not None:
            self._pids[container_id] = pid
        pid = self._pids.get(container_id)
        if pid is None:
            return False
        return process_alive(pid)

    async def test_destroy_stops_the_whole_process_group(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        data = tmp_path / "c"
        cid = self.cid()
        await runtime.create(cid, self.workload(command=_sh("sleep 1000 & echo $! > child.pid; wait")), data)
        await until(
            lambda: (data / "child.pid").exists() and (data / "child.pid").read_text().strip() != "",
            "grandchild pid file",
        )
        grandchild = int((data / "child.pid").read_text())
        assert process_alive(grandchild)
        await runtime.destroy(cid)
        await until(lambda: not process_alive(grandchild), "grandchild stopped")

    async def test_logs_go_to_the_log_dir(self, runtime: ContainerRuntime, tmp_path: Path) -> None:
        cid = self.cid()
        await runtime.create(
            cid, self.workload(command=_sh("echo to-the-log; exec sleep 1000")), tmp_path / "c"
        )
        log = tmp_path / "logs" / f"{cid}.log"
        await until(lambda: log.exists() and "to-the-log" in log.read_text(), "log line")


class TestPodmanRuntime(RuntimeContract):
    @pytest.fixture
    async def runtime(self, tmp_path: Path, busybox_image: str) -> AsyncIterator[ContainerRuntime]:
        rt = PodmanRuntime(name_prefix=f"bhtest-{secrets.token_hex(4)}")
        self._ids: dict[str, str] = {}
        yield rt
        await rt.close()

    def workload(self, **kw: object) -> Workload:
        return Workload(id="contract", image=DEFAULT_IMAGE, **kw)  # type: ignore[arg-type]

    def exists(self, runtime: ContainerRuntime, container_id: str) -> bool:
        assert isinstance(runtime, PodmanRuntime)
        podman_id = runtime.podman_id(container_id)
        if podman_id is not None:
            self._ids[container_id] = podman_id
        podman_id = self._ids.get(container_id)
        if podman_id is None:  # never created: look the name up instead
            podman_id = runtime.container_name(container_id)
        return subprocess.run(["podman", "container", "exists", podman_id], timeout=30).returncode == 0

    async def test_runs_under_runc_with_the_explicit_ulimits(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        assert isinstance(runtime, PodmanRuntime)
        data = tmp_path / "c"
        cid = self.cid()
        await runtime.create(cid, self.workload(command=STARTING, env={"GREETING": "hi"}), data)
        podman_id = runtime.podman_id(cid)
        assert podman_id
        fmt = "{{.OCIRuntime}} {{.Name}} {{.Config.WorkingDir}}"
        out = subprocess.run(
            ["podman", "inspect", "--format", fmt, podman_id], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.split() == ["runc", runtime.container_name(cid), "/data"]
        await until(lambda: _nonempty(data / "nofile"), "start marker")
        assert (data / "nofile").read_text().strip() == "1024"

    async def test_names_are_unique_per_runtime_instance(self, runtime: ContainerRuntime) -> None:
        assert isinstance(runtime, PodmanRuntime)
        other = PodmanRuntime()
        assert runtime.container_name("p-1") != other.container_name("p-1")
        assert PodmanRuntime(name_prefix="x").container_name("pool:a/b") == "x-pool_a_b"

    async def test_podman_timeout_leaves_no_container(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        assert isinstance(runtime, PodmanRuntime)
        impatient = PodmanRuntime(name_prefix=runtime.name_prefix, command_timeout_s=0.05)
        cid = self.cid()
        with pytest.raises(ContainerRuntimeError, match=r"did not finish within 0\.05s") as info:
            await impatient.create(cid, self.workload(command=("sleep", "1000")), tmp_path / "c")
        assert info.value.operation == "create"
        assert not self.exists(impatient, cid)
        await runtime.create(cid, self.workload(command=("sleep", "1000")), tmp_path / "c")  # name is free
        assert await runtime.healthy(cid)

    async def test_missing_image_fails_fast_with_a_hint(
        self, runtime: ContainerRuntime, tmp_path: Path
    ) -> None:
        cid = self.cid()
        start = time.monotonic()
        with pytest.raises(ContainerRuntimeError, match=r"build-busybox-image\.sh"):
            await runtime.create(
                cid, Workload(id="w", image="localhost/no-such-image:latest"), tmp_path / "c"
            )
        assert time.monotonic() - start < 10  # --pull never: no registry round trips
        assert not self.exists(runtime, cid)


def _nonempty(path: Path) -> bool:
    return path.exists() and path.read_text().strip() != ""


def test_make_runtime(tmp_path: Path) -> None:
    process = make_runtime("process", tmp_path)
    assert isinstance(process, ProcessRuntime) and process.name == "process"
    assert process.log_dir == tmp_path / "_logs"
    podman = make_runtime("podman", tmp_path)
    assert isinstance(podman, PodmanRuntime) and podman.name == "podman"
    with pytest.raises(
        UnknownRuntime, match="unknown container runtime 'docker'; choose one of process, podman"
    ):
        make_runtime("docker", tmp_path)


def test_build_script_is_idempotent(busybox_image: str) -> None:
    result = subprocess.run([str(BUILD_IMAGE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "already present" in result.stdout
    assert subprocess.run(["podman", "image", "exists", busybox_image], timeout=30).returncode == 0


PARENT = """
import asyncio, os, signal, sys
from pathlib import Path
from services.api.runtimes import ProcessRuntime
from services.api.workloads import Workload

async def main():
    rt = ProcessRuntime()
    for i in range(int(sys.argv[2])):
        await rt.create(f"orphan-{i}", Workload(id="w", command=("sleep", "1000")), Path(sys.argv[1]) / str(i))
        print(rt.pid(f"orphan-{i}"), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the moment create returns: no time to set anything up later

asyncio.run(main())
"""


async def test_process_containers_die_with_a_killed_server(tmp_path: Path) -> None:
    """A server SIGKILLed before it could destroy its containers leaves no process behind.

    The server kills itself right after its last ``create`` returns, so a container that arranged
    its parent-death signal only after exec (as ``setpriv --pdeathsig`` does) would be left running.
    """
    count = 20
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "data"), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        pids = [int(line) for line in parent.stdout]
    finally:
        parent.kill()
        parent.wait(10)
        parent.stdout.close()  # type: ignore[union-attr]
    assert parent.returncode == -signal.SIGKILL and len(pids) == count
    try:
        await until(
            lambda: not any(process_alive(pid) for pid in pids), "every container gone with its server"
        )
    finally:
        for pid in pids:  # never leave a sleeper behind, even when the assertion fails
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"sleep\x001000\x00"):
                    os.kill(pid, signal.SIGKILL)
