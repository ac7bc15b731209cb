"""ContainerPool logic on the real process runtime, driven by a ManualClock, asserting the emitted events."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.api.clock import ManualClock
from services.api.containers import ContainerManager
from services.api.pool import (
    ContainerPool,
    PoolClosed,
    PoolExhausted,
    TenantAlreadyClaimed,
    TenantNotClaimed,
    sync_direction,
)
from services.api.runtimes import ContainerRuntimeError, PodmanRuntime, ProcessRuntime
from services.api.sync import SyncCoordinator, SyncFailed
from services.api.workloads import DEFAULT_IMAGE, SyncSpec, Workload
from tests.support.recording import Events, process_alive
from tests.support.wait import until

pytestmark = pytest.mark.anyio

SLEEPER = Workload(id="sleeper", command=("sleep", "1000"))
#: Healthy while the file ``healthy`` exists in its data dir (created at start).
CHECKED = Workload(
    id="checked",
    command=("sh", "-c", "touch healthy; exec sleep 1000"),
    health_command=("test", "-f", "healthy"),
)


@dataclass
class Env:
    tmp: Path
    events: Events
    clock: ManualClock
    manager: ContainerManager
    pools: list[ContainerPool] = field(default_factory=list)

    async def pool(self, workload: Workload = SLEEPER, *, start: bool = True, **kw: Any) -> ContainerPool:
        kw.setdefault("clock", self.clock)
        p = ContainerPool(kw.pop("pool_id", "pool-1"), workload, self.manager, self.events, **kw)
        self.pools.append(p)
        if start:
            await p.start(maintenance=False)
        return p


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    events, clock = Events(), ManualClock()
    manager = ContainerManager(ProcessRuntime(log_dir=tmp_path / "logs"), events, tmp_path / "data", clock)
    e = Env(tmp_path, events, clock, manager)
    yield e
    for p in e.pools:
        await p.close()
    await manager.close()


def assert_state(pool: ContainerPool, events: Events, **expected: int) -> None:
    """The last pool.state snapshot is the pool's current stats, and those are as expected."""
    states = events.of("pool.state")
    assert states, "no pool.state emitted"
    assert states[-1] == {"pool_id": pool.pool_id, "workload_id": pool.workload.id, **pool.stats()}
    stats = pool.stats()
    assert stats["size"] == stats["available"] + stats["borrowed"] + stats["pending"]
    assert {k: stats[k] for k in expected} == expected


# ---- sizing and lifecycle ---------------------------------------------------------------------------


async def test_start_fills_to_min_size_and_close_destroys_everything(env: Env) -> None:
    pool = await env.pool(min_size=2, max_size=4)
    assert pool.stats() == {
        "size": 2,
        "available": 2,
        "borrowed": 0,
        "pending": 0,
        "min_size": 2,
        "max_size": 4,
        "target_size": 2,
        "affinity_reservations": 0,
    }
    assert_state(pool, env.events)
    assert (
        env.events.count("container.created", status="success", workload_id="sleeper", pool_id="pool-1") == 2
    )
    # While they were being created the pool said so.
    assert any(s["pending"] == 2 and s["size"] == 2 for s in env.events.of("pool.state"))
    pids = [c.pid for c in pool.containers()]
    assert all(process_alive(p) for p in pids)

    held = await pool.acquire("tnt-a")
    await pool.close()
    assert not any(process_alive(p) for p in [*pids, held.pid])
    assert env.events.count("container.destroyed", status="success") == len({*pids, held.pid})
    assert env.events.items[-1] == ("pool.removed", {"pool_id": "pool-1", "workload_id": "sleeper"})
    n = env.events.mark()
    pool.emit_state()  # the heartbeat may still call it: a removed pool publishes nothing
    assert env.events.mark() == n
    with pytest.raises(PoolClosed, match="pool 'pool-1' is closed"):
        await pool.acquire("tnt-b")


async def test_start_failure_raises_and_reports_the_failed_create(env: Env) -> None:
    broken = Workload(id="broken", command=("/no/such/binary",))
    with pytest.raises(ContainerRuntimeError, match="create"):
        await env.pool(broken, min_size=1, max_size=2)
    assert env.events.of("container.created") == [
        {"pool_id": "pool-1", "workload_id": "broken", "status": "failure", "duration_s": 0.0}
    ]
    pool = env.pools[-1]
    assert_state(pool, env.events, size=0, pending=0)


