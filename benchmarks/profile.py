"""cProfile of the real consumer folding a batched stream from a real Redis: where the time goes."""

from __future__ import annotations

import cProfile
import io
import pstats

import redis

from . import throughput


def run(redis_url: str, n: int = 400_000, top: int = 14) -> str:
    """The ``top`` functions by own time while the Consumer applies ``n`` events, as text."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    try:
        client.flushall()
        throughput.preload_batched(client, "boilerhouse:events:{0}", n)
        profiler = cProfile.Profile()
        profiler.enable()
        throughput.run_ours(client, redis_url, n, "profile")
        profiler.disable()
        client.flushall()
    finally:
        client.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    total = next((line.strip() for line in lines if "function calls" in line), "")
    return "\n".join([total, "", *lines[start:]]).rstrip()
