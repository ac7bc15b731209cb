"""A producer process for the reliability tests: emits a seeded, deterministic workload through Publisher.

Run ``python -m tests.reliability.producer --redis-url URL --events N --seed S --report out.json``.
Every event type of the catalogue occurs (snapshots, removals, drops, heartbeats, a clean stop). The
report (JSON) lists the sources and how many events of each type were emitted, so tests can check
the aggregator's totals against what was really sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.events.publisher import Publisher

logger = logging.getLogger(__name__)

POOLS = [f"pool-{i}" for i in range(6)]
WORKLOADS = ["echo", "python", "node"]
PATHS = ["/api/v1/pools", "/api/v1/pools/{pool_id}", "/api/v1/tenants/{tenant_id}/claim", "<unmatched>"]
STATUSES = ["success", "success", "success", "failure", "timeout"]
OP_STATUSES = ["success", "success", "failure"]

#: (type, weight) of the steady-state mix; lifecycle events are added around it.
MIX: list[tuple[str, int]] = [
    ("container.acquired", 20),
    ("container.released", 15),
    ("container.created", 6),
    ("container.destroyed", 5),
    ("container.wiped", 5),
    ("container.health_check_failed", 2),
    ("affinity.evicted", 2),
    ("sync.finished", 10),
    ("sync.resynced", 1),
    ("http.request", 25),
    ("pool.state", 5),
    ("sync.state", 3),
    ("pool.removed", 1),
    ("source.heartbeat", 1),
    ("events.dropped", 1),
]

Step = tuple[int, str, dict[str, Any]]


def _duration(rng: random.Random, scale: float) -> float:
    return round(rng.expovariate(1.0 / scale), 6)


def fields_for(type_: str, rng: random.Random) -> dict[str, Any]:
    pool, workload = rng.choice(POOLS), rng.choice(WORKLOADS)
    if type_ == "container.acquired":
        return {
            "pool_id": pool,
            "status": rng.choice(STATUSES),
            "duration_s": _duration(rng, 2.0),
            "affinity": rng.choice(["hit", "miss"]),
        }
    if type_ == "container.released":
        return {"pool_id": pool, "status": rng.choice(STATUSES), "duration_s": _duration(rng, 1.5)}
    if type_ == "container.created":
        return {
            "pool_id": pool,
            "workload_id": workload,
            "status": rng.choice(OP_STATUSES),
            "duration_s": _duration(rng, 8.0),
        }
    if type_ in ("container.destroyed", "container.wiped"):
        return {"pool_id": pool, "status": rng.choice(OP_STATUSES), "duration_s": _duration(rng, 1.0)}
    if type_ in ("container.health_check_failed", "affinity.evicted"):
        return {"pool_id": pool}
    if type_ == "sync.finished":
        status = rng.choice(STATUSES)
        error = (
            None
            if status == "success"
            else rng.choice(["rclone_error", "timeout", "network_error", "permission_denied"])
        )
        return {
            "workload_id": workload,
            "direction": rng.choice(["upload", "download", "bidirectional"]),
            "mode": rng.choice(["sync", "bisync", "copy"]),
            "status": status,
            "duration_s": _duration(rng, 40.0),
            "bytes": rng.randrange(0, 10**9),
            "files": rng.randrange(0, 5000),
            "error_type": error,
        }
    if type_ == "sync.resynced":
        return {"workload_id": workload}
    if type_ == "http.request":
        return {
            "method": rng.choice(["GET", "POST", "DELETE"]),
            "path": rng.choice(PATHS),
            "status": rng.choice([200, 200, 201, 404, 500]),
            "duration_s": _duration(rng, 0.05),
        }
    if type_ == "pool.state":
        size = rng.randrange(0, 50)
        borrowed = rng.randrange(0, size + 1)
        return {
            "pool_id": pool,
            "workload_id": workload,
            "size": size,
            "available": size - borrowed,
            "borrowed": borrowed,
            "pending": rng.randrange(0, 5),
            "min_size": 2,
            "max_size": 50,
            "target_size": rng.randrange(2, 51),
            "affinity_reservations": rng.randrange(0, 5),
        }
    if type_ == "sync.state":
        return {
            "workload_id": workload,
            "running": rng.randrange(0, 4),
            "queued": rng.randrange(0, 10),
            "periodic_jobs": rng.randrange(0, 3),
        }
    if type_ == "pool.removed":
        return {"pool_id": pool, "workload_id": workload}
    if type_ == "events.dropped":
        return {"count": rng.randrange(1, 6)}
    if type_ == "source.heartbeat":
        return {}
    raise ValueError(f"no generator for {type_}")


def workload(seed: int, events: int, sources: int, stop_first_at: float = 0.6) -> Iterator[Step]:
    """The deterministic event sequence: (source index, type, fields); ``source.stopped`` closes one.

    Source 0 stops cleanly after ``stop_first_at`` of the events (its gauges must disappear).
    """
    rng = random.Random(seed)
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    live = list(range(sources))
    stop_at = int(events * stop_first_at) if sources > 1 else -1
    for i in range(events):
        if i == stop_at:
            live.remove(0)
            yield 0, "source.stopped", {}
            continue
        type_ = rng.choices(types, weights)[0]
        yield rng.choice(live), type_, fields_for(type_, rng)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sources", type=int, default=3)
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--buffer-size", type=int, default=100_000)
    p.add_argument("--spool-dir")
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--wait-replicas", type=int, default=0, help="WAIT for this many replicas per batch")
    p.add_argument("--wait-timeout-ms", type=int, default=100)
    p.add_argument("--src", action="append", default=[], help="source ids to use, in order (default: random)")
    p.add_argument("--service", default="torture")
    p.add_argument("--close-all", action="store_true", help="close every source at the end (source.stopped)")
    p.add_argument("--close-timeout", type=float, default=30.0)
    p.add_argument("--report", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    pubs = [
        Publisher(
            args.redis_url,
            f"{args.service}{i}",
            version=f"1.{i}",
            batch_size=args.batch_size,
            buffer_size=args.buffer_size,
            heartbeat_interval_s=10**6,
            flush_interval_s=0.02,
            linger_s=0.02,  # entries of ~20 ms of events each, as this workload was tuned with
            spool_dir=args.spool_dir,
            partitions=args.partitions,
            wait_replicas=args.wait_replicas,
            wait_timeout_ms=args.wait_timeout_ms,
            src=args.src[i] if i < len(args.src) else None,
        )
        for i in range(args.sources)
    ]
    emitted: Counter[str] = Counter({"source.started": len(pubs)})
    closed: set[int] = set()
    start = time.monotonic()
    for n, (i, type_, fields) in enumerate(workload(args.seed, args.events, args.sources)):
        if args.rate and n % 100 == 0:
            ahead = n / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if type_ == "source.stopped":
            pubs[i].close(args.close_timeout)
            closed.add(i)
        else:
            pubs[i].emit(type_, fields)
        emitted[type_] += 1
    for i, pub in enumerate(pubs):
        if args.close_all and i not in closed:
            pub.close(args.close_timeout)
            closed.add(i)
            emitted["source.stopped"] += 1
        elif i not in closed:
            pub.flush(args.close_timeout)
    report = {
        "srcs": [pub.src for pub in pubs],
        "partitions": [pub.partition for pub in pubs],
        "emitted": dict(emitted),
        "total": sum(emitted.values()),
        "dropped": sum(pub.dropped for pub in pubs),
        "sent_events": sum(pub.sent_events for pub in pubs),
        "sent_spooled_entries": sum(pub.sent_spooled_entries for pub in pubs),
        "unsent": sum(pub.buffered() for pub in pubs if pubs.index(pub) not in closed),
        "seconds": round(time.monotonic() - start, 3),
    }
    Path(args.report).write_text(json.dumps(report, indent=1))
    logger.info("producer done: %s", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