async def test_scales_up_on_demand_and_back_down_after_idle(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=3, affinity_timeout_s=10, idle_timeout_s=60)
    a = await pool.acquire("tnt-a")
    await pool.settle()
    # The only idle container went to a tenant: the target rose and a spare was created.
    assert_state(pool, env.events, size=2, available=1, borrowed=1, pending=0, target_size=2)
    b = await pool.acquire("tnt-b")
    await pool.settle()
    assert_state(pool, env.events, size=3, available=1, borrowed=2, target_size=3)
    c = await pool.acquire("tnt-c")
    await pool.settle()
    assert_state(pool, env.events, size=3, available=0, borrowed=3, target_size=3)  # capped at max
    assert len({a.id, b.id, c.id}) == 3
    assert env.events.count("container.created", status="success") == 3

    for tenant in ("tnt-a", "tnt-b", "tnt-c"):
        await pool.release(tenant)
    assert_state(pool, env.events, size=3, available=3, borrowed=0, affinity_reservations=3)

    env.clock.advance(10)  # reservations expire; demand was 10 s ago, so the target stays
    await pool.tick()
    assert env.events.count("affinity.evicted") == 3
    assert_state(pool, env.events, size=3, available=3, affinity_reservations=0, target_size=3)

    env.clock.advance(50)  # 60 s without a claim: back to min, the extra idle containers go
    await pool.tick()
    assert_state(pool, env.events, size=1, available=1, target_size=1, pending=0)
    assert env.events.count("container.destroyed", status="success") == 2
    assert sum(process_alive(x.pid) for x in (a, b, c)) == 1


async def test_released_container_above_target_is_destroyed_on_eviction(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=2, affinity_timeout_s=30, idle_timeout_s=20)
    await pool.acquire("tnt-a")
    await pool.acquire("tnt-b")
    await pool.settle()
    assert_state(pool, env.events, size=2, borrowed=2, target_size=2)
    env.clock.advance(20)
    await pool.tick()  # idle: target back to min while both are still borrowed
    assert_state(pool, env.events, size=2, borrowed=2, target_size=1)
    await pool.release("tnt-a")
    await pool.release("tnt-b")
    env.clock.advance(30)
    await pool.tick()
    assert env.events.count("affinity.evicted") == 2
    assert env.events.count("container.wiped", status="success") == 2
    assert env.events.count("container.destroyed", status="success") == 1
    assert_state(pool, env.events, size=1, available=1, borrowed=0, target_size=1, affinity_reservations=0)


# ---- affinity ---------------------------------------------------------------------------------------


async def test_affinity_hit_returns_the_tenants_container_with_its_data(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=3, affinity_timeout_s=300)
    first = await pool.acquire("tnt-alice")
    assert pool.tenants() == {"tnt-alice": first} and first.tenant_id == "tnt-alice"
    assert first.state == "borrowed"
    (first.data_dir / "work.txt").write_text("in progress")
    await pool.release("tnt-alice")
    assert pool.tenants() == {} and pool.reservations() == {"tnt-alice": first}
    assert first.state == "reserved"
    assert_state(pool, env.events, borrowed=0, affinity_reservations=1)

    env.clock.advance(299)
    await pool.tick()
    assert env.events.count("affinity.evicted") == 0
    again = await pool.acquire("tnt-alice")
    assert again is first and (again.data_dir / "work.txt").read_text() == "in progress"
    assert [(e["status"], e["affinity"]) for e in env.events.of("container.acquired")] == [
        ("success", "miss"),
        ("success", "hit"),
    ]
    assert env.events.of("container.released") == [
        {"pool_id": "pool-1", "status": "success", "duration_s": 0.0}
    ]
    assert_state(pool, env.events, borrowed=1, affinity_reservations=0)
    assert env.events.count("container.wiped") == 0


