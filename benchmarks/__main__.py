"""Run every benchmark against a private redis-server and write docs/performance.md: ``make bench``."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from services.embedded import EmbeddedRedis

from . import breakdown, cluster_bench, hotpath, profile, replay_bench, throughput, typed_decode

ROOT = Path(__file__).resolve().parent.parent
TARGET_EMIT = 0.25
TARGET_PRODUCER = 1.0
TARGET_RATIO = 5.0
TARGET_RATE = 250_000


def machine_facts(redis_binary: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = subprocess.run([redis_binary, "--version"], capture_output=True, text=True).stdout.strip()

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": redis_version,
        "libraries": ", ".join(
            f"{d} {version(d)}" for d in ("prometheus_client", "redis", "hiredis", "msgspec", "msgpack")
        ),
    }


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def ns(seconds: float) -> str:
    return f"{seconds * 1e9:,.0f} ns"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


HISTORY_BEGIN = "<!-- history: one row per `make bench`, newest last -->"
HISTORY_END = "<!-- end of history -->"
HISTORY_HEADER = [
    "| date (UTC) | load before | emit idle | emit steady | producer CPU "
    "| ours events/s | naive events/s | ours/naive |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
]
HISTORY_KEEP = 12


def history_rows(previous: str) -> list[str]:
    """The history rows of an earlier docs/performance.md (empty if it has none)."""
    if HISTORY_BEGIN not in previous or HISTORY_END not in previous:
        return []
    block = previous[previous.index(HISTORY_BEGIN) + len(HISTORY_BEGIN) : previous.index(HISTORY_END)]
    return [line for line in block.strip().splitlines()[2:] if line.startswith("| ")]


def history_row(
    facts: dict[str, str], load_before: str, hp: hotpath.HotPathResult, tp: throughput.ThroughputResult
) -> str:
    return (
        f"| {facts['date'].removesuffix(' UTC')} | {load_before.split(maxsplit=1)[0]} "
        f"| {hp.emit_idle_thread_cpu / hp.counter_inc:.2f}x | {hp.emit_ratio:.2f}x "
        f"| {hp.producer_ratio:.2f}x "
        f"| {tp.best_ours.rate:,.0f} | {tp.best_naive.rate:,.0f} | {tp.ratio:.1f}x |"
    )


def render(
    facts: dict[str, str],
    loads: tuple[str, str],
    hp: hotpath.HotPathResult,
    tp: throughput.ThroughputResult,
    bd: breakdown.Breakdown,
    typed: float,
    prof: str,
    args: argparse.Namespace,
    history: list[str] | None = None,
) -> str:
    ours, naive = tp.best_ours, tp.best_naive
    rows = [*(history or []), history_row(facts, loads[0], hp, tp)][-HISTORY_KEEP:]
    flusher = hp.producer_cpu_per_event - hp.emit_thread_cpu
    lines = [
        "# Performance",
        "",
        "<!-- Written by `make bench` (`python -m benchmarks`); "
        "the analysis text is in benchmarks/__main__.py. -->",
        "",
        f"Measured {facts['date']} with `{args.command}`.",
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in facts.items() if k != "date"),
        f"| load average (1/5/15 min) before / after | {loads[0]} / {loads[1]} |",
        "",
        "The machine is a shared 2-core VM (other test suites ran at the same time), so every figure is",
        f"the **best of {hp.reps} repetitions** (throughput: best of {len(tp.ours)}), and every ratio is",
        "taken against a baseline measured in the same run.",
        "",
        "## Hot path: `emit()` against prometheus_client",
        "",
        f"{hp.n:,} calls per repetition, same label values (`pool_id`, `status`). Times are CPU time of the",
        "calling thread per call (`time.thread_time`), including building the call's arguments (for",
        "`emit()`, the fields dict).",
        "",
        "| operation | per call | ratio to `Counter.labels().inc()` | target |",
        "| --- | ---: | ---: | --- |",
        f"| empty loop iteration | {ns(hp.loop)} | {hp.loop / hp.counter_inc:.2f}x | |",
        f"| `Counter.labels(a, b).inc()` | {ns(hp.counter_inc)} | 1.00x | baseline |",
        f"| `Counter` child cached, `.inc()` | {ns(hp.counter_child_inc)} | "
        f"{hp.counter_child_inc / hp.counter_inc:.2f}x | |",
        f"| `Histogram.labels(a, b).observe(v)` | {ns(hp.histogram_observe)} | "
        f"{hp.histogram_observe / hp.counter_inc:.2f}x | |",
        f"| `emit()`, flusher idle (chunks of 2,000, flushed in between) | {ns(hp.emit_idle_thread_cpu)} | "
        f"{hp.emit_idle_thread_cpu / hp.counter_inc:.2f}x | ≤ {TARGET_EMIT}x: "
        f"{verdict(hp.emit_idle_thread_cpu / hp.counter_inc <= TARGET_EMIT)} |",
        "| `emit()`, steady state: flusher running, 500 events then a 1 ms pause "
        f"| {ns(hp.emit_thread_cpu)} | "
        f"{hp.emit_ratio:.2f}x | ≤ {TARGET_EMIT}x: {verdict(hp.emit_ratio <= TARGET_EMIT)} |",
        f"| `emit()` wall time, steady state | {ns(hp.emit_wall)} | {hp.emit_wall / hp.counter_inc:.2f}x | |",
        f"| **producer CPU per event**, steady state: emit + encode + send to Redis, amortised "
        f"(`time.process_time` until Redis has every event) | {ns(hp.producer_cpu_per_event)} | "
        f"{hp.producer_ratio:.2f}x | ≤ {TARGET_PRODUCER}x: {verdict(hp.producer_ratio <= TARGET_PRODUCER)} |",
        f"| of which the flusher thread (drain, seq, encode, XADD) | {ns(flusher)} | "
        f"{flusher / hp.counter_inc:.2f}x | |",
        f"| of which `encode_batch` alone (msgspec) | {ns(bd.encode)} "
        f"| {bd.encode / hp.counter_inc:.2f}x | |",
        f"| `emit()`, burst: {hp.n:,} back to back, a backlog builds | {ns(hp.burst_emit_thread_cpu)} | "
        f"{hp.burst_emit_thread_cpu / hp.counter_inc:.2f}x | |",
        f"| producer CPU per event, burst | {ns(hp.burst_producer_cpu_per_event)} | "
        f"{hp.burst_producer_cpu_per_event / hp.counter_inc:.2f}x | |",
        "",
        f"Events per XADD entry (steady state): {hp.events_per_entry:,.0f}; nothing was dropped. In the",
        "burst, the emitting thread outruns the flusher and a backlog of up to the whole burst waits in the",
        "buffer; the garbage collector's passes over those live dicts are charged to whichever thread",
        "allocates, which is why the burst costs more per event than the steady state.",
        "",
        "## Aggregator throughput from a real Redis stream",
        "",
        "*Ours*: events batched 500 per stream entry by 8 sources (as the Publisher writes them),",
        "consumed by the real `Consumer`: XREADGROUP, decode, validate, dedupe, fold into plain-data",
        "state, checkpoint, XACK. *Naive*: one event per stream entry, XREADGROUP 1000 entries at a",
        "time, each event decoded (same msgspec decoder) and applied to prometheus_client",
        "`Counter`/`Histogram`/`Gauge` objects",
        "defined from the same metric table, XACK per read; no validation or dedupe. Same event mix",
        "(benchmarks/workload.py: 40 % HTTP requests, 20 % claims, 15 % releases, the rest container,",
        "sync and pool events), same private redis-server. Wall-clock rate from the first read until every",
        "event is applied (and, for ours, checkpointed).",
        "",
        "| design | events | best rate | all runs (events/s) | CPU per event (best run) |",
        "| --- | ---: | ---: | --- | ---: |",
        f"| ours | {ours.events:,} | **{ours.rate:,.0f}/s** | {', '.join(f'{r.rate:,.0f}' for r in tp.ours)} "
        f"| {ns(ours.cpu_s / ours.events)} |",
        f"| naive | {naive.events:,} | {naive.rate:,.0f}/s | {', '.join(f'{r.rate:,.0f}' for r in tp.naive)} "
        f"| {ns(naive.cpu_s / naive.events)} |",
        "",
        f"- ours ≥ {TARGET_RATE:,} events/s: {verdict(ours.rate >= TARGET_RATE)} ({ours.rate:,.0f}/s)",
        f"- ours ≥ {TARGET_RATIO:g}x the naive design: {verdict(tp.ratio >= TARGET_RATIO)} ({tp.ratio:.1f}x "
        f"on wall-clock rate; {(naive.cpu_s / naive.events) / (ours.cpu_s / ours.events):.1f}x "
        "on CPU per event)",
        "",
        "## Where the aggregator's time goes",
        "",
        "Per event, measured in-process stage by stage on the same mix (no Redis; best of 5):",
        "",
        "| stage | per event |",
        "| --- | ---: |",
        f"| decode (`decode_batch`: msgspec msgpack → dicts) | {ns(bd.decode)} |",
        f"| validate (generated fast-path validators) | {ns(bd.validate)} |",
        f"| handlers (fold into state) | {ns(bd.handlers)} |",
        f"| `apply_batch` (validate + dedupe + handlers + bookkeeping) | {ns(bd.apply_batch)} |",
        f"| **decode + apply_batch** | **{ns(bd.total)}** (≈ {1 / bd.total:,.0f} events/s on one core) |",
        f"| *experiment*: decode **and** validate into typed msgspec Structs (benchmarks/typed_decode.py) "
        f"| {ns(typed)} (vs {ns(bd.decode + bd.validate)} for decode + validate now) |",
        "",
        f"cProfile of the real consumer applying {args.profile_events:,} batched events from Redis",
        "(profiling inflates small Python functions more than C calls; use it for proportions):",
        "",
        "```",
        prof,
        "```",
        "",
        "## Run to run",
        "",
        "The key ratios of the last runs on this kind of machine (targets: emit ≤ 0.25x, producer CPU",
        "≤ 1.0x, ours ≥ 250,000 events/s and ≥ 5x naive). The spread is the noise of a shared 2-core VM;",
        "read a single run with it in mind.",
        "",
        HISTORY_BEGIN,
        *HISTORY_HEADER,
        *rows,
        HISTORY_END,
        "",
        ANALYSIS,
    ]
    return "\n".join(lines) + "\n"


ANALYSIS = """\
## Analysis

