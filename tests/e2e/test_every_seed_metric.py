"""Every seed metric, end to end: `boilerhouse api` and `boilerhouse aggregator` as separate processes on a real Redis.

The test drives real work through the API (process-runtime containers, real rclone against a local
remote, a WebDAV remote it stops, an immutable directory, an unconfigured remote, a tiny timeout, a bisync
that must resync) and then asserts the exact value of every series of every metric family in the seed's
tables. Counts come from the scenario; histogram buckets and sums are recomputed from the durations the
API published (the events in the stream), so every sample is compared exactly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services import __version__
from services.aggregator.metrics import METRICS, METRICS_BY_NAME, Group, Kind
from services.embedded import free_port, wait_for_port
from shared.events.codec import ENTRY_FIELD, decode_batch
from shared.events.schema import UNMATCHED_PATH
from shared.events.streams import stream_key
from tests.support.expo import Samples, parse
from tests.support.procs import Proc, boilerhouse, wait_http
from tests.support.wait import wait_for

P = "boilerhouse_"
API = "/api/v1"
Labels = frozenset[tuple[str, str]]

#: Every metric family of the seed's tables ("pipeline" metrics are the event pipeline's own).
SEED_FAMILIES = {m.name for m in METRICS if m.group is not Group.PIPELINE}


# ---- the API as a client sees it, with every request tallied by (method, route template, status) ----------


class Api:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(timeout=60)
        self.tally: Counter[tuple[str, str, str]] = Counter()

    def call(
        self,
        method: str,
        template: str,
        status: int,
        *,
        raw_path: str | None = None,
        json: Any = None,
        content: bytes | None = None,
        **params: str,
    ) -> httpx.Response:
        path = raw_path if raw_path is not None else template.format(**params)
        headers = {"content-type": "application/json"} if content is not None else None  # raw JSON bodies
        r = self.http.request(method, self.base + path, json=json, content=content, headers=headers)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        if status >= 400:
            assert r.headers["content-type"] == "application/json" and r.json()["error"], r.text
        self.tally[(method, template, str(status))] += 1
        return r

    def create_pool(self, pool_id: str, workload_id: str, min_size: int, max_size: int, **extra: Any) -> None:
        self.call(
            "POST",
            f"{API}/pools",
            201,
            json={
                "pool_id": pool_id,
                "workload_id": workload_id,
                "min_size": min_size,
                "max_size": max_size,
                **extra,
            },
        )

    def claim(self, tenant: str, pool_id: str, status: int = 200) -> httpx.Response:
        return self.call(
            "POST", API + "/tenants/{tenant_id}/claim", status, json={"pool_id": pool_id}, tenant_id=tenant
        )

    def release(self, tenant: str, status: int = 200) -> httpx.Response:
        return self.call("POST", API + "/tenants/{tenant_id}/release", status, tenant_id=tenant)

    def sync(self, tenant: str, status: int = 200) -> dict[str, Any]:
        body: dict[str, Any] = self.call(
            "POST", API + "/tenants/{tenant_id}/sync", status, tenant_id=tenant
        ).json()
        return body

    def data_dir(self, tenant: str) -> Path:
        r = self.call("GET", API + "/tenants/{tenant_id}", 200, tenant_id=tenant)
        return Path(r.json()["container"]["data_dir"])

    def stats(self, pool_id: str) -> dict[str, int]:
        stats: dict[str, int] = self.call("GET", API + "/pools/{pool_id}", 200, pool_id=pool_id).json()[
            "stats"
        ]
        return stats

    def wait_stats(self, pool_id: str, timeout: float = 20.0, **want: int) -> dict[str, int]:
        return wait_for(
            lambda: self.stats(pool_id),
            f"pool {pool_id} reaches {want}",
            within_s=timeout,
            accept=lambda stats: all(stats[k] == v for k, v in want.items()),
        )

    def containers(self) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = self.call("GET", f"{API}/containers", 200).json()["containers"]
        return body


# ---- exact comparison of whole families ---------------------------------------------------------------


def lbl(**labels: str) -> Labels:
    return frozenset(labels.items())


class Check:
    """Compares every sample of a metric name with an expected {labels: value}; remembers the families."""

    def __init__(self, samples: Samples) -> None:
        self.samples = samples
        self.families: set[str] = set()
        self.failures: list[str] = []

    def family(self, name: str, want: dict[Labels, float]) -> None:
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        self.families.add(base if base in METRICS_BY_NAME else name)
        got = {labels: v for (n, labels), v in self.samples.items() if n == P + name}
        if got != want:
            missing = {dict(k).__repr__(): v for k, v in want.items() if got.get(k) != v}
            extra = {dict(k).__repr__(): v for k, v in got.items() if want.get(k) != v}
            self.failures.append(f"{name}: want {missing} got {extra}")

    def histogram(
        self, name: str, observations: dict[Labels, list[float]], counts: dict[Labels, int]
    ) -> None:
        """Buckets and sums from the observed durations; the number of observations from the scenario."""
        seen = {k: len(v) for k, v in observations.items()}
        if seen != counts:  # (the API's last events may still be on their way to Redis: retried)
            self.families.add(name)
            self.failures.append(f"{name}: the API published {seen} observations, the scenario made {counts}")
            return
        buckets = METRICS_BY_NAME[name].buckets or ()
        want_b: dict[Labels, float] = {}
        want_c: dict[Labels, float] = {}
        want_s: dict[Labels, float] = {}
        for labels, values in observations.items():
            for b in (*buckets, float("inf")):
                le = "+Inf" if b == float("inf") else repr(float(b))
                want_b[labels | {("le", le)}] = float(sum(1 for v in values if v <= b))
            total = 0.0
            for v in values:  # in event order, as the aggregator adds them
                total += v
            want_c[labels], want_s[labels] = float(len(values)), total
        self.family(f"{name}_bucket", want_b)
        self.family(f"{name}_count", want_c)
        self.family(f"{name}_sum", want_s)


def stream_events(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        entries = client.xrange(stream_key(0))
    finally:
        client.close()
    return [ev for _, fields in entries for ev in decode_batch(fields[ENTRY_FIELD]).events]


def observations(events: list[dict[str, Any]], type_: str, *labels: str) -> dict[Labels, list[float]]:
    out: dict[Labels, list[float]] = {}
    for ev in events:
        if ev["type"] == type_:
            key = frozenset((k, str(ev[k])) for k in labels)
            out.setdefault(key, []).append(ev["duration_s"])
    return out


def process_start_time(pid: int) -> float:
    """Unix start time of ``pid``, computed as the publisher computes its own (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    btime = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_bytes().splitlines()
        if line.startswith(b"btime")
    )
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def scrape(url: str) -> Samples:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return parse(r.text)


