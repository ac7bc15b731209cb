"""Replay vs the live aggregator: the same stream folded by a live Consumer, by replay, by rebuild.

``python -m benchmarks.replay_bench [--events N] [--redis-url URL]`` starts a private redis-server
unless given one, writes N events (100 per entry, four event mixes, four sources, spread over one
hour of stream ids), then times, in the same run and on the same stream:

- the live aggregator's fold: a real ``Consumer`` (XREADGROUP, decode, fold, checkpoint, XACK);
- ``replay --at`` the end of the stream (XRANGE pages, decode, fold);
- ``aggregator --rebuild`` (fold and write the checkpoint);
- ``replay --from --to --step 15s --openmetrics`` over the hour (fold plus one render per step).

Each fold runs ``--repeat`` times, alternating, and the best and median times are reported. Replay and
the live consumer share the fold (``fold.apply_batch``: decode, validate, dedupe, apply), which is
nearly all of the work; replay is faster by what it does not do (consumer-group bookkeeping, XACK,
checkpoints). Other benchmark drivers call :func:`run` and print :func:`report` or :func:`section`.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from services.aggregator.consumer import Consumer
from services.aggregator.reader import END, StreamReader
from services.aggregator.rebuild import rebuild
from services.aggregator.replay import Replayer, TimestampedOpenMetrics, replay_range
from services.aggregator.settings import AggregatorSettings
from services.embedded import EmbeddedRedis
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import stream_key

logger = logging.getLogger(__name__)

EVENTS_PER_ENTRY = 100
SPAN_S = 3600
BASE_S = 1764201600


@dataclass(frozen=True, slots=True)
class Result:
    """One timed fold of the whole stream."""

    name: str
    events: int
    seconds: float
    median_s: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def median_rate(self) -> float:
        return self.events / self.median_s if self.median_s else 0.0


def _event(rng: random.Random, i: int, seq: int, ts: float) -> dict[str, Any]:
    pool = f"pool-{i % 8}"
    kind = i % 4
    if kind == 0:
        return {
            "type": "container.acquired",
            "seq": seq,
            "ts": ts,
            "pool_id": pool,
            "status": "success" if rng.random() < 0.95 else "timeout",
            "duration_s": rng.expovariate(2.0),
            "affinity": "hit" if rng.random() < 0.5 else "miss",
        }
    if kind == 1:
        avail = rng.randrange(0, 10)
        return {
            "type": "pool.state",
            "seq": seq,
            "ts": ts,
            "pool_id": pool,
            "workload_id": "echo",
            "size": 10,
            "available": avail,
            "borrowed": 10 - avail,
            "pending": 0,
            "min_size": 2,
            "max_size": 10,
            "target_size": 10,
            "affinity_reservations": rng.randrange(0, 3),
        }
    if kind == 2:
        return {
            "type": "http.request",
            "seq": seq,
            "ts": ts,
            "method": "POST",
            "path": f"/api/v1/pools/{{id}}/r{i % 5}",
            "status": 200 if rng.random() < 0.97 else 503,
            "duration_s": rng.expovariate(20.0),
        }
    return {
        "type": "sync.finished",
        "seq": seq,
        "ts": ts,
        "workload_id": f"w{i % 6}",
        "direction": "upload",
        "mode": "sync",
        "status": "success",
        "duration_s": rng.uniform(1, 60),
        "bytes": rng.randrange(1 << 20),
        "files": rng.randrange(100),
    }


def write_stream(client: redis.Redis, events: int, per_entry: int = EVENTS_PER_ENTRY, seed: int = 7) -> int:
    """Write ``events`` events, ``per_entry`` to a stream entry; returns the entries written."""
    rng = random.Random(seed)
    entries = max(1, events // per_entry)
    sources = [f"bench-{k}:host:{1000 + k}:{k:08x}" for k in range(4)]
    seqs = dict.fromkeys(sources, 0)
    pipe = client.pipeline(transaction=False)
    for e in range(entries):
        src = sources[e % len(sources)]
        ms = BASE_S * 1000 + e * SPAN_S * 1000 // entries
        batch = []
        for j in range(per_entry):
            seqs[src] += 1
            batch.append(_event(rng, e * per_entry + j, seqs[src], ms / 1000))
        pipe.xadd(stream_key(0), {ENTRY_FIELD: encode_batch(src, batch)}, id=f"{ms}-{e}")
        if e % 100 == 99:
            pipe.execute()
    pipe.execute()
    return entries


def _live(client: redis.Redis, settings: AggregatorSettings, group: str) -> tuple[float, Consumer]:
    consumer = Consumer(client, settings.with_(group=group))
    t0 = time.perf_counter()
    consumer.setup()
    while consumer.poll_once():
        pass
    consumer.checkpoint_all(force=True)
    return time.perf_counter() - t0, consumer


def _replay(client: redis.Redis) -> tuple[float, Replayer]:
    replayer = Replayer(StreamReader(client))
    t0 = time.perf_counter()
    replayer.advance_to(END)
    return time.perf_counter() - t0, replayer


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _best(xs: list[float]) -> float:
    return min(xs)  # least disturbed by the other tenants of a shared machine (timeit's advice)


def run(
    redis_url: str, events: int = 200_000, per_entry: int = EVENTS_PER_ENTRY, repeat: int = 7
) -> list[Result]:
    """Best and median of ``repeat`` alternating runs of each fold over one stream."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    client.flushall()
    write_stream(client, events, per_entry)
    settings = AggregatorSettings(redis_url=redis_url, block_ms=1)
    live_s, replay_s, rebuild_s = [], [], []
    for i in range(repeat):
        seconds, consumer = _live(client, settings, f"bench-live-{i}")
        live_s.append(seconds)
        seconds, replayer = _replay(client)
        replay_s.append(seconds)
        if replayer.state().counters != consumer.snapshot().counters:
            raise AssertionError("replay and the live fold disagree")
        t0 = time.perf_counter()
        rebuild(client, settings.with_(group=f"bench-rebuild-{i}"), show_progress=False)
        rebuild_s.append(time.perf_counter() - t0)
    label = f"{per_entry} events/entry"
    results = [
        Result(
            f"live Consumer: XREADGROUP, fold, checkpoint, XACK ({label})",
            events,
            _best(live_s),
            _median(live_s),
        ),
        Result(f"replay --at: XRANGE, fold ({label})", events, _best(replay_s), _median(replay_s)),
        Result(
            f"aggregator --rebuild: XRANGE, fold, checkpoint ({label})",
            events,
            _best(rebuild_s),
            _median(rebuild_s),
        ),
    ]
    window = Replayer(StreamReader(client))
    writer = TimestampedOpenMetrics()
    t0 = time.perf_counter()
    steps = replay_range(window, BASE_S * 1000, (BASE_S + SPAN_S) * 1000, 15_000, writer)
    samples = writer.write(io.StringIO())
    elapsed = time.perf_counter() - t0
    results.append(
        Result(
            f"replay --step 15s --openmetrics: {steps} steps, {samples:,} samples ({label})",
            window.events,
            elapsed,
            elapsed,
        )
    )
    client.close()
    return results