async def test_expired_reservation_is_evicted_wiped_and_returned(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=2, affinity_timeout_s=300, idle_timeout_s=1000)
    c = await pool.acquire("tnt-alice")
    await pool.settle()  # the spare created because the only idle container was taken
    (c.data_dir / "secret").write_text("alice's")
    await pool.release("tnt-alice")
    env.clock.advance(300)
    mark = env.events.mark()
    await pool.tick()
    lifecycle = [t for t, _ in env.events.since(mark) if t != "pool.state"]
    assert lifecycle == ["affinity.evicted", "container.wiped"]
    assert env.events.of("affinity.evicted") == [{"pool_id": "pool-1"}]
    assert list(c.data_dir.iterdir()) == [] and c.state == "available" and c.tenant_id is None
    assert_state(pool, env.events, available=2, affinity_reservations=0, size=2)
    again = await pool.acquire("tnt-alice")
    assert list(again.data_dir.iterdir()) == []
    assert env.events.of("container.acquired")[-1]["affinity"] == "miss"


async def test_full_pool_takes_over_the_oldest_reservation(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=2, affinity_timeout_s=300)
    a = await pool.acquire("tnt-a")
    b = await pool.acquire("tnt-b")
    (a.data_dir / "a-data").write_text("a")
    await pool.release("tnt-a")
    await pool.release("tnt-b")
    c = await pool.acquire("tnt-c")  # nothing free and at max: tnt-a's reservation (oldest) is evicted
    assert c is a and list(c.data_dir.iterdir()) == []
    assert pool.reservations() == {"tnt-b": b}
    assert env.events.count("affinity.evicted") == 1
    assert env.events.of("container.acquired")[-1] == {
        "pool_id": "pool-1",
        "status": "success",
        "duration_s": 0.0,
        "affinity": "miss",
    }
    assert_state(pool, env.events, size=2, borrowed=1, available=1, affinity_reservations=1)


async def test_without_affinity_release_wipes_and_returns_at_once(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1, affinity_timeout_s=0)
    c = await pool.acquire("tnt-a")
    (c.data_dir / "x").write_text("x")
    await pool.release("tnt-a")
    assert list(c.data_dir.iterdir()) == [] and c.state == "available"
    assert env.events.lifecycle()[-2:] == ["container.wiped", "container.released"]
    assert_state(pool, env.events, size=1, available=1, affinity_reservations=0)


# ---- exhaustion and concurrency ---------------------------------------------------------------------


async def test_exhausted_acquire_waits_then_times_out(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1, acquire_timeout_s=30)
    await pool.acquire("tnt-a")
    waiting = asyncio.create_task(pool.acquire("tnt-b"))
    await until(lambda: env.clock.sleepers == 1, "acquire waiting on the clock")
    env.clock.advance(29.5)
    await asyncio.sleep(0)
    assert not waiting.done()
    env.clock.advance(0.5)
    with pytest.raises(PoolExhausted) as info:
        await waiting
    err = info.value
    assert (err.pool_id, err.retry_after_s, err.waited_s) == ("pool-1", 30.0, 30.0)
    assert "exhausted" in str(err) and "retry after 30s" in str(err)
    assert env.events.of("container.acquired")[-1] == {
        "pool_id": "pool-1",
        "status": "timeout",
        "duration_s": 30.0,
        "affinity": "miss",
    }
    assert_state(pool, env.events, size=1, borrowed=1, available=0)
    assert env.clock.sleepers == 0
    assert "tnt-b" not in pool.tenants()


async def test_waiting_acquire_gets_the_container_freed_by_a_release(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1, acquire_timeout_s=30, affinity_timeout_s=300)
    a = await pool.acquire("tnt-a")
    waiting = asyncio.create_task(pool.acquire("tnt-b"))
    await until(lambda: env.clock.sleepers == 1, "acquire waiting")
    env.clock.advance(5)
    await pool.release("tnt-a")
    b = await waiting
    assert b is a and b.tenant_id == "tnt-b"
    assert env.events.of("container.acquired")[-1] == {
        "pool_id": "pool-1",
        "status": "success",
        "duration_s": 5.0,
        "affinity": "miss",
    }
    assert env.events.count("affinity.evicted") == 1 and env.events.count("container.wiped") == 1
    assert env.clock.sleepers == 0
    assert_state(pool, env.events, borrowed=1, affinity_reservations=0)


