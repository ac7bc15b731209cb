"""A realistic mix of events for benchmarks: the same mix for our design and for the naive baseline."""

from __future__ import annotations

import random
import time
from typing import Any

POOLS = [f"pool-{i}" for i in range(5)]
WORKLOADS = ["echo", "python", "node"]
ROUTES = [
    "/api/v1/pools",
    "/api/v1/pools/{pool_id}",
    "/api/v1/tenants/{tenant_id}/claim",
    "/api/v1/tenants/{tenant_id}/release",
    "/api/v1/tenants/{tenant_id}/sync",
    "/healthz",
    "/api/v1/workloads",
    "/api/v1/containers/{container_id}",
    "<unmatched>",
]

#: (event type, weight): HTTP requests dominate, then claims and releases.
MIX = [
    ("http.request", 40),
    ("container.acquired", 20),
    ("container.released", 15),
    ("container.created", 5),
    ("container.destroyed", 4),
    ("container.wiped", 5),
    ("sync.finished", 5),
    ("pool.state", 4),
    ("sync.state", 2),
]


def fields_for(type_: str, rnd: random.Random) -> dict[str, Any]:
    pool = rnd.choice(POOLS)
    d = rnd.expovariate(2.0)
    if type_ == "http.request":
        return {
            "method": rnd.choice(("GET", "GET", "POST", "DELETE")),
            "path": rnd.choice(ROUTES),
            "status": rnd.choice((200, 200, 200, 201, 404, 500)),
            "duration_s": d / 20,
        }
    if type_ == "container.acquired":
        return {
            "pool_id": pool,
            "status": "success",
            "duration_s": d,
            "affinity": rnd.choice(("hit", "miss")),
        }
    if type_ in ("container.released", "container.destroyed", "container.wiped"):
        return {"pool_id": pool, "status": rnd.choice(("success", "success", "failure")), "duration_s": d}
    if type_ == "container.created":
        return {
            "pool_id": pool,
            "workload_id": rnd.choice(WORKLOADS),
            "status": "success",
            "duration_s": d * 3,
        }
    if type_ == "sync.finished":
        ok = rnd.random() < 0.9
        return {
            "workload_id": rnd.choice(WORKLOADS),
            "direction": rnd.choice(("upload", "download")),
            "mode": "sync",
            "status": "success" if ok else "failure",
            "duration_s": d * 30,
            "bytes": rnd.randrange(1 << 20),
            "files": rnd.randrange(100),
            "error_type": None if ok else "network_error",
        }
    if type_ == "pool.state":
        size = rnd.randrange(1, 20)
        return {
            "pool_id": pool,
            "workload_id": "echo",
            "size": size,
            "available": size // 2,
            "borrowed": size - size // 2,
            "pending": 0,
            "min_size": 1,
            "max_size": 20,
            "target_size": size,
            "affinity_reservations": 1,
        }
    if type_ == "sync.state":
        return {
            "workload_id": rnd.choice(WORKLOADS),
            "running": rnd.randrange(4),
            "queued": rnd.randrange(8),
            "periodic_jobs": 3,
        }
    raise ValueError(type_)


def make_events(n: int, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """``n`` (type, fields) pairs in the mix, deterministic for a seed."""
    rnd = random.Random(seed)
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    return [(t, fields_for(t, rnd)) for t in rnd.choices(types, weights, k=n)]


def enveloped(events: list[tuple[str, dict[str, Any]]], first_seq: int = 1) -> list[dict[str, Any]]:
    """Event maps as they travel: fields plus type, seq and ts."""
    now = time.time()
    return [{**f, "type": t, "seq": first_seq + i, "ts": now} for i, (t, f) in enumerate(events)]
