"""ContainerManager on a real runtime: each operation is timed by the injected clock and emits its event."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.api.clock import ManualClock, SystemClock
from services.api.containers import Container, ContainerManager
from services.api.runtimes import ContainerRuntimeError, PodmanRuntime, ProcessRuntime
from services.api.workloads import DEFAULT_IMAGE, Workload
from tests.support.recording import Events, process_alive
from tests.support.wait import until

pytestmark = pytest.mark.anyio

SLEEPER = Workload(id="sleeper", command=("sleep", "1000"))


class SteppingClock(ManualClock):
    """Each reading moves time on by ``step`` seconds, so every measured duration is exactly ``step``."""

    def __init__(self, step: float) -> None:
        super().__init__(100.0)
        self.step = step

    def monotonic(self) -> float:
        now = super().monotonic()
        self.advance(self.step)
        return now


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def manager(tmp_path: Path, events: Events) -> AsyncIterator[ContainerManager]:
    m = ContainerManager(
        ProcessRuntime(log_dir=tmp_path / "logs"), events, tmp_path / "data", SteppingClock(0.25)
    )
    yield m
    await m.close()


async def test_create_emits_created_with_the_measured_duration(
    manager: ContainerManager, events: Events, tmp_path: Path
) -> None:
    c = await manager.create("pool-a", SLEEPER)
    assert isinstance(c, Container)
    assert (c.pool_id, c.workload_id, c.runtime, c.tenant_id) == ("pool-a", "sleeper", "process", None)
    assert c.id.startswith("pool-a-")
    assert c.data_dir == tmp_path / "data" / "pool-a" / c.id and c.data_dir.is_dir()
    assert c.pid is not None and process_alive(c.pid)
    assert events.items == [
        (
            "container.created",
            {"pool_id": "pool-a", "workload_id": "sleeper", "status": "success", "duration_s": 0.25},
        )
    ]
    assert manager.containers() == [c]
    assert await manager.health_check(c) is True
    assert events.of("container.health_check_failed") == []


async def test_create_failure_emits_failure_and_raises(
    manager: ContainerManager, events: Events, tmp_path: Path
) -> None:
    with pytest.raises(ContainerRuntimeError) as info:
        await manager.create("pool-a", Workload(id="broken", command=("/no/such/binary",)))
    assert info.value.operation == "create" and info.value.container_id.startswith("pool-a-")
    assert events.items == [
        (
            "container.created",
            {"pool_id": "pool-a", "workload_id": "broken", "status": "failure", "duration_s": 0.25},
        )
    ]
    assert manager.containers() == []
    assert list((tmp_path / "data" / "pool-a").iterdir()) == []  # no data dir left behind


async def test_wipe_clears_data_and_emits_wiped(manager: ContainerManager, events: Events) -> None:
    c = await manager.create("pool-a", SLEEPER)
    (c.data_dir / "tenant-file").write_text("data")
    (c.data_dir / "sub").mkdir()
    await manager.wipe(c)
    assert list(c.data_dir.iterdir()) == []
    assert c.pid is not None and process_alive(c.pid)
    assert events.of("container.wiped") == [{"pool_id": "pool-a", "status": "success", "duration_s": 0.25}]


async def test_wipe_failure_emits_failure(manager: ContainerManager, events: Events) -> None:
    c = await manager.create("pool-a", SLEEPER)
    await manager.runtime.destroy(c.id)  # the runtime lost it behind the manager's back
    with pytest.raises(ContainerRuntimeError, match="wipe"):
        await manager.wipe(c)
    assert events.of("container.wiped") == [{"pool_id": "pool-a", "status": "failure", "duration_s": 0.25}]


async def test_destroy_stops_removes_and_emits(manager: ContainerManager, events: Events) -> None:
    c = await manager.create("pool-b", SLEEPER)
    pid = c.pid
    assert pid is not None
    (c.data_dir / "x").write_text("x")
    await manager.destroy(c)
    assert not process_alive(pid)
    assert not c.data_dir.exists()
    assert manager.containers() == []
    assert events.of("container.destroyed") == [
        {"pool_id": "pool-b", "status": "success", "duration_s": 0.25}
    ]


async def test_failed_health_check_emits_event(manager: ContainerManager, events: Events) -> None:
    w = Workload(id="checked", command=("sleep", "1000"), health_command=("test", "-f", "ready"))
    c = await manager.create("pool-c", w)
    assert await manager.health_check(c) is False
    (c.data_dir / "ready").write_text("")
    assert await manager.health_check(c) is True
    assert c.pid is not None
    os.kill(c.pid, 9)  # our own child, by pid: the container dies
    pid = c.pid
    await until(
        lambda: not process_alive(pid), "the killed container's process is gone"
    )  # the OS needs a moment
    assert await manager.health_check(c) is False
    assert events.of("container.health_check_failed") == [{"pool_id": "pool-c"}, {"pool_id": "pool-c"}]


async def test_close_destroys_everything_left(tmp_path: Path, events: Events) -> None:
    m = ContainerManager(ProcessRuntime(), events, tmp_path, ManualClock())
    cs = [await m.create("p", SLEEPER) for _ in range(3)]
    pids = [c.pid for c in cs]
    await m.close()
    assert not any(process_alive(p) for p in pids if p is not None)
    assert [f["status"] for f in events.of("container.destroyed")] == ["success"] * 3
    assert events.of("container.destroyed")[0]["duration_s"] == 0.0  # a ManualClock that nobody advanced


async def test_manager_on_podman(tmp_path: Path, events: Events, busybox_image_built: None) -> None:
    runtime = PodmanRuntime()
    m = ContainerManager(runtime, events, tmp_path, SystemClock())
    try:
        c = await m.create("pod-pool", Workload(id="busy", image=DEFAULT_IMAGE, command=("sleep", "1000")))
        assert c.runtime == "podman" and runtime.podman_id(c.id)
        (c.data_dir / "f").write_text("x")
        await m.wipe(c)
        assert list(c.data_dir.iterdir()) == []
        assert await m.health_check(c) is True
        await m.destroy(c)
        assert runtime.podman_id(c.id) is None
    finally:
        await m.close()
    assert events.types() == ["container.created", "container.wiped", "container.destroyed"]
    assert all(f["status"] == "success" and 0 < f["duration_s"] < 30 for _, f in events.items)


@pytest.fixture(scope="module")
def busybox_image_built() -> None:
    import shutil
    import subprocess

    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run ./scripts/install-system-deps.sh")
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-busybox-image.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