async def test_concurrent_acquires_get_distinct_containers_up_to_max(env: Env) -> None:
    pool = await env.pool(min_size=0, max_size=3, acquire_timeout_s=10)
    assert_state(pool, env.events, size=0)
    tasks = [asyncio.create_task(pool.acquire(f"tnt-{i}")) for i in range(5)]
    await until(lambda: sum(t.done() for t in tasks) == 3 and env.clock.sleepers == 2, "3 served, 2 waiting")
    served = [t.result() for t in tasks if t.done()]
    assert len({c.id for c in served}) == 3
    assert len(pool.tenants()) == 3
    env.clock.advance(10)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, PoolExhausted) for r in results) == 2
    assert (
        sorted(e["status"] for e in env.events.of("container.acquired")) == ["success"] * 3 + ["timeout"] * 2
    )
    await pool.settle()
    assert env.events.count("container.created") == 3
    assert_state(pool, env.events, size=3, borrowed=3, available=0, target_size=3)


async def test_close_fails_waiting_acquires(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=1)
    await pool.acquire("tnt-a")
    waiting = asyncio.create_task(pool.acquire("tnt-b"))
    await until(lambda: env.clock.sleepers == 1, "acquire waiting")
    await pool.close()
    with pytest.raises(PoolClosed):
        await waiting
    assert env.events.of("container.acquired")[-1]["status"] == "failure"


async def test_claim_errors_carry_pool_and_tenant(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=2)
    with pytest.raises(TenantNotClaimed) as not_claimed:
        await pool.release("tnt-x")
    assert (not_claimed.value.pool_id, not_claimed.value.tenant_id) == ("pool-1", "tnt-x")
    assert str(not_claimed.value) == "tenant 'tnt-x' holds no container in pool 'pool-1'"
    await pool.acquire("tnt-x")
    with pytest.raises(TenantAlreadyClaimed) as already:
        await pool.acquire("tnt-x")
    assert already.value.tenant_id == "tnt-x" and "already holds" in str(already.value)
    await pool.release("tnt-x")
    with pytest.raises(TenantNotClaimed):
        await pool.release("tnt-x")  # released once; the reservation is not a holding
    # Client errors are not acquire/release outcomes: one acquire, one release were reported.
    assert len(env.events.of("container.acquired")) == 1 and len(env.events.of("container.released")) == 1


# ---- health -----------------------------------------------------------------------------------------


async def test_failing_containers_are_destroyed_and_replaced(env: Env) -> None:
    pool = await env.pool(CHECKED, min_size=2, max_size=3, health_interval_s=10, affinity_timeout_s=300)
    first, second = pool.containers()
    await until(lambda: all((c.data_dir / "healthy").exists() for c in (first, second)), "containers up")

    (first.data_dir / "healthy").unlink()  # the health command now fails for this one
    env.clock.advance(5)
    await pool.tick()  # not due yet
    assert env.events.count("container.health_check_failed") == 0

    env.clock.advance(5)
    mark = env.events.mark()
    await pool.tick()
    assert [t for t, _ in env.events.since(mark) if t != "pool.state"] == [
        "container.health_check_failed",
        "container.destroyed",
        "container.created",
    ]
    assert env.events.of("container.health_check_failed") == [{"pool_id": "pool-1"}]
    assert first not in pool.containers() and second in pool.containers() and not process_alive(first.pid)
    assert_state(pool, env.events, size=2, available=2, pending=0)

    await until(lambda: all((c.data_dir / "healthy").exists() for c in pool.containers()), "replacement up")

    # A dead process (our own child, stopped by its pid) is unhealthy too; a reserved container counts.
    c = await pool.acquire("tnt-a")
    await pool.release("tnt-a")
    await pool.settle()
    os.kill(c.pid or 0, 9)
    await until(lambda: not process_alive(c.pid), "killed container gone")
    env.clock.advance(10)
    await pool.tick()
    assert env.events.count("container.health_check_failed") == 2
    assert pool.reservations() == {}
    assert c not in pool.containers()
    await pool.settle()
    assert_state(pool, env.events, pending=0, affinity_reservations=0)


