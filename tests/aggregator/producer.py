"""A real producer process for multi-process tests: ``python -m tests.aggregator.producer --help``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from shared.events.publisher import Publisher


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--events", type=int, required=True, help="container.acquired and http.request each")
    parser.add_argument("--pool-size", type=int, required=True, help="this process's pool.state size")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=1, help="emit from this many threads at once")
    args = parser.parse_args()

    pub = Publisher(args.redis_url, args.service, version="mp-test", heartbeat_interval_s=args.heartbeat)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def snapshot() -> None:
        pub.emit(
            "pool.state",
            {
                "pool_id": "shared",
                "workload_id": "echo",
                "size": args.pool_size,
                "available": args.pool_size,
                "borrowed": 0,
                "pending": 0,
                "min_size": 0,
                "max_size": 100,
                "target_size": args.pool_size,
                "affinity_reservations": 0,
            },
        )

    pub.add_snapshot(snapshot)
    snapshot()

    def work(share: int, offset: int) -> None:
        for i in range(share):
            pub.emit(
                "container.acquired",
                {
                    "pool_id": "shared",
                    "status": "success",
                    "duration_s": 0.5 if (offset + i) % 2 else 1.5,
                    "affinity": "hit" if (offset + i) % 3 == 0 else "miss",
                },
            )
            pub.emit(
                "http.request",
                {"method": "GET", "path": "/api/v1/pools/{pool_id}", "status": 200, "duration_s": 0.02},
            )

    shares = [
        args.events // args.threads + (1 if t < args.events % args.threads else 0)
        for t in range(args.threads)
    ]
    offsets = [sum(shares[:t]) for t in range(args.threads)]
    threads = [threading.Thread(target=work, args=(s, o)) for s, o in zip(shares, offsets, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = pub.flush(30)
    print(f"flushed={ok} sent_events={pub.sent_events} dropped={pub.dropped}", flush=True)
    stop.wait()
    pub.close(10)  # source.stopped: this process's gauges stop contributing at once
    print("closed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
