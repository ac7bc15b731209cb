"""One producer process of the end-to-end benchmark: ``N`` claims, in steady chunks, then flushed.

``python -m benchmarks.e2e_producer URL N FORM OUT`` (FORM: ``dict`` or ``declared``). Writes its CPU
time from the first emit until Redis has every event (the process's startup is not counted).
"""

from __future__ import annotations

import json
import sys
import time

from shared.events.publisher import Publisher

POOLS = [f"pool-{i}" for i in range(5)]
CHUNK = 500


def main(argv: list[str]) -> int:
    url, n, form, out = argv
    total = int(n)
    pub = Publisher(url, "e2e", buffer_size=total + 10_000, heartbeat_interval_s=3600)
    pub.flush(10)
    acquired = pub.declare("container.acquired", "pool_id", "status", "duration_s", "affinity")
    emit = pub.emit
    cpu0 = time.process_time()
    for start in range(0, total, CHUNK):
        if form == "declared":
            for i in range(start, min(total, start + CHUNK)):
                acquired(POOLS[i % 5], "success", (i % 37) / 10, "hit" if i % 3 else "miss")
        else:
            for i in range(start, min(total, start + CHUNK)):
                emit(
                    "container.acquired",
                    {
                        "pool_id": POOLS[i % 5],
                        "status": "success",
                        "duration_s": (i % 37) / 10,
                        "affinity": "hit" if i % 3 else "miss",
                    },
                )
        time.sleep(0.001)
    if not pub.flush(120):
        return 1
    cpu = time.process_time() - cpu0
    pub.close(5)
    with open(out, "w") as f:
        json.dump({"cpu_s": cpu, "events": total}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