def converge(url: str, check: Callable[[Samples], Check], timeout: float = 30.0) -> Check:
    """Scrape until every expectation holds (the aggregator catches up asynchronously)."""
    return wait_for(
        lambda: check(scrape(url)),
        "every expectation holds",
        within_s=timeout,
        poll_s=0.25,
        accept=lambda result: not result.failures,
        show=lambda result: "\n  ".join(result.failures),
    )


# ---- fixtures: workloads, remotes, processes ------------------------------------------------------------------


def write_workloads(tmp: Path, dav_port: int) -> Path:
    wdir = tmp / "workloads"
    wdir.mkdir()
    remote = tmp / "remote"
    (tmp / "empty-rclone.conf").write_text("")
    fast = '["--retries", "1", "--low-level-retries", "1"]'
    sleeper = 'command: ["sleep", "infinity"]\n'
    specs = {
        "plain": "",
        "docs": f"  remote: {remote / 'docs'}\n  mode: copy\n  direction: upload\n",
        "dav": f"  remote: \":webdav,url='http://127.0.0.1:{dav_port}/':\"\n  mode: copy\n  direction: upload\n"
        f"  extra_args: {fast}\n",
        "slow": f"  remote: {remote / 'slow'}\n  mode: copy\n  direction: upload\n  timeout: 1ms\n",
        "locked": f"  remote: {remote / 'locked'}\n  mode: copy\n  direction: upload\n  extra_args: {fast}\n",
        "nowhere": f"  remote: nosuchremote:data\n  mode: copy\n  direction: upload\n"
        f"  rclone_config: {tmp / 'empty-rclone.conf'}\n",
        "journal": f"  remote: {remote / 'journal'}\n  mode: bisync\n  period: 1h\n",
    }
    for wid, sync in specs.items():
        (wdir / f"{wid}.yaml").write_text(f"id: {wid}\n{sleeper}" + (f"sync:\n{sync}" if sync else ""))
    return wdir


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody, root included, may create entries in (``chattr +i``): rclone gets EPERM."""
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.fail("chattr (e2fsprogs) is needed for the permission-denied sync")
    path = tmp_path / "remote" / "locked"
    path.mkdir(parents=True)
    made = subprocess.run([chattr, "+i", str(path)], check=False, capture_output=True, text=True)
    assert made.returncode == 0, f"chattr +i {path}: {made.stderr}"
    yield path
    subprocess.run([chattr, "-i", str(path)], check=True)


def test_every_seed_metric_from_real_work(tmp_path: Path, redis_url: str, immutable_dir: Path) -> None:
    if shutil.which("rclone") is None:
        pytest.fail("rclone is not installed (Debian package rclone)")
    dav_port, api_port, metrics_port = free_port(), free_port(), free_port()
    wdir = write_workloads(tmp_path, dav_port)
    dav_root = tmp_path / "dav-root"
    dav_root.mkdir()
    env = {
        "BOILERHOUSE_REDIS_URL": redis_url,
        "BOILERHOUSE_HEARTBEAT_INTERVAL_S": "0.2",
        "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.2",
        "BOILERHOUSE_WORKLOADS_DIR": str(wdir),
        "BOILERHOUSE_DATA_DIR": str(tmp_path / "data"),
        "BOILERHOUSE_AFFINITY_TIMEOUT_S": "3600",
        "BOILERHOUSE_ACQUIRE_TIMEOUT_S": "0.5",
        "BOILERHOUSE_HEALTH_INTERVAL_S": "0.3",
    }
    procs: list[Proc] = []
    api: Api | None = None
    try:
        webdav = Proc(
            ["rclone", "serve", "webdav", str(dav_root), "--addr", f"127.0.0.1:{dav_port}"],
            tmp_path,
            "webdav",
        )
        procs.append(webdav)
        agg = boilerhouse(["aggregator", "--port", str(metrics_port)], tmp_path, "aggregator", env)
        procs.append(agg)
        api_proc = boilerhouse(["api", "--port", str(api_port)], tmp_path, "api", env)
        procs.append(api_proc)
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz", proc=agg)
        wait_http(f"http://127.0.0.1:{api_port}/healthz", proc=api_proc)
        wait_for_port("127.0.0.1", dav_port)
        api = Api(f"http://127.0.0.1:{api_port}")
        api.tally[("GET", "/healthz", "200")] += 1  # wait_http's one answered request
        run_scenario(api, tmp_path, webdav)
        assert api_proc.popen.poll() is None, api_proc.output()[-3000:]

        result = converge(metrics_url, lambda s: expected_while_running(s, api, redis_url, api_proc.pid))
        assert result.families >= SEED_FAMILIES, f"not asserted: {sorted(SEED_FAMILIES - result.families)}"
        running = scrape(metrics_url)

        # A clean stop: source.stopped removes the API's gauges at once; counters never go back, and
        # closing every pool destroys each container it still had.
        assert api_proc.stop() == 0, api_proc.output()[-3000:]
        converge(metrics_url, lambda s: expected_after_stop(s, running))
        assert "Traceback" not in api_proc.output(), api_proc.output()[-5000:]
    finally:
        if api is not None:
            api.http.close()
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                proc.stop()


def run_scenario(api: Api, tmp: Path, webdav: Proc) -> None:
    api.call("GET", f"{API}/workloads", 200)
    # web: two warm containers, reservations that expire after 2.5 s, claims that wait 0.5 s at most
    api.create_pool("web", "plain", 2, 2, affinity_timeout_s=2.5)
    api.create_pool("spare", "plain", 1, 1)
    api.create_pool("grow", "plain", 1, 3)
    api.create_pool("temp", "plain", 1, 1)
    for pool in ("docs", "dav", "slow", "locked", "nowhere", "journal"):
        api.create_pool(pool, pool, 1, 1)
    api.call("GET", f"{API}/pools", 200)

    # ---- affinity: hit, misses, exhaustion, a reservation taken over, one expiring ----------------------
    first = api.claim("alice", "web").json()["container"]["id"]  # miss
    api.release("alice")  # reserved for alice
    assert api.claim("alice", "web").json()["container"]["id"] == first  # hit: the same container
    api.claim("bob", "web")  # miss
    r = api.claim("carol", "web", 503)  # exhausted: timeout after 0.5 s
    assert int(r.headers["retry-after"]) >= 1
    api.release("alice")
    api.release("bob")
    api.claim("dave", "web")  # miss: takes over alice's reservation (evicted)
    api.wait_stats("web", affinity_reservations=0, available=1, pending=0)  # bob's expires: evicted
    api.claim("bob", "web")  # miss: the reservation is gone

    # ---- scaling: a claim on a pool at its target raises the target and a container is added ------------
    api.claim("erin", "grow")
    api.wait_stats("grow", size=2, available=1, borrowed=1, pending=0, target_size=2)

    # ---- health: the container of "spare" dies; the health check fails, it is destroyed and replaced ---------
    (victim,) = [c for c in api.containers() if c["pool_id"] == "spare"]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(
        lambda: [c for c in api.containers() if c["pool_id"] == "spare"],
        "spare's dead container replaced",
        accept=lambda now: len(now) == 1 and now[0]["id"] != victim["id"] and now[0]["state"] == "available",
    )
    api.wait_stats("spare", size=1, available=1, pending=0)

    # ---- sync: success, then each failure class -------------------------------------------------------------
    api.claim("t-docs", "docs")
    (api.data_dir("t-docs") / "report.bin").write_bytes(os.urandom(1000))
    body = api.sync("t-docs")
    assert (body["bytes"], body["files"]) == (1000, 1)
    api.release("t-docs")  # uploads again on release: nothing new, 0 bytes

    api.claim("t-dav", "dav")
    (api.data_dir("t-dav") / "page.bin").write_bytes(os.urandom(500))
    body = api.sync("t-dav")
    assert (body["bytes"], body["files"]) == (500, 1)
    assert webdav.stop() is not None  # the WebDAV server goes away
    assert api.sync("t-dav", 502)["error_type"] == "network_error"
    api.release("t-dav")  # the release's upload fails too: released, status failure

    api.claim("t-slow", "slow")
    assert api.sync("t-slow", 504)["error_type"] == "timeout"
    api.claim("t-locked", "locked")
    (api.data_dir("t-locked") / "x.bin").write_bytes(b"x" * 10)
    assert api.sync("t-locked", 502)["error_type"] == "permission_denied"
    api.claim("t-nowhere", "nowhere")
    assert api.sync("t-nowhere", 502)["error_type"] == "rclone_error"

    # bisync: the tenant's remote already has data; the first sync of an empty container resyncs
    seeded = tmp / "remote" / "journal" / "t-journal"
    seeded.mkdir(parents=True)
    (seeded / "seed.bin").write_bytes(os.urandom(400))
    api.claim("t-journal", "journal")  # downloads on claim: a resync (400 bytes, 1 file)
    journal_dir = api.data_dir("t-journal")
    assert (journal_dir / "seed.bin").stat().st_size == 400
    (journal_dir / "entry.bin").write_bytes(os.urandom(300))
    body = api.sync("t-journal")
    assert (body["bytes"], body["files"], body["resynced"]) == (300, 1, False)

    # ---- 4xx and the rest of the API ---------------------------------------------------------------------------
    api.call("POST", f"{API}/pools", 409, json={"pool_id": "web", "workload_id": "plain"})
    api.call("POST", f"{API}/pools", 404, json={"pool_id": "x", "workload_id": "no-such-workload"})
    api.call("POST", f"{API}/pools", 400, json={"pool_id": "bad id", "workload_id": "plain"})
    api.call("POST", API + "/tenants/{tenant_id}/claim", 400, content=b"{not json", tenant_id="zed")
    api.claim("zed", "no-such-pool", 404)
    api.claim("dave", "web", 409)
    api.call("POST", API + "/tenants/{tenant_id}/sync", 409, tenant_id="dave")  # web has no sync spec
    api.call("GET", API + "/tenants/{tenant_id}", 404, tenant_id="nobody")
    api.release("nobody", 404)
    api.call("GET", UNMATCHED_PATH, 404, raw_path=f"{API}/no-such-route")
    api.call("GET", UNMATCHED_PATH, 404, raw_path="/metrics")  # the aggregator serves metrics, not the API
    api.call("PUT", f"{API}/pools", 405)
    api.call("DELETE", API + "/pools/{pool_id}", 200, pool_id="temp")
    api.call("GET", API + "/pools/{pool_id}", 404, pool_id="temp")


# ---- what the aggregator must say ------------------------------------------------------------------------------

#: Final pool states: size, available, borrowed, pending, min, max, target, affinity reservations.
POOLS = {
    "web": ("plain", 2, 0, 2, 0, 2, 2, 2, 0),
    "spare": ("plain", 1, 1, 0, 0, 1, 1, 1, 0),
    "grow": ("plain", 2, 1, 1, 0, 1, 3, 2, 0),
    "docs": ("docs", 1, 1, 0, 0, 1, 1, 1, 1),
    "dav": ("dav", 1, 1, 0, 0, 1, 1, 1, 1),
    "slow": ("slow", 1, 0, 1, 0, 1, 1, 1, 0),
    "locked": ("locked", 1, 0, 1, 0, 1, 1, 1, 0),
    "nowhere": ("nowhere", 1, 0, 1, 0, 1, 1, 1, 0),
    "journal": ("journal", 1, 0, 1, 0, 1, 1, 1, 0),
}
POOL_GAUGES = (
    "pool_size",
    "pool_available",
    "pool_borrowed",
    "pool_pending",
    "pool_min_size",
    "pool_max_size",
    "pool_target_size",
)
CREATED = {
    "web": 2,
    "spare": 2,
    "grow": 2,
    "temp": 1,
    "docs": 1,
    "dav": 1,
    "slow": 1,
    "locked": 1,
    "nowhere": 1,
    "journal": 1,
}
DESTROYED = {"spare": 1, "temp": 1}
WIPED = {"web": 2}
ACQUIRED = {
    ("web", "success"): 5,
    ("web", "timeout"): 1,
    **{(p, "success"): 1 for p in ("grow", "docs", "dav", "slow", "locked", "nowhere", "journal")},
}
RELEASED = {("web", "success"): 3, ("docs", "success"): 1, ("dav", "failure"): 1}
SYNC_WORKLOADS = ("docs", "dav", "slow", "locked", "nowhere", "journal")
#: (workload, direction, status) -> operations
SYNC_OPS = {
    ("docs", "upload", "success"): 2,
    ("dav", "upload", "success"): 1,
    ("dav", "upload", "failure"): 2,
    ("slow", "upload", "timeout"): 1,
    ("locked", "upload", "failure"): 1,
    ("nowhere", "upload", "failure"): 1,
    ("journal", "bidirectional", "success"): 2,
}
SYNC_MODE = {
    "docs": "copy",
    "dav": "copy",
    "slow": "copy",
    "locked": "copy",
    "nowhere": "copy",
    "journal": "bisync",
}
#: (workload, direction) -> (bytes, files)
SYNC_MOVED = {
    ("docs", "upload"): (1000, 1),
    ("dav", "upload"): (500, 1),
    ("slow", "upload"): (0, 0),
    ("locked", "upload"): (0, 0),
    ("nowhere", "upload"): (0, 0),
    ("journal", "bidirectional"): (700, 2),
}
SYNC_ERRORS = {
    ("dav", "network_error"): 2,
    ("slow", "timeout"): 1,
    ("locked", "permission_denied"): 1,
    ("nowhere", "rclone_error"): 1,
}


def expected_while_running(samples: Samples, api: Api, redis_url: str, api_pid: int) -> Check:
    c = Check(samples)
    # ---- pool gauges: one series per live pool; the deleted pool is gone ----------------------------------------
    for i, name in enumerate(POOL_GAUGES):
        c.family(name, {lbl(pool_id=p, workload_id=v[0]): float(v[1 + i]) for p, v in POOLS.items()})
    c.family("affinity_reservations", {lbl(pool_id=p): float(v[8]) for p, v in POOLS.items()})

    # ---- container lifecycle ---------------------------------------------------------------------------------
    ops = {lbl(pool_id=p, operation="create", status="success"): float(n) for p, n in CREATED.items()}
    ops |= {lbl(pool_id=p, operation="destroy", status="success"): float(n) for p, n in DESTROYED.items()}
    ops |= {lbl(pool_id=p, operation="wipe", status="success"): float(n) for p, n in WIPED.items()}
    c.family("container_operations_total", ops)
    c.family("container_health_check_failures_total", {lbl(pool_id="spare"): 1.0})

    events = stream_events(redis_url)
    workload_of = {p: v[0] for p, v in POOLS.items()} | {"temp": "plain"}
    c.histogram(
        "container_create_duration_seconds",
        observations(events, "container.created", "pool_id", "workload_id"),
        {lbl(pool_id=p, workload_id=workload_of[p]): n for p, n in CREATED.items()},
    )
    c.histogram(
        "container_destroy_duration_seconds",
        observations(events, "container.destroyed", "pool_id"),
        {lbl(pool_id=p): n for p, n in DESTROYED.items()},
    )
    c.histogram(
        "container_wipe_duration_seconds",
        observations(events, "container.wiped", "pool_id"),
        {lbl(pool_id=p): n for p, n in WIPED.items()},
    )
    c.histogram(
        "container_acquire_duration_seconds",
        observations(events, "container.acquired", "pool_id", "status"),
        {lbl(pool_id=p, status=s): n for (p, s), n in ACQUIRED.items()},
    )
    c.histogram(
        "container_release_duration_seconds",
        observations(events, "container.released", "pool_id", "status"),
        {lbl(pool_id=p, status=s): n for (p, s), n in RELEASED.items()},
    )

    # ---- affinity ----------------------------------------------------------------------------------------------
    misses = Counter[str]()
    for (pool, _), n in ACQUIRED.items():
        misses[pool] += n
    misses["web"] -= 1  # alice's re-claim was the one hit
    c.family("affinity_hits_total", {lbl(pool_id="web"): 1.0})
    c.family("affinity_misses_total", {lbl(pool_id=p): float(n) for p, n in misses.items()})
    c.family("affinity_evictions_total", {lbl(pool_id="web"): 2.0})

    # ---- sync --------------------------------------------------------------------------------------------------
    c.family(
        "sync_operations_total",
        {lbl(workload_id=w, direction=d, status=s): float(n) for (w, d, s), n in SYNC_OPS.items()},
    )
    per_dir: Counter[tuple[str, str]] = Counter()
    for (w, d, _), n in SYNC_OPS.items():
        per_dir[(w, d)] += n
    c.histogram(
        "sync_duration_seconds",
        observations(events, "sync.finished", "workload_id", "direction", "mode"),
        {lbl(workload_id=w, direction=d, mode=SYNC_MODE[w]): n for (w, d), n in per_dir.items()},
    )
    c.family(
        "sync_bytes_transferred_total",
        {lbl(workload_id=w, direction=d): float(b) for (w, d), (b, _) in SYNC_MOVED.items()},
    )
    c.family(
        "sync_files_transferred_total",
        {lbl(workload_id=w, direction=d): float(f) for (w, d), (_, f) in SYNC_MOVED.items()},
    )
    c.family(
        "sync_errors_total", {lbl(workload_id=w, error_type=e): float(n) for (w, e), n in SYNC_ERRORS.items()}
    )
    c.family("sync_bisync_resync_total", {lbl(workload_id="journal"): 1.0})
    c.family("sync_concurrent_operations", {lbl(workload_id=w): 0.0 for w in SYNC_WORKLOADS})
    c.family("sync_queue_length", {lbl(workload_id=w): 0.0 for w in SYNC_WORKLOADS})
    c.family("sync_periodic_jobs_active", {lbl(workload_id=w): float(w == "journal") for w in SYNC_WORKLOADS})

    # ---- http: exactly the requests the test made, by route template ---------------------------------------------
    c.family(
        "http_requests_total",
        {lbl(method=m, path=p, status=s): float(n) for (m, p, s), n in api.tally.items()},
    )
    c.histogram(
        "http_request_duration_seconds",
        observations(events, "http.request", "method", "path", "status"),
        {lbl(method=m, path=p, status=s): n for (m, p, s), n in api.tally.items()},
    )

    # ---- system ----------------------------------------------------------------------------------------------
    c.family("info", {lbl(version=__version__): 1.0})
    start = process_start_time(api_pid)
    got = samples.get((P + "start_time_seconds", frozenset()))
    c.families.add("start_time_seconds")
    if got is None or abs(got - start) > 1e-6:
        c.failures.append(f"start_time_seconds: got {got}, want the api's start {start}")

    # ---- the pipeline: one live source, every event folded once, nothing lost, dropped or dead-lettered ---------
    c.family("aggregator_live_sources", {lbl(): 1.0})
    applied = {
        dict(k)["type"]: v for (n, k), v in samples.items() if n == P + "aggregator_events_applied_total"
    }
    for type_ in (
        "container.acquired",
        "container.released",
        "http.request",
        "sync.finished",
        "sync.resynced",
    ):
        want = sum(1 for e in events if e["type"] == type_)
        if applied.get(type_) != want:
            c.failures.append(
                f"aggregator_events_applied_total{{type={type_}}}: {applied.get(type_)} != {want}"
            )
    for empty in (
        "events_dropped_total",
        "events_lost_total",
        "aggregator_dead_letters_total",
        "aggregator_series_overflow_total",
        "aggregator_duplicates_total",
    ):
        c.family(empty, {})
    return c


def expected_after_stop(samples: Samples, running: Samples) -> Check:
    c = Check(samples)
    for name in (
        *POOL_GAUGES,
        "affinity_reservations",
        "sync_concurrent_operations",
        "sync_queue_length",
        "sync_periodic_jobs_active",
        "info",
        "start_time_seconds",
    ):
        c.family(name, {})  # the only source stopped: no gauge values left
    c.family("aggregator_live_sources", {lbl(): 0.0})
    c.family("aggregator_consumer_lag_entries", {lbl(partition="0"): 0.0})
    c.family("aggregator_pending_entries", {lbl(partition="0"): 0.0})
    age = samples.get((P + "aggregator_checkpoint_age_seconds", frozenset({("partition", "0")})))
    c.families.add("aggregator_checkpoint_age_seconds")
    if age is None or not 0 <= age < 30:
        c.failures.append(f"aggregator_checkpoint_age_seconds: {age}")
    age = samples.get((P + "aggregator_newest_event_age_seconds", frozenset()))
    c.families.add("aggregator_newest_event_age_seconds")
    if age is None or not 0 <= age < 60:
        c.failures.append(f"aggregator_newest_event_age_seconds: {age}")
    # counters kept their values; shutdown destroyed each container every pool still had
    destroyed = {
        lbl(pool_id=p, operation="destroy", status="success"): float(DESTROYED.get(p, 0) + v[1])
        for p, v in POOLS.items()
    } | {lbl(pool_id="temp", operation="destroy", status="success"): 1.0}
    ops = {k: v for (n, k), v in running.items() if n == P + "container_operations_total"} | destroyed
    c.family("container_operations_total", ops)
    for name in (
        "affinity_hits_total",
        "affinity_misses_total",
        "affinity_evictions_total",
        "sync_operations_total",
        "sync_errors_total",
        "sync_bytes_transferred_total",
        "http_requests_total",
        "container_acquire_duration_seconds_count",
    ):
        c.family(name, {k: v for (n, k), v in running.items() if n == P + name})
    return c


def test_seed_families_are_the_seed_tables() -> None:
    """The families this test must cover are the seed's tables, no more, no fewer."""
    assert len(SEED_FAMILIES) == 31
    assert {m.kind for m in METRICS if m.name in SEED_FAMILIES} == {Kind.COUNTER, Kind.GAUGE, Kind.HISTOGRAM}