async def test_borrowed_container_failing_its_health_check_is_replaced_on_release(env: Env) -> None:
    """A tenant keeps the container it holds (nothing is pulled from under it); the failure is counted
    and shown, and on release the container is destroyed and replaced instead of reserved for reuse."""
    pool = await env.pool(CHECKED, min_size=1, max_size=2, health_interval_s=10, affinity_timeout_s=300)
    held = await pool.acquire("tnt-a")
    await pool.settle()  # the spare container the claim asked for is created too
    await until(lambda: all((c.data_dir / "healthy").exists() for c in pool.containers()), "containers up")
    env.clock.advance(10)
    await pool.tick()
    assert env.events.count("container.health_check_failed") == 0 and held.healthy

    (held.data_dir / "healthy").unlink()
    env.clock.advance(10)
    mark = env.events.mark()
    await pool.tick()
    assert [t for t, _ in env.events.since(mark) if t != "pool.state"] == ["container.health_check_failed"]
    assert pool.tenants() == {"tnt-a": held} and held.state == "borrowed" and process_alive(held.pid)
    assert held.info()["healthy"] is False

    mark = env.events.mark()
    await pool.release("tnt-a")
    await pool.settle()
    assert [t for t, _ in env.events.since(mark) if t != "pool.state"] == [
        "container.released",
        "container.destroyed",
        "container.created",
    ]
    assert env.events.of("container.released")[-1]["status"] == "success"
    assert held not in pool.containers() and not process_alive(held.pid)
    assert pool.reservations() == {}  # no affinity reservation on a broken container
    again = await pool.acquire("tnt-a")  # a miss, on the healthy replacement
    assert again is not held and again.healthy
    assert env.events.of("container.acquired")[-1]["affinity"] == "miss"
    assert_state(pool, env.events, borrowed=1, affinity_reservations=0)
    assert pool.stats()["size"] == pool.target_size


async def test_background_maintenance_runs_on_the_injected_clock(env: Env) -> None:
    pool = await env.pool(min_size=1, max_size=2, affinity_timeout_s=60, start=False, tick_interval_s=1.0)
    await pool.start()
    await pool.acquire("tnt-a")
    await pool.release("tnt-a")
    env.clock.advance(30)
    await until(lambda: env.clock.sleepers >= 1, "maintenance sleeping")
    assert env.events.count("affinity.evicted") == 0
    env.clock.advance(31)
    await until(lambda: env.events.count("container.wiped") == 1, "eviction by the maintenance task")
    assert env.events.count("affinity.evicted") == 1
    await pool.close()
    assert env.clock.sleepers == 0


# ---- sync -------------------------------------------------------------------------------------------


def test_sync_direction_per_phase() -> None:
    assert sync_direction(SyncSpec("/r", "sync", "bidirectional"), "acquire") == "download"
    assert sync_direction(SyncSpec("/r", "sync", "bidirectional"), "release") == "upload"
    assert sync_direction(SyncSpec("/r", "copy", "upload"), "acquire") is None
    assert sync_direction(SyncSpec("/r", "copy", "upload"), "release") == "upload"
    assert sync_direction(SyncSpec("/r", "sync", "download"), "release") is None
    assert sync_direction(SyncSpec("/r", "bisync", "bidirectional"), "acquire") == "bidirectional"


async def _sync_pool(env: Env, spec: SyncSpec, **kw: Any) -> tuple[ContainerPool, SyncCoordinator]:
    workload = Workload(id="synced", command=("sleep", "1000"), sync=spec)
    coordinator = SyncCoordinator(env.events, clock=env.clock)
    coordinator.register(workload)
    pool = await env.pool(workload, sync=coordinator, **kw)
    return pool, coordinator


async def test_acquire_downloads_and_release_uploads_with_rclone(env: Env) -> None:
    remote = env.tmp / "remote"
    (remote / "tnt-alice").mkdir(parents=True)
    (remote / "tnt-alice" / "saved.txt").write_text("from last time")
    pool, coordinator = await _sync_pool(
        env, SyncSpec(str(remote), "sync", "bidirectional"), min_size=1, max_size=2
    )
    try:
        c = await pool.acquire("tnt-alice")
        assert (c.data_dir / "saved.txt").read_text() == "from last time"
        (c.data_dir / "new.txt").write_text("written in the container")
        await pool.release("tnt-alice")
        assert (remote / "tnt-alice" / "new.txt").read_text() == "written in the container"
        finished = env.events.of("sync.finished")
        assert [(f["direction"], f["status"]) for f in finished] == [
            ("download", "success"),
            ("upload", "success"),
        ]
        assert env.events.of("container.released")[-1]["status"] == "success"
        assert env.events.of("container.acquired")[-1]["status"] == "success"
    finally:
        await coordinator.close()


