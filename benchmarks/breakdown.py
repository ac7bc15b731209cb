"""Where the aggregator's time goes, per event, measured in-process stage by stage (no Redis)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.aggregator.fold import HANDLERS, State, apply_batch
from shared.events.codec import FAST_VALIDATORS, decode_batch, encode_batch

from .throughput import BATCH, SOURCES
from .workload import enveloped, make_events


@dataclass
class Breakdown:
    """Seconds per event for each stage (best of the repetitions)."""

    encode: float
    decode: float
    validate: float
    handlers: float
    apply_batch: float  # validate + dedupe + handlers + bookkeeping

    @property
    def total(self) -> float:
        return self.decode + self.apply_batch


def run(n: int = 200_000, reps: int = 5) -> Breakdown:
    per_src = n // SOURCES
    chunks = []
    for i in range(SOURCES):
        src = f"bench-{i}:host:{1000 + i}:cafe"
        events = enveloped(make_events(per_src, seed=i))
        for ev in events:
            del ev["seq"]  # version 2 batches, as the Publisher writes them: numbered by the header
        chunks += [(src, k + 1, events[k : k + BATCH]) for k in range(0, per_src, BATCH)]
    total = per_src * SOURCES
    best = {k: float("inf") for k in ("encode", "decode", "validate", "handlers", "apply")}
    clock = time.process_time
    for _ in range(reps):
        te = clock()
        payloads = [encode_batch(src, evs, first) for src, first, evs in chunks]
        t0 = clock()
        best["encode"] = min(best["encode"], (t0 - te) / total)
        for p in payloads:  # decoded and dropped, as the consumer does
            decode_batch(p)
        decode_s = clock() - t0
        batches = [decode_batch(p) for p in payloads]  # kept for the next stages (not timed)
        t1 = clock()
        for b in batches:
            for ev in b.events:
                FAST_VALIDATORS[ev["type"]](ev)
        t2 = clock()
        st = State()
        for b in batches:
            src = b.src
            for ev in b.events:
                HANDLERS[ev["type"]](st, src, ev)
        t3 = clock()
        st = State()
        for b in batches:
            apply_batch(st, b, 1.7e9)
        t4 = clock()
        for key, dt in (
            ("decode", decode_s),
            ("validate", t2 - t1),
            ("handlers", t3 - t2),
            ("apply", t4 - t3),
        ):
            best[key] = min(best[key], dt / total)
    return Breakdown(best["encode"], best["decode"], best["validate"], best["handlers"], best["apply"])