**Producer.** `emit()` appends `(type, time.time(), fields)` to a deque after one bound check; no
lock, no encoding, no I/O. Its cost is CPython's floor for a Python-level method call with a dict
argument: the call (~60 ns), building the 4-entry fields dict (~90 ns), `time.time()` (~45 ns), the
tuple and the append. prometheus_client 0.26's `Counter.labels(a, b).inc()` is ~1 µs on this machine
(faster than the 2–3 µs noted in DESIGN.md), so the 0.25x target means ≈ 250 ns per `emit()` *including
the caller's dict*. Uncontended, `emit()` is close to that floor; while the flusher thread runs at the
same time, the GIL hand-offs between the two threads add CPU to the emitting thread as well.

The flusher's share (drain the deque, assign `seq`, add `type`/`seq`/`ts` to each dict, encode, XADD)
is per event in Python; encoding was cut ~2.5x by moving the codec from msgpack-python to msgspec
(identical bytes, tested against the worked example in docs/events.md). What remains is the per-event
Python in `Publisher._drain_into_pending` (publisher.py, owned by the reliability work), about as much
as `emit()` itself. Ways to go further, not done here: let the flusher build event maps lazily in
the encoder (a msgspec `enc_hook` or a Struct per buffered tuple), or drop the per-event `time.time()`
in favour of one timestamp per drain (costs timestamp precision up to the flush interval).