def report(results: Sequence[Result]) -> str:
    """A markdown table; "vs live" compares with the live Consumer row of the same stream above it."""
    lines = [
        "| fold of the same stream | events | best s | events/s (best) | vs live | events/s (median) | vs live |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    live = live_median = 0.0
    for r in results:
        if r.name.startswith("live"):
            live, live_median = r.rate, r.median_rate
        lines.append(
            f"| {r.name} | {r.events:,} | {r.seconds:.2f} | {r.rate:,.0f} | "
            f"{r.rate / live if live else 0:.2f}x | {r.median_rate:,.0f} | "
            f"{r.median_rate / live_median if live_median else 0:.2f}x |"
        )
    return "\n".join(lines)


def section(results: Sequence[Result], command: str = "python -m benchmarks.replay_bench") -> str:
    """The "Replay and rebuild" section of docs/performance.md."""
    return "\n".join(
        [
            "## Replay and rebuild",
            "",
            f"`{command}`: for each group of rows, one stream of 200,000 events (the mix of replay_bench.py:",
            "claims, pool snapshots, HTTP requests, syncs; 4 sources; spread over one hour of stream ids), folded",
            "in the same run by the live `Consumer` (XREADGROUP, decode, validate, dedupe, fold, checkpoint,",
            "XACK), by replay (XRANGE pages, the same decode and fold) and by the offline rebuild (replay plus",
            "the checkpoint write). Each fold runs alternately several times; best and median are shown, each",
            "ratio against the live Consumer on the same stream. The last row of each group renders the",
            "exposition at every 15 s step of the hour as well (241 scrapes' worth of timestamped OpenMetrics),",
            "which is a different job from folding and is shown for scale.",
            "",
            report(results),
            "",
            "Replay and the live aggregator share `fold.apply_batch`, which is nearly all of the work, so replay",
            "is faster only by what it does not do: no pending-entries list, no XACK, no checkpoints. The",
            "margin is a few percent, larger with small entries (more per-entry bookkeeping in the consumer);",
            "on this shared 2-core machine single runs vary by ±30 %, hence best-of-N. Reading the stream",
            "(XRANGE of 1,000-entry pages) is 5-10 % of a replay. Tried and not kept: prefetching the next page",
            "in a thread (2-5 %, within the noise) and splitting the sources over two forked processes (each",
            "must still read and decode every entry: at most ~10 %, within the noise, and histogram `_sum`",
            "values would differ from the live fold in the last bits, the float additions being reordered).",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="replay vs live aggregator fold")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--per-entry",
        type=int,
        nargs="+",
        default=[100, 10],
        help="events per stream entry; one stream per value (100 10)",
    )
    parser.add_argument(
        "--repeat", type=int, default=7, help="alternating runs per fold: best and median (7)"
    )
    parser.add_argument("--redis-url", help="use this Redis (it is FLUSHALLed!) instead of a private one")
    parser.add_argument("--section", action="store_true", help="print the docs/performance.md section")
    args = parser.parse_args(argv)
    server = None if args.redis_url else EmbeddedRedis(allow_fake=False).start()
    try:
        url = args.redis_url or server.url  # type: ignore[union-attr]
        results = [r for n in args.per_entry for r in run(url, args.events, n, args.repeat)]
    finally:
        if server is not None:
            server.cleanup()
    print(section(results) if args.section else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