async def test_failed_download_fails_the_acquire_and_returns_the_container(env: Env) -> None:
    pool, coordinator = await _sync_pool(
        env, SyncSpec("nosuchremote:bucket", "sync", "bidirectional"), min_size=1, max_size=1
    )
    try:
        with pytest.raises(SyncFailed):
            await pool.acquire("tnt-alice")
        assert env.events.of("container.acquired") == [
            {"pool_id": "pool-1", "status": "failure", "duration_s": 0.0, "affinity": "miss"}
        ]
        assert env.events.of("sync.finished")[-1]["status"] == "failure"
        assert pool.tenants() == {}
        assert_state(pool, env.events, size=1, available=1, borrowed=0, pending=0)
        [c] = pool.containers()
        assert c.state == "available" and list(c.data_dir.iterdir()) == []
    finally:
        await coordinator.close()


async def test_failed_upload_still_releases(env: Env) -> None:
    pool, coordinator = await _sync_pool(
        env, SyncSpec("nosuchremote:bucket", "copy", "upload"), min_size=1, max_size=1
    )
    try:
        await pool.acquire("tnt-alice")  # upload-only: nothing is downloaded
        await pool.release("tnt-alice")
        assert env.events.of("container.released") == [
            {"pool_id": "pool-1", "status": "failure", "duration_s": 0.0}
        ]
        [finished] = env.events.of("sync.finished")
        assert (finished["direction"], finished["status"]) == ("upload", "failure")
        assert pool.tenants() == {} and list(pool.reservations()) == ["tnt-alice"]
    finally:
        await coordinator.close()


# ---- the clock and a real OCI runtime ---------------------------------------------------------------


async def test_manual_clock_wakes_sleepers_when_their_time_passes() -> None:
    clock = ManualClock(start=100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(f"{name}@{clock.monotonic():g}")

    tasks = [asyncio.create_task(sleeper("b", 5)), asyncio.create_task(sleeper("a", 2))]
    await until(lambda: clock.sleepers == 2, "both asleep")
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(4)
    await asyncio.gather(*tasks)
    assert woke == ["a@105.5", "b@105.5"] and clock.sleepers == 0
    await clock.sleep(0)  # yields, returns at once
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


async def test_pool_on_podman(tmp_path: Path) -> None:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run ./scripts/install-system-deps.sh")
    script = Path(__file__).resolve().parents[2] / "scripts" / "build-busybox-image.sh"
    assert subprocess.run([str(script)], capture_output=True, timeout=120).returncode == 0
    events, clock = Events(), ManualClock()
    manager = ContainerManager(PodmanRuntime(), events, tmp_path / "data", clock)
    workload = Workload(
        id="busy", image=DEFAULT_IMAGE, command=("sleep", "1000"), health_command=("test", "-d", "/data")
    )
    pool = ContainerPool(
        "pod-pool",
        workload,
        manager,
        events,
        min_size=1,
        max_size=2,
        affinity_timeout_s=30,
        health_interval_s=10,
        clock=clock,
    )
    try:
        await pool.start(maintenance=False)
        c = await pool.acquire("tnt-a")
        (c.data_dir / "state").write_text("tenant data")
        await pool.release("tnt-a")
        clock.advance(30)
        await pool.tick()  # evicts (wipes through the bind mount) and health-checks via podman exec
        assert list(c.data_dir.iterdir()) == []
        assert events.count("container.health_check_failed") == 0
        assert events.count("affinity.evicted") == 1
        assert_state(pool, events, size=2, available=2, pending=0)
    finally:
        await pool.close()
        await manager.close()
    assert events.items[-1][0] == "pool.removed"
    assert events.count("container.destroyed", status="success") == events.count("container.created")