**Aggregator.** Batching makes Redis nearly free per event (one XREADGROUP reply carries 100 000
events; entries are parsed by hiredis). What is left is Python per event: decode to dicts, validate
and fold. Three changes, measured with this benchmark:

1. *Codec*: msgspec instead of msgpack-python: decode ~1.7x faster, encode ~2.5x.
2. *Validation*: one generated function per event type checks the envelope and every field inline
   (no call per field, `ev[...]` instead of `.get`, a nil value fails the type test), and remembers
   identifiers and route templates already validated, so regular expressions run once per distinct
   label value. The readable per-field checks run only to explain a rejected event; a test asserts
   both give the same verdict on every case. Validation went from the largest stage (~60 % of the
   profile) to about a quarter of the per-event cost.
3. *Fold*: per-type applied counts, seq-gap and duplicate counts are accumulated per batch and added
   once; the two hottest handlers (HTTP requests, claims) update their histogram and counter inline;
   counters use one dict lookup on the common path.

Before these changes the same benchmark gave ~220 000 events/s, 2.7x the naive design (whose events
were then decoded with msgpack-python; they now use the same msgspec decoder as ours). The naive
design spends most of its time in prometheus_client's `labels()` (a lock and a dict lookup per
call, several calls per event) and in Redis handling one entry per event; ours spends it in msgspec
decode and the handlers.

