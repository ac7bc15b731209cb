"""One producer process of the freshness benchmark: emits at a steady rate, records its markers.

``python -m benchmarks.freshness_producer URL RATE SECONDS LINGER MARKER_EVERY OUT SERVICE``
"""

from __future__ import annotations

import json
import os
import sys
import time

from shared.events.publisher import Publisher


def main(argv: list[str]) -> int:
    url, rate, seconds, linger, every, out, service = argv
    rate_n, seconds_f, every_n = int(rate), float(seconds), int(every)
    pub = Publisher(url, service, linger_s=float(linger), heartbeat_interval_s=1.0)
    pid = os.getpid()
    markers: list[tuple[str, float]] = []
    emit, clock, wall = pub.emit, time.monotonic, time.time
    cpu0 = time.process_time()
    start = clock()
    i = 0
    while (elapsed := clock() - start) < seconds_f:
        target = int(rate_n * elapsed)
        while i < target:
            if i % every_n == 0:
                name = f"m{pid}-{i // every_n}"
                markers.append((name, wall()))
                emit("sync.resynced", {"workload_id": name})
            else:
                emit(
                    "container.acquired",
                    {"pool_id": "p", "status": "success", "duration_s": 0.2, "affinity": "hit"},
                )
            i += 1
        time.sleep(0.001)
    if not pub.flush(30):
        return 1
    cpu = time.process_time() - cpu0
    pub.close(5)
    with open(out, "w") as f:
        json.dump({"markers": markers, "events": i, "cpu_s": cpu}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
