"""Runs one conformance case: fresh Redis data, a real aggregator process, a driver, then exact /metrics checks."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import redis

from services.embedded import free_port
from shared.events.codec import EventDecodeError, decode_batch, validate_event
from shared.events.streams import partition_of, stream_key
from tests.conformance.cases import HEALTH_METRICS, REPO, Case, Expectation, SampleKey
from tests.conformance.drivers import Driver
from tests.support.expo import Samples, parse
from tests.support.procs import Proc, boilerhouse, wait_http

GROUP = "aggregator"
#: Fast checkpoints (pending reaches 0 soon after a read); liveness as long as a case does not say otherwise.
BASE_ENV = {
    "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.05",
    "BOILERHOUSE_SOURCE_TTL_S": "30",
    "BOILERHOUSE_SOURCE_FORGET_S": "86400",
    "PYTHONPATH": str(REPO),
}
#: After the aggregator has caught up, an expectation may take this long to show (scrape-time state).
SETTLE_S = 2.0


class ConformanceFailure(AssertionError):
    """The aggregator's exposition (or the stream a driver wrote) is not what the case says."""


def run_case(case: Case, driver: Driver, redis_url: str, workdir: Path) -> None:
    """Flush Redis, start an aggregator, run the driver, check expectations; raise ConformanceFailure."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    client.flushall()
    port = free_port()
    env = {**BASE_ENV, "BOILERHOUSE_PARTITIONS": str(case.partitions), **case.aggregator_env}
    agg = boilerhouse(
        ["aggregator", "--redis-url", redis_url, "--port", str(port)],
        workdir,
        f"aggregator-{driver.name}",
        env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/readyz", timeout=30, proc=agg)
        driver.run(case, redis_url, workdir)
        wait_caught_up(client, case.partitions, agg)
        problems = check_stream(client, case) if case.kind == "emit" else []
        passed_at = time.monotonic()
        problems += wait_expectation(url, case.expect, agg)
        if problems:
            raise ConformanceFailure(_report(case, driver, "expect", problems))
        for after_s, expectation in case.later:
            time.sleep(max(0.0, passed_at + after_s - time.monotonic()))
            problems = wait_expectation(url, expectation, agg)
            if problems:
                raise ConformanceFailure(_report(case, driver, f"later (after {after_s} s)", problems))
    finally:
        agg.stop()
        client.close()


def _report(case: Case, driver: Driver, phase: str, problems: list[str]) -> str:
    head = f"case {case.name} ({case.path.relative_to(REPO)}), driver {driver.name}, {phase}:"
    return "\n  ".join([head, *problems[:40]])


def wait_caught_up(client: redis.Redis, partitions: int, agg: Proc, timeout: float = 30.0) -> None:
    """Until the group has been delivered every stream's last entry and acknowledged everything."""
    deadline = time.monotonic() + timeout
    state: Any = None
    while time.monotonic() < deadline:
        if agg.popen.poll() is not None:
            raise ConformanceFailure(
                f"aggregator exited with {agg.popen.returncode}:\n{agg.output()[-3000:]}"
            )
        state = []
        for p in range(partitions):
            key = stream_key(p)
            if not client.exists(key):
                continue
            last = client.xinfo_stream(key)["last-generated-id"]
            groups = {g["name"]: g for g in client.xinfo_groups(key)}
            group = groups.get(GROUP.encode()) or groups.get(GROUP)
            state.append((key, last, group and group["last-delivered-id"], group and group["pending"]))
        if all(last == delivered and pending == 0 for _, last, delivered, pending in state):
            return
        time.sleep(0.02)
    raise ConformanceFailure(f"aggregator not caught up after {timeout}s: {state}\n{agg.output()[-3000:]}")


def check_stream(client: redis.Redis, case: Case) -> list[str]:
    """What the driver wrote, checked against docs/events.md beyond what the metrics show."""
    problems: list[str] = []
    last_seq: dict[str, int] = defaultdict(int)
    first_type: dict[str, str] = {}
    for p in range(case.partitions):
        for entry_id, fields in client.xrange(stream_key(p)):
            where = f"{stream_key(p)} entry {entry_id.decode()}"
            if set(fields) != {b"b"}:
                problems.append(f"{where}: fields {sorted(fields)}, expected exactly b")
                continue
            try:
                batch = decode_batch(fields[b"b"])
            except EventDecodeError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if partition_of(batch.src, case.partitions) != p:
                problems.append(
                    f"{where}: source {batch.src} belongs to partition {partition_of(batch.src, case.partitions)}"
                )
            for ev in batch.events:
                problem = validate_event(ev)
                if problem is not None:
                    problems.append(f"{where}: invalid event {ev!r}: {problem}")
                    continue
                first_type.setdefault(batch.src, ev["type"])
                if ev["seq"] != last_seq[batch.src] + 1:
                    problems.append(f"{where}: {batch.src} seq {ev['seq']} after {last_seq[batch.src]}")
                last_seq[batch.src] = ev["seq"]
    for src, type_ in first_type.items():
        if type_ != "source.started":
            problems.append(f"source {src}: first event is {type_}, not source.started")
    return problems


def scrape(url: str) -> Samples:
    r = httpx.get(url + "/metrics", timeout=10)
    r.raise_for_status()
    return parse(r.text)


def wait_expectation(url: str, expectation: Expectation, agg: Proc) -> list[str]:
    """Problems with the exposition; retried for up to SETTLE_S until there are none."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        problems = compare(expectation, scrape(url))
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.05)


def _show(key: SampleKey) -> str:
    name, labels = key
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels))
    return f"{name}{{{inner}}}"


def compare(expectation: Expectation, samples: Samples) -> list[str]:
    """Every listed sample with its exact value, no other series of a listed name, nothing absent shown."""
    problems: list[str] = []
    for key, want in expectation.samples.items():
        got = samples.get(key)
        if got is None:
            problems.append(f"missing   {_show(key)} (want {want!r})")
        elif got != want:
            problems.append(f"wrong     {_show(key)} = {got!r}, want {want!r}")
    listed = {name for name, _ in expectation.samples}
    complete = listed - expectation.partial
    clean = set(HEALTH_METRICS) - listed
    for key, got in sorted(samples.items(), key=lambda kv: _show(kv[0])):
        name = key[0]
        if name in complete and key not in expectation.samples:
            problems.append(f"unlisted  {_show(key)} = {got!r}")
        elif name in clean:
            problems.append(
                f"unexpected {_show(key)} = {got!r} (a pipeline problem the case does not expect)"
            )
    for name, labels in expectation.absent:
        present = [k for k in samples if k[0] == name and (labels is None or k[1] == labels)]
        problems.extend(f"present   {_show(k)} = {samples[k]!r}, want absent" for k in present)
    return problems
