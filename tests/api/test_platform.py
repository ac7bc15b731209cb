"""The platform layer on real parts: process-runtime containers, the real SyncCoordinator and rclone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.api.clock import ManualClock
from services.api.containers import ContainerManager
from services.api.platform import (
    Boilerhouse,
    InvalidPool,
    PoolExists,
    PoolSpec,
    TenantBusy,
    UnknownPool,
    UnknownTenant,
    UnknownWorkload,
)
from services.api.pool import TenantAlreadyClaimed
from services.api.runtimes import ProcessRuntime
from services.api.sync import SyncCoordinator, SyncNotConfigured
from services.api.workloads import SyncSpec, Workload
from tests.support.recording import Events
from tests.support.wait import until

pytestmark = pytest.mark.anyio


def workloads(remote: Path) -> dict[str, Workload]:
    return {
        "plain": Workload("plain", command=("sleep", "1000")),
        "docs": Workload(
            "docs",
            command=("sleep", "1000"),
            sync=SyncSpec(remote=str(remote / "docs"), mode="copy", direction="upload"),
        ),
        "ticker": Workload(
            "ticker",
            command=("sleep", "1000"),
            sync=SyncSpec(remote=str(remote / "ticker"), mode="copy", direction="upload", period_s=0.2),
        ),
    }


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[tuple[Boilerhouse, Events]]:
    events = Events()
    manager = ContainerManager(ProcessRuntime(), events, tmp_path / "containers")
    syncer = SyncCoordinator(events, bisync_workdir=tmp_path / "bisync")
    bh = Boilerhouse(workloads(tmp_path / "remote"), events, manager, syncer)
    await bh.start()
    try:
        yield bh, events
    finally:
        await bh.close()


def spec(pool_id: str, workload_id: str, **kw: Any) -> PoolSpec:
    return PoolSpec(pool_id, workload_id, **{"min_size": 1, "max_size": 2, "acquire_timeout_s": 0.2, **kw})


async def test_tenants_belong_to_one_pool_at_a_time(platform: tuple[Boilerhouse, Events]) -> None:
    bh, events = platform
    await bh.create_pool(spec("a", "plain"))
    await bh.create_pool(spec("b", "plain"))
    got = await bh.claim("tnt-1", "a")
    assert got["pool_id"] == "a" and got["container"]["state"] == "borrowed"
    with pytest.raises(TenantBusy):
        await bh.claim("tnt-1", "b")
    with pytest.raises(TenantAlreadyClaimed):
        await bh.claim("tnt-1", "a")
    assert bh.tenant_info("tnt-1")["pool_id"] == "a"
    assert await bh.release("tnt-1") == {"tenant_id": "tnt-1", "pool_id": "a", "released": True}
    with pytest.raises(UnknownTenant):
        await bh.release("tnt-1")
    assert (await bh.claim("tnt-1", "b"))["pool_id"] == "b"  # free to go elsewhere now
    assert len(events.of("container.acquired")) == 2  # the refused claims did not reach a pool as claims


async def test_pool_registry_errors(platform: tuple[Boilerhouse, Events]) -> None:
    bh, _ = platform
    with pytest.raises(UnknownWorkload):
        await bh.create_pool(spec("a", "nope"))
    with pytest.raises(InvalidPool):
        await bh.create_pool(spec("a", "plain", min_size=3, max_size=2))
    with pytest.raises(InvalidPool):
        await bh.create_pool(spec("not valid", "plain"))
    await bh.create_pool(spec("a", "plain"))
    with pytest.raises(PoolExists):
        await bh.create_pool(spec("a", "plain"))
    with pytest.raises(UnknownPool):
        bh.pool_info("zzz")
    with pytest.raises(UnknownPool):
        await bh.claim("tnt-1", "zzz")
    with pytest.raises(UnknownTenant):
        bh.tenant_info("tnt-1")
    assert [p["pool_id"] for p in bh.pools_info()] == ["a"]


async def test_delete_pool_destroys_containers_and_frees_tenants(
    platform: tuple[Boilerhouse, Events],
) -> None:
    bh, events = platform
    await bh.create_pool(spec("a", "plain", min_size=2))
    await bh.claim("tnt-1", "a")
    pids = [c["pid"] for c in bh.containers_info()]
    assert len(pids) == 2
    await bh.delete_pool("a")
    assert bh.containers_info() == [] and bh.pools_info() == []
    with pytest.raises(UnknownTenant):
        bh.tenant_info("tnt-1")
    assert events.of("pool.removed", pool_id="a", workload_id="plain")
    assert len(events.of("container.destroyed", pool_id="a", status="success")) == 2
    with pytest.raises(UnknownPool):
        await bh.delete_pool("a")


async def test_sync_of_a_claimed_tenant(platform: tuple[Boilerhouse, Events], tmp_path: Path) -> None:
    bh, events = platform
    await bh.create_pool(spec("docs", "docs"))
    await bh.create_pool(spec("plain", "plain"))
    got = await bh.claim("tnt-1", "docs")
    (Path(got["container"]["data_dir"]) / "a.txt").write_bytes(b"a" * 42)
    result = await bh.sync("tnt-1")
    assert (result["bytes"], result["files"], result["direction"], result["mode"]) == (
        42,
        1,
        "upload",
        "copy",
    )
    assert (tmp_path / "remote" / "docs" / "tnt-1" / "a.txt").read_bytes() == b"a" * 42
    with pytest.raises(UnknownTenant):
        await bh.sync("tnt-2")
    await bh.claim("tnt-2", "plain")
    with pytest.raises(SyncNotConfigured):
        await bh.sync("tnt-2")
    assert events.of("sync.finished", workload_id="docs", status="success", bytes=42, files=1)


async def test_periodic_sync_runs_while_a_tenant_holds_a_container(tmp_path: Path) -> None:
    """Periods run on an injected clock: the job syncs each period while claimed, and once released
    nothing waits for another period (checked on the clock, not by sleeping through periods)."""
    events, clock = Events(), ManualClock()
    manager = ContainerManager(ProcessRuntime(), events, tmp_path / "containers")
    syncer = SyncCoordinator(events, bisync_workdir=tmp_path / "bisync", clock=clock)
    bh = Boilerhouse(workloads(tmp_path / "remote"), events, manager, syncer)
    await bh.start()
    try:
        await bh.create_pool(spec("t", "ticker", min_size=1, max_size=1))
        await bh.claim("tnt-1", "t")
        assert events.of("sync.state", workload_id="ticker")[-1]["periodic_jobs"] == 1
        for n in (1, 2):
            await until(lambda: clock.sleepers == 1, "the periodic job waits for its next period")
            clock.advance(0.2)
            await until(
                lambda n=n: len(events.of("sync.finished", workload_id="ticker")) == n, f"periodic sync {n}"
            )
        await bh.release("tnt-1")  # uploads the tenant's data once more
        assert events.of("sync.state", workload_id="ticker")[-1]["periodic_jobs"] == 0
        synced = len(events.of("sync.finished", workload_id="ticker"))
        assert clock.sleepers == 0, "a released tenant's periodic job still waits for a period"
        clock.advance(3600)
        await asyncio.sleep(0)  # let anything woken run
        assert len(events.of("sync.finished", workload_id="ticker")) == synced
    finally:
        await bh.close()


async def test_snapshots_from_the_flusher_thread_are_emitted_on_the_loop(
    platform: tuple[Boilerhouse, Events],
) -> None:
    bh, events = platform
    await bh.create_pool(spec("a", "plain"))
    await bh.create_pool(spec("gone", "plain"))
    await bh.delete_pool("gone")
    before = len(events.items)
    caller = threading.Thread(target=bh.snapshot)  # as the publisher's flusher thread calls it
    caller.start()
    caller.join()
    await until(lambda: len(events.items) > before, "snapshots emitted on the loop")
    fresh = events.items[before:]
    assert set(events.threads[before:]) == {threading.get_ident()}  # the loop's thread, not the caller's
    assert [f["pool_id"] for t, f in fresh if t == "pool.state"] == ["a"]  # nothing for the deleted pool
    assert sorted(f["workload_id"] for t, f in fresh if t == "sync.state") == ["docs", "ticker"]
