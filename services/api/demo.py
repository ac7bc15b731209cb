"""``--demo``: demo pools plus a traffic driver that makes every seed metric move within a minute.

The driver talks to the API through its own HTTP stack (in-process ASGI transport), so requests are
measured by the same middleware as real ones. It claims and releases tenants (re-claims within the
affinity timeout are hits, others misses; reservations nobody comes back for are evicted), syncs
tenant data (a local remote; a WebDAV remote nothing listens on for network errors; a timeout too
short for rclone), bursts claims past a pool's size (503 + Retry-After), asks for things that do not
exist (404), sends malformed bodies (400) and conflicting requests (409). A "flaky" workload's
containers exit after a while, so health checks fail and containers are replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from .platform import Boilerhouse
from .settings import ApiSettings
from .workloads import SyncSpec, Workload

logger = logging.getLogger(__name__)

API = "/api/v1"


def demo_workloads(remote_root: Path, settings: ApiSettings) -> list[Workload]:
    """Workloads only the demo uses: a flaky one and two whose sync always fails (differently)."""
    writer = ("sh", "-c", "while :; do date >> notes.txt; sleep 1; done")
    return [
        Workload("demo-flaky", command=("sh", "-c", "sleep 12"), source="<demo>"),
        Workload(
            "demo-offsite",
            command=writer,
            source="<demo>",
            sync=SyncSpec(
                remote=":webdav,url='http://127.0.0.1:9/':offsite",
                mode="copy",
                direction="upload",
                timeout_s=10.0,
                extra_args=("--retries", "1"),
            ),
        ),
        Workload(
            "demo-slow",
            command=writer,
            source="<demo>",
            sync=SyncSpec(remote=str(remote_root / "slow"), mode="copy", direction="upload", timeout_s=0.001),
        ),
    ]


#: (pool body, share of normal traffic) for the demo pools; timings short so everything shows quickly.
DEMO_POOLS: list[dict[str, Any]] = [
    {"pool_id": "demo-web", "workload_id": "echo", "min_size": 2, "max_size": 4},
    {"pool_id": "demo-notes", "workload_id": "notes", "min_size": 1, "max_size": 3},
    {"pool_id": "demo-journal", "workload_id": "journal", "min_size": 1, "max_size": 2},
    {"pool_id": "demo-flaky", "workload_id": "demo-flaky", "min_size": 1, "max_size": 2},
    {"pool_id": "demo-offsite", "workload_id": "demo-offsite", "min_size": 1, "max_size": 1},
    {"pool_id": "demo-slow", "workload_id": "demo-slow", "min_size": 1, "max_size": 1},
]
DEMO_TIMINGS = {
    "affinity_timeout_s": 6.0,
    "acquire_timeout_s": 1.0,
    "idle_timeout_s": 20.0,
    "health_interval_s": 2.0,
}
TRAFFIC_POOLS = ("demo-web", "demo-web", "demo-notes", "demo-journal")


@dataclass(frozen=True, slots=True)
class _Released:
    """A tenant the demo released: from which pool, and when (monotonic seconds)."""

    pool_id: str
    at: float


class DemoDriver:
    """Creates the demo pools and drives traffic until stopped.

    Parameters:
        app: the API app (requests go through its full middleware stack).
        platform: used only to add the demo-only workloads.
        settings: where demo remotes live (``{data_dir}/demo-remote``).
        seed: random seed, for a reproducible sequence of requests.
        step_s: pause between two actions.
    """

    def __init__(
        self,
        app: Starlette,
        platform: Boilerhouse,
        settings: ApiSettings,
        *,
        seed: int = 7,
        step_s: float = 0.25,
    ) -> None:
        self.app = app
        self.platform = platform
        self.settings = settings
        self.rng = random.Random(seed)  # noqa: S311 -- reproducible demo traffic, not a secret
        self.step_s = step_s
        self.requests = 0
        self.statuses: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._held: dict[str, str] = {}  # tenant -> pool
        self._released: dict[str, _Released] = {}  # by tenant
        self._next_tenant = 0

    async def start(self) -> None:
        remote_root = Path(self.settings.data_dir) / "demo-remote"
        for w in demo_workloads(remote_root, self.settings):
            self.platform.add_workload(w)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://demo",
            timeout=60,
        )
        for body in DEMO_POOLS:
            if body["workload_id"] not in self.platform.workloads:
                logger.warning(
                    "demo: workload %s not loaded; skipping pool %s", body["workload_id"], body["pool_id"]
                )
                continue
            await self._call("POST", f"{API}/pools", {**body, **DEMO_TIMINGS})
        self._task = asyncio.create_task(self._run(), name="demo-traffic")
        logger.info("demo traffic started (pools %s)", ", ".join(p["pool_id"] for p in DEMO_POOLS))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()
        logger.info(
            "demo traffic stopped after %d requests: %s", self.requests, dict(sorted(self.statuses.items()))
        )

    async def _call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> httpx.Response:
        assert self._client is not None
        if raw is not None:
            r = await self._client.request(
                method, path, content=raw, headers={"content-type": "application/json"}
            )
        else:
            r = await self._client.request(method, path, json=body)
        self.requests += 1
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        return r

    # ---- the traffic ----------------------------------------------------------------------------

    async def _run(self) -> None:
        last_burst = last_errors = time.monotonic()
        while True:
            try:
                now = time.monotonic()
                if now - last_burst > 20:
                    last_burst = now
                    await self.exhaustion_burst("demo-web")
                elif now - last_errors > 7:
                    last_errors = now
                    await self.failing_syncs()
                    await self.bad_requests()
                else:
                    await self.normal_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("demo step failed; continuing")
            await asyncio.sleep(self.step_s)

    def _new_tenant(self) -> str:
        self._next_tenant += 1
        return f"demo-tenant-{self._next_tenant:04d}"

    async def normal_step(self) -> None:
        rng, now = self.rng, time.monotonic()
        roll = rng.random()
        if self._held and (roll < 0.4 or len(self._held) >= 6):
            tenant = rng.choice(sorted(self._held))
            pool = self._held[tenant]
            if pool != "demo-web" and rng.random() < 0.5:
                await self._call("POST", f"{API}/tenants/{tenant}/sync")
            r = await self._call("POST", f"{API}/tenants/{tenant}/release")
            if r.status_code == 200:
                del self._held[tenant]
                self._released[tenant] = _Released(pool, now)
            return
        affinity = float(DEMO_TIMINGS["affinity_timeout_s"])
        for t in [t for t, r in self._released.items() if now - r.at > 4 * affinity]:
            del self._released[t]
        quick = sorted(t for t, r in self._released.items() if now - r.at < 0.7 * affinity)
        late = sorted(t for t, r in self._released.items() if now - r.at > 1.5 * affinity)
        if quick and roll < 0.7:
            tenant = rng.choice(quick)  # back within the affinity timeout: a hit
            pool = self._released.pop(tenant).pool_id
        elif late and roll < 0.8:
            tenant = rng.choice(late)  # back after its reservation was evicted: a miss
            pool = self._released.pop(tenant).pool_id
        else:
            tenant, pool = self._new_tenant(), TRAFFIC_POOLS[self._next_tenant % len(TRAFFIC_POOLS)]
        if pool == "demo-web" and sum(1 for p in self._held.values() if p == pool) >= 3:
            pool = "demo-notes"  # leave room in demo-web; its exhaustion is the burst's job
        r = await self._call("POST", f"{API}/tenants/{tenant}/claim", {"pool_id": pool})
        if r.status_code == 200:
            self._held[tenant] = pool
        if rng.random() < 0.3:
            await self._call("GET", f"{API}/pools/{pool}")
        if rng.random() < 0.2:
            await self._call("GET", f"{API}/containers")

    async def exhaustion_burst(self, pool_id: str) -> None:
        """Claim more containers than the pool may hold at once: the last claims time out (503)."""
        r = await self._call("GET", f"{API}/pools/{pool_id}")
        size = int(r.json().get("max_size", 4)) if r.status_code == 200 else 4
        tenants = [self._new_tenant() for _ in range(size + 1)]
        results = await asyncio.gather(
            *(self._call("POST", f"{API}/tenants/{t}/claim", {"pool_id": pool_id}) for t in tenants)
        )
        for t, res in zip(tenants, results, strict=True):
            if res.status_code == 200:
                await self._call("POST", f"{API}/tenants/{t}/release")
        logger.info("demo: burst on %s: %s", pool_id, [res.status_code for res in results])

    async def failing_syncs(self) -> None:
        for pool in ("demo-offsite", "demo-slow"):
            tenant = self._new_tenant()
            r = await self._call("POST", f"{API}/tenants/{tenant}/claim", {"pool_id": pool})
            if r.status_code != 200:
                continue
            await self._call("POST", f"{API}/tenants/{tenant}/sync")  # 502 network error / 504 timeout
            await self._call("POST", f"{API}/tenants/{tenant}/release")

    async def bad_requests(self) -> None:
        choice = self.rng.randrange(5)
        if choice == 0:
            await self._call("GET", f"{API}/no-such-thing")  # 404, the unmatched path label
        elif choice == 1:
            await self._call("POST", f"{API}/tenants/{self._new_tenant()}/claim", raw=b"{not json")  # 400
        elif choice == 2:
            await self._call("POST", f"{API}/tenants/{self._new_tenant()}/claim", {"pool_id": "no-such-pool"})
        elif choice == 3:
            await self._call("POST", f"{API}/tenants/{self._new_tenant()}/release")  # 404: holds nothing
        else:
            await self._call("PUT", f"{API}/pools")  # 405
