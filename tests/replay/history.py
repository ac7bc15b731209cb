"""A known event history: pool ``web`` runs out of containers, written with exact stream ids.

``python -m tests.replay.history --redis-url URL [--base UNIX_S]`` loads it into a Redis (used by
docs/debugging.md). Times are offsets in seconds from ``base``; each event's ``ts`` is 10 ms before
its entry's stream id, as a producer's flusher would make it.
"""

from __future__ import annotations

import argparse
from typing import Any

import redis

from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import DEFAULT_PREFIX, stream_key

#: 2025-11-27T00:00:00Z
BASE_S = 1764201600
API = "api:host-a:101:aaaa0001"
SYNC = "sync-worker:host-b:202:bbbb0002"


def pool(seq: int, available: int, borrowed: int) -> dict[str, Any]:
    return {
        "type": "pool.state",
        "seq": seq,
        "pool_id": "web",
        "workload_id": "echo",
        "size": 3,
        "available": available,
        "borrowed": borrowed,
        "pending": 0,
        "min_size": 2,
        "max_size": 3,
        "target_size": 3,
        "affinity_reservations": 0,
    }


def acquired(seq: int, status: str, duration_s: float, affinity: str) -> dict[str, Any]:
    return {
        "type": "container.acquired",
        "seq": seq,
        "pool_id": "web",
        "status": status,
        "duration_s": duration_s,
        "affinity": affinity,
    }


def http(seq: int, status: int, duration_s: float) -> dict[str, Any]:
    return {
        "type": "http.request",
        "seq": seq,
        "method": "POST",
        "path": "/api/v1/tenants/{tenant_id}/claim",
        "status": status,
        "duration_s": duration_s,
    }


def sync_state(seq: int, running: int) -> dict[str, Any]:
    return {
        "type": "sync.state",
        "seq": seq,
        "workload_id": "echo",
        "running": running,
        "queued": 0,
        "periodic_jobs": 1,
    }


UNDECODABLE = b"\xc1 not msgpack"

#: (offset s, source, events) — or (offset s, None, raw payload) for an undecodable entry.
HISTORY: list[tuple[int, str | None, Any]] = [
    (
        0,
        API,
        [
            {
                "type": "source.started",
                "seq": 1,
                "service": "api",
                "version": "1.4.2",
                "host": "host-a",
                "pid": 101,
                "start_time_s": BASE_S - 5.0,
            },
            pool(2, 3, 0),
        ],
    ),
    (
        1,
        SYNC,
        [
            {
                "type": "source.started",
                "seq": 1,
                "service": "sync-worker",
                "version": "1.4.2",
                "host": "host-b",
                "pid": 202,
                "start_time_s": BASE_S - 60.0,
            },
            sync_state(2, 1),
        ],
    ),
    (10, API, [acquired(3, "success", 0.4, "miss"), pool(4, 2, 1), http(5, 200, 0.42)]),
    (20, API, [acquired(6, "success", 0.3, "hit"), pool(7, 1, 2), http(8, 200, 0.31)]),
    (
        25,
        SYNC,
        [
            {
                "type": "sync.finished",
                "seq": 3,
                "workload_id": "echo",
                "direction": "download",
                "mode": "sync",
                "status": "success",
                "duration_s": 2.5,
                "bytes": 1048576,
                "files": 12,
            },
            sync_state(4, 0),
        ],
    ),
    (30, API, [acquired(9, "success", 0.6, "miss"), pool(10, 0, 3), http(11, 200, 0.61)]),
    (45, API, [acquired(12, "timeout", 30.0, "miss"), http(13, 503, 30.01)]),
    (50, API, [{"type": "source.heartbeat", "seq": 14}, pool(15, 0, 3)]),
    (55, API, [acquired(16, "weird", 1.0, "miss")]),
    (60, API, [acquired(17, "timeout", 30.0, "miss"), http(18, 503, 30.02)]),
    (
        70,
        SYNC,
        [
            {
                "type": "sync.finished",
                "seq": 5,
                "workload_id": "echo",
                "direction": "upload",
                "mode": "sync",
                "status": "failure",
                "duration_s": 12.0,
                "bytes": 0,
                "files": 0,
                "error_type": "network_error",
            }
        ],
    ),
    (
        75,
        API,
        [
            {
                "type": "container.released",
                "seq": 19,
                "pool_id": "web",
                "status": "success",
                "duration_s": 1.2,
            },
            pool(20, 1, 2),
        ],
    ),
    (80, None, UNDECODABLE),
    (90, SYNC, [{"type": "source.stopped", "seq": 6}]),
    (100, API, [acquired(21, "success", 0.2, "hit"), pool(22, 0, 3), http(23, 200, 0.21)]),
]


def entry_id(offset_s: int, base_s: int = BASE_S) -> str:
    return f"{(base_s + offset_s) * 1000}-0"


def load(
    client: redis.Redis,
    base_s: int = BASE_S,
    until_s: int | None = None,
    partition: int = 0,
    prefix: str = DEFAULT_PREFIX,
    after_s: int | None = None,
    partitions: dict[str, int] | None = None,
) -> int:
    """XADD the history (entries with ``after_s`` < offset <= ``until_s``); returns the entries written.

    ``partitions`` sends a source's entries to another partition than ``partition``.
    """
    n = 0
    for offset, src, events in HISTORY:
        if until_s is not None and offset > until_s:
            break
        if after_s is not None and offset <= after_s:
            continue
        if src is None:
            payload = events
        else:
            stamped = [{**ev, "ts": base_s + offset - 0.01} for ev in events]
            payload = encode_batch(src, stamped)
        key = stream_key((partitions or {}).get(src or "", partition), prefix)
        client.xadd(key, {ENTRY_FIELD: payload}, id=entry_id(offset, base_s))
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--base", type=int, default=BASE_S, help="unix seconds of offset 0")
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url, protocol=2)
    print(f"{load(client, args.base)} entries written")


if __name__ == "__main__":
    main()