Remaining headroom, measured but not taken: decoding into typed msgspec Structs (a tagged union per
event type, constraints generated from the schema; benchmarks/typed_decode.py) validates while
decoding. The experiment row above compares it with decode + validate as they are now: msgspec checks
`pattern` constraints with Python's `re` and builds Struct objects, so the saving is modest, and taking
it means rewriting every handler (and replay, which reads the event dicts) for attribute access. The
handlers themselves (dict lookups keyed by label tuples, `bisect` for the bucket) are now the largest
stage and are close to what CPython does for a few dict operations. The consumer could also prefetch
the next XREADGROUP while folding (consumer.py), hiding the time spent waiting for Redis — the gap
between wall-clock and CPU time in the throughput table, which on this shared machine also includes
waiting for a core.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (not recorded)")
    parser.add_argument("--reps", type=int, default=5, help="hot-path repetitions (default 5)")
    parser.add_argument("--throughput-reps", type=int, default=5, help="throughput repetitions (default 5)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument(
        "--no-write", action="store_true", help="print only; do not write docs/performance.md"
    )
    args = parser.parse_args(argv)
    args.command = "make bench" if not args.quick else "python -m benchmarks --quick"
    binary = shutil.which("redis-server")
    if binary is None:
        print("benchmarks need Debian's redis-server (make test installs it)", file=sys.stderr)
        return 2
    n_emit, n_ours, n_naive, args.profile_events = (
        (20_000, 50_000, 20_000, 50_000) if args.quick else (200_000, 1_000_000, 200_000, 400_000)
    )
    if args.quick:
        args.reps, args.throughput_reps = 2, 1
    before = load()
    facts = machine_facts(binary)
    with EmbeddedRedis(binary=binary, allow_fake=False) as server:
        print(f"redis-server on {server.url}; hot path ({n_emit:,} calls x {args.reps}) ...", flush=True)
        hp = hotpath.run(server.url, n_emit, args.reps)
        print(
            f"  Counter.labels().inc() {ns(hp.counter_inc)}, emit() {ns(hp.emit_thread_cpu)} "
            f"({hp.emit_ratio:.2f}x), idle {ns(hp.emit_idle_thread_cpu)}, producer CPU/event "
            f"{ns(hp.producer_cpu_per_event)} ({hp.producer_ratio:.2f}x)",
            flush=True,
        )
        print(
            f"aggregator throughput ({n_ours:,} vs {n_naive:,} events x {args.throughput_reps}) ...",
            flush=True,
        )
        tp = throughput.run(server.url, n_ours, n_naive, args.throughput_reps)
        print(
            f"  ours {tp.best_ours.rate:,.0f}/s, naive {tp.best_naive.rate:,.0f}/s, {tp.ratio:.1f}x",
            flush=True,
        )
        print("breakdown and profile ...", flush=True)
        bd = breakdown.run(min(n_ours, 200_000))
        typed = typed_decode.run(min(n_ours, 200_000))
        prof = profile.run(server.url, args.profile_events)
        print("replay and rebuild against the live consumer ...", flush=True)
        replay_events, replay_reps = (20_000, 2) if args.quick else (200_000, 7)
        replay = [
            r
            for per_entry in (100, 10)
            for r in replay_bench.run(server.url, replay_events, per_entry, replay_reps)
        ]
        print("aggregator shards on a Redis Cluster against a single Redis ...", flush=True)
        per_partition, rounds = (2_000, 1) if args.quick else (100_000, 3)
        clustered = cluster_bench.run(server.url, per_partition, rounds, pipelines=20 if args.quick else 300)
    output = Path(args.output)
    previous = output.read_text() if output.exists() else ""
    text = render(facts, (before, load()), hp, tp, bd, typed, prof, args, history_rows(previous))
    text += "\n" + replay_bench.section(replay, args.command) + "\n"
    text += "\n" + cluster_bench.section(clustered, args.command) + "\n"
    if args.no_write or args.quick:
        print(text)
    else:
        output.write_text(text)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
