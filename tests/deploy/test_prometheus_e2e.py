"""End to end with the real tools: API and aggregator processes, Prometheus scraping every second.

The API serves real traffic (pools, claims, rclone syncs that succeed and fail, unknown routes); a second
producer process life and a foreign producer (raw stream entries) add the pipeline's own events. Every
query the project ships (the seed's table, every dashboard panel, every alert) is then evaluated through
Prometheus' HTTP API and compared with what the traffic implies, computed from the aggregator's
exposition before and after the measured traffic (itself checked against the requests that were made).
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from services.embedded import EmbeddedRedis, free_port
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.publisher import Publisher
from shared.events.streams import stream_key
from tests.deploy import expect as X
from tests.deploy.queries import (
    PAIR_SAFE,
    SEED_EQUIVALENTS,
    alert_expressions,
    all_queries,
    dashboard,
    metric_names,
)
from tests.support.expo import Samples, names, parse
from tests.support.procs import Proc, boilerhouse, wait_http
from tests.support.prometheus import AGGREGATOR_JOB, Prometheus, tool
from tests.support.wait import wait_for

P = "boilerhouse_"
SYNC_FAILURES = 36  # > 0.1/s over 5 minutes: HighSyncErrorRate's expression must return it
SYNC_SUCCESSES = 3
LOST_GAP = 3  # the foreign producer skips this many sequence numbers
DROPPED = 7  # ... and reports this many dropped events


def workloads(directory: Path, remote: Path) -> Path:
    directory.mkdir()
    defs = {
        "echo": {"id": "echo", "command": ["sleep", "infinity"]},
        # Writes 4 KiB at start; upload syncs to a local directory with the real rclone.
        "files": {
            "id": "files",
            "command": ["sh", "-c", "head -c 4096 /dev/zero > blob.bin; exec sleep 1000"],
            "sync": {"remote": str(remote), "mode": "sync", "direction": "upload", "timeout": "30s"},
        },
        # A remote rclone does not know: every sync fails with an rclone error (HTTP 502).
        "broken": {
            "id": "broken",
            "command": ["sleep", "infinity"],
            "sync": {
                "remote": "nosuchremote:bucket",
                "mode": "sync",
                "direction": "upload",
                "timeout": "30s",
            },
        },
    }
    for name, doc in defs.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return directory


@dataclass
class Stack:
    prom: Prometheus
    api_url: str
    agg_url: str
    agg: Proc
    api: Proc
    snaps: X.Snapshots
    text_b: str
    requests_b: Counter[str] = field(default_factory=Counter)
    pools_api: list[dict[str, Any]] = field(default_factory=list)
    live_before: float = 0.0

    def slack(self, at: float) -> float:
        """Largest extrapolation factor of a ``[5m]`` rate()/increase() over the aggregator's series at
        instant ``at``, from the timestamps of the samples Prometheus stored for each of them."""
        stored = self.prom.raw_samples(f'{{job="{AGGREGATOR_JOB}"}}', "5m", at)
        assert stored, "Prometheus stored no samples of the aggregator"
        return max(X.extrapolation_limit(timestamps) for _, timestamps in stored)


def exposition(url: str) -> tuple[str, Samples]:
    text = httpx.get(url + "/metrics", timeout=30).text
    return text, parse(text)


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def wait_exposition(url: str, condition: Any, what: str, timeout: float = 60.0) -> tuple[str, Samples]:
    return wait_for(
        lambda: exposition(url),
        f"the aggregator shows {what}",
        within_s=timeout,
        accept=lambda got: bool(condition(got[1])),
        show=lambda got: got[0],
    )


class Client:
    """The API over HTTP, counting what was sent by (method, status)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.sent: Counter[str] = Counter()

    def __call__(self, method: str, path: str, want: int, **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        assert r.status_code == want, f"{method} {path}: {r.status_code} {r.text}"
        self.sent[f"{method} {r.status_code}"] += 1
        return r


def one_of_each(api: Client) -> None:
    """Every request shape of the measured traffic, so each series exists before Prometheus' first scrape."""
    api("GET", "/api/v1/pools", 200)
    api("GET", "/nope", 404)
    api("POST", "/api/v1/tenants/t-web-1/claim", 200, json={"pool_id": "web"})
    api("POST", "/api/v1/tenants/t-web-1/release", 200)
    api("POST", "/api/v1/tenants/t-files/sync", 200)
    r = api("POST", "/api/v1/tenants/t-broken/sync", 502)
    assert r.json()["error_type"] == "rclone_error"


def foreign_entries(client: redis.Redis) -> None:
    """A producer in another language: a sequence gap and a drop report; and one undecodable entry. And a
    job whose clock is two days ahead, which then vanishes without stopping (killed)."""
    now = time.time()
    events = [
        {
            "type": "source.started",
            "seq": 1,
            "ts": now,
            "service": "batch",
            "version": "1.0",
            "host": "h",
            "pid": 1,
            "start_time_s": now,
        },
        {"type": "events.dropped", "seq": 2 + LOST_GAP, "ts": now, "count": DROPPED},
        {"type": "source.stopped", "seq": 3 + LOST_GAP, "ts": now},
    ]
    client.xadd(stream_key(0), {ENTRY_FIELD: encode_batch("batch:h:1:feedf00d", events)})
    client.xadd(stream_key(0), {ENTRY_FIELD: b"\xc1 not msgpack"})
    ahead = now + 2 * 86_400
    started = {**events[0], "ts": ahead, "service": "cron"}
    job = [started, {"type": "source.heartbeat", "seq": 2, "ts": ahead}]
    client.xadd(stream_key(0), {ENTRY_FIELD: encode_batch("cron:h:2:beefcafe", job)})


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    client = redis.Redis.from_url(redis_server.url, protocol=2)
    client.flushall()
    work = tmp_path_factory.mktemp("e2e")
    defs = workloads(work / "workloads", work / "remote")
    agg_port, api_port = free_port(), free_port()
    agg = boilerhouse(
        [
            "aggregator",
            "--redis-url",
            redis_server.url,
            "--port",
            str(agg_port),
            "--pidfile",
            str(work / "aggregator.pid"),
        ],
        work,
        "aggregator",
        {"BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.5", "BOILERHOUSE_SOURCE_TTL_S": "5"},
    )
    api_proc = boilerhouse(
        [
            "api",
            "--redis-url",
            redis_server.url,
            "--port",
            str(api_port),
            "--workloads",
            str(defs),
            "--data-dir",
            str(work / "data"),
            "--pidfile",
            str(work / "api.pid"),
        ],
        work,
        "api",
        {"BOILERHOUSE_HEARTBEAT_INTERVAL_S": "1", "BOILERHOUSE_RUNTIME": "process"},
    )
    agg_url, api_url = f"http://127.0.0.1:{agg_port}", f"http://127.0.0.1:{api_port}"
    worker = Publisher(redis_server.url, "worker", heartbeat_interval_s=1, flush_interval_s=0.01)
    prom = Prometheus(work / "prometheus", [f"127.0.0.1:{agg_port}"])
    api = Client(api_url)
    try:
        wait_http(agg_url + "/readyz", proc=agg)
        wait_http(api_url + "/healthz", proc=api_proc)

        # ---- warm-up: pools, one claim per pool, one request of every shape -------------------------
        api(
            "POST",
            "/api/v1/pools",
            201,
            json={"pool_id": "web", "workload_id": "echo", "min_size": 2, "max_size": 2},
        )
        api(
            "POST",
            "/api/v1/pools",
            201,
            json={"pool_id": "files", "workload_id": "files", "min_size": 3, "max_size": 4},
        )
        api(
            "POST",
            "/api/v1/pools",
            201,
            json={"pool_id": "broken", "workload_id": "broken", "min_size": 1, "max_size": 2},
        )
        # Scales back to zero after 0.5 s without claims: idle, not exhausted (PoolExhausted leaves it out).
        api(
            "POST",
            "/api/v1/pools",
            201,
            json={
                "pool_id": "spare",
                "workload_id": "echo",
                "min_size": 0,
                "max_size": 2,
                "idle_timeout_s": 0.5,
            },
        )
        api("POST", "/api/v1/tenants/t-files/claim", 200, json={"pool_id": "files"})
        api("POST", "/api/v1/tenants/t-broken/claim", 200, json={"pool_id": "broken"})
        one_of_each(api)
        api("GET", "/api/v1/workloads", 200)  # marker: the last warm-up request
        wait_exposition(
            agg_url,
            lambda s: (
                total(s, P + "http_requests_total", path="/api/v1/workloads") == 1
                and total(s, P + "aggregator_live_sources") == 2
                and total(s, P + "pool_size", pool_id="spare") == 0
            ),
            "the warm-up folded",
        )

        # ---- Prometheus from here on: its first sample of every series is the warm-up state ------------
        prom.start()
        started = time.time()
        prom.wait_scraped(after=started + 5)
        _, a = exposition(agg_url)
        live_before = total(a, P + "aggregator_live_sources")
        for name in ("events_lost_total", "events_dropped_total", "aggregator_dead_letters_total"):
            assert total(a, P + name) == 0, f"{name} must first move in the measured traffic"

        # ---- the measured traffic ----------------------------------------------------------------------
        api.sent.clear()
        api("POST", "/api/v1/tenants/t-web-1/claim", 200, json={"pool_id": "web"})  # affinity hit
        api("POST", "/api/v1/tenants/t-web-2/claim", 200, json={"pool_id": "web"})  # web is now exhausted
        synced = [api("POST", "/api/v1/tenants/t-files/sync", 200).json() for _ in range(SYNC_SUCCESSES)]
        for _ in range(SYNC_FAILURES):
            api("POST", "/api/v1/tenants/t-broken/sync", 502)
        for _ in range(5):
            api("GET", "/nope", 404)
        api("GET", "/api/v1/pools", 200)
        worker.close()  # one producer process life ends
        foreign_entries(client)
        pools = api("GET", "/api/v1/pools", 200).json()["pools"]
        sent = sum(api.sent.values())
        settled_at = time.time()
        text_b, b = wait_exposition(
            agg_url,
            lambda s: (
                total(s, P + "http_requests_total") - total(a, P + "http_requests_total") == sent
                and total(s, P + "aggregator_live_sources") == 1
                and total(s, P + "events_dropped_total") == DROPPED
                and total(s, P + "aggregator_dead_letters_total") == 1
                and total(s, P + "aggregator_vanished_sources") == 1
            ),
            "the measured traffic folded",
        )
        settled_at = time.time()
        prom.wait_scraped(after=settled_at + 1.5)
        text_b, b = exposition(agg_url)

        # The exposition reflects the requests made (so expectations derived from it are the traffic's).
        snaps = X.Snapshots(a, b)
        codes = snaps.delta(P + "http_requests_total", ["method", "status"])
        assert {f"{dict(k)['method']} {dict(k)['status']}": v for k, v in codes.items() if v} == dict(
            api.sent
        )
        errors = snaps.delta(P + "sync_errors_total", ["workload_id", "error_type"])
        assert errors[X.key(workload_id="broken", error_type="rclone_error")] == SYNC_FAILURES
        assert sum(errors.values()) == SYNC_FAILURES
        assert snaps.delta(P + "sync_bytes_transferred_total", ["direction"]) == {
            X.key(direction="upload"): float(sum(s["bytes"] for s in synced))
        }
        assert total(b, P + "affinity_hits_total", pool_id="web") == 1  # t-web-1 got its container back
        yield Stack(prom, api_url, agg_url, agg, api_proc, snaps, text_b, api.sent, pools, live_before)
    finally:
        api.http.close()
        prom.stop()
        if not worker._stop.is_set():
            worker.close()
        for proc in (api_proc, agg):
            if proc.popen.poll() is None:
                proc.stop()
        client.close()


def ratio(a: float, b: float) -> float:
    """PromQL division: x/0 is NaN for 0/0 and ±Inf otherwise."""
    if b == 0:
        return math.nan if a == 0 else math.copysign(math.inf, a)
    return a / b


def server_error(labels: dict[str, str]) -> bool:
    return labels["status"].startswith("5")


def expectations(s: Stack, at: float) -> dict[str, X.Checker]:
    """What every shipped query evaluated at instant ``at`` must return, keyed by the query."""
    S = s.snaps
    w = 300.0  # [5m] windows, in seconds
    slack = s.slack(at)

    def quantile(name: str, q: float, by: list[str]) -> X.Checker:
        def want() -> X.Result:
            rates = X.as_result(s.prom.query(f"rate({name}_bucket[5m])", at))
            return S.rate_quantile(name, q, by, rates, w, slack)

        return X.computed(want)

    def ext(want: X.Result, divisor: float = 1.0, factor: float = 1.0) -> X.Checker:
        return X.extrapolated(want, divisor, factor, slack)

    size = S.gauge(P + "pool_size", ["pool_id", "workload_id"])
    borrowed = S.gauge(P + "pool_borrowed", ["pool_id", "workload_id"])
    available = S.gauge(P + "pool_available", ["pool_id", "workload_id"])
    min_size = S.gauge(P + "pool_min_size", ["pool_id", "workload_id"])
    util = {k: ratio(borrowed[k], size[k]) for k in size}
    by_pool = {frozenset({("pool_id", dict(k)["pool_id"])}): v for k, v in util.items()}
    acq = P + "container_acquire_duration_seconds"
    sync_d = P + "sync_duration_seconds"
    http_d = P + "http_request_duration_seconds"
    http = P + "http_requests_total"
    sync_rate = {k: v / w for k, v in S.delta(P + "sync_errors_total", ["workload_id"]).items()}
    gone = {X.key(): s.live_before - S.gauge(P + "aggregator_live_sources")[X.key()]}
    out: dict[str, X.Checker] = {
        # seed table
        "count(boilerhouse_pool_size)": X.exact({X.key(): float(len(size))}),
        "sum(boilerhouse_pool_size)": X.exact(S.gauge(P + "pool_size")),
        "sum(boilerhouse_pool_borrowed)": X.exact(S.gauge(P + "pool_borrowed")),
        "sum(boilerhouse_pool_available)": X.exact(S.gauge(P + "pool_available")),
        "boilerhouse_pool_borrowed / boilerhouse_pool_size * 100": X.exact(
            {k: ratio(borrowed[k], size[k]) * 100 for k in size}
        ),
        "sum(boilerhouse_sync_concurrent_operations)": X.exact(S.gauge(P + "sync_concurrent_operations")),
        "sum(increase(boilerhouse_sync_errors_total[1h]))": ext(S.delta(P + "sync_errors_total")),
        "histogram_quantile(0.5, sum by (le) (rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))": quantile(
            acq, 0.5, []
        ),
        "sum(rate(boilerhouse_http_requests_total[5m]))": ext(S.delta(http), w),
        'sum(rate(boilerhouse_http_requests_total{status=~"5.."}[5m]))': ext(
            S.delta(http, where=server_error), w
        ),
        # dashboard
        "sum(boilerhouse_pool_borrowed) / sum(boilerhouse_pool_size) * 100": X.exact(
            {X.key(): S.gauge(P + "pool_borrowed")[X.key()] / S.gauge(P + "pool_size")[X.key()] * 100}
        ),
        "sum by (pool_id) (boilerhouse_pool_size)": X.exact(S.gauge(P + "pool_size", ["pool_id"])),
        "sum by (pool_id) (boilerhouse_pool_borrowed) / sum by (pool_id) (boilerhouse_pool_size) * 100": X.exact(
            {k: v * 100 for k, v in by_pool.items()}
        ),
        "sum by (direction) (rate(boilerhouse_sync_operations_total[5m])) * 60": ext(
            S.delta(P + "sync_operations_total", ["direction"]), w, factor=60
        ),
        "sum by (le) (rate(boilerhouse_sync_duration_seconds_bucket[5m]))": ext(
            S.delta(sync_d + "_bucket", ["le"]), w
        ),
        "histogram_quantile(0.95, sum by (workload_id, le) (rate(boilerhouse_sync_duration_seconds_bucket[5m])))": quantile(
            sync_d, 0.95, ["workload_id"]
        ),
        "sum by (error_type) (rate(boilerhouse_sync_errors_total[5m]))": ext(
            S.delta(P + "sync_errors_total", ["error_type"]), w
        ),
        "sum by (direction) (rate(boilerhouse_sync_bytes_transferred_total[5m]))": ext(
            S.delta(P + "sync_bytes_transferred_total", ["direction"]), w
        ),
        "sum by (direction) (rate(boilerhouse_sync_files_transferred_total[5m]))": ext(
            S.delta(P + "sync_files_transferred_total", ["direction"]), w
        ),
        "sum by (method, path) (rate(boilerhouse_http_requests_total[5m]))": ext(
            S.delta(http, ["method", "path"]), w
        ),
        "sum by (le) (rate(boilerhouse_http_request_duration_seconds_bucket[5m]))": ext(
            S.delta(http_d + "_bucket", ["le"]), w
        ),
        "histogram_quantile(0.95, sum by (path, le) (rate(boilerhouse_http_request_duration_seconds_bucket[5m])))": quantile(
            http_d, 0.95, ["path"]
        ),
        'sum by (path) (rate(boilerhouse_http_requests_total{status=~"5.."}[5m]))': ext(
            S.delta(http, ["path"], where=server_error), w
        ),
        "sum by (instance) (boilerhouse_aggregator_live_sources)": X.exact({X.key(): 1.0}),
        # Caught up; a heartbeat entry may be in flight at the instant of a scrape.
        "max by (instance, partition) (boilerhouse_aggregator_consumer_lag_entries)": X.between(
            X.key(partition="0"), 0.0, 2.0
        ),
        "sum by (reason) (boilerhouse_events_lost_total)": X.exact(
            {X.key(reason="seq_gap"): float(LOST_GAP)}
        ),
        "sum by (service) (boilerhouse_events_dropped_total)": X.exact(
            {X.key(service="batch"): float(DROPPED)}
        ),
        "sum by (reason) (boilerhouse_aggregator_dead_letters_total)": X.exact(
            S.gauge(P + "aggregator_dead_letters_total", ["reason"])
        ),
        "max by (instance) (boilerhouse_aggregator_newest_event_age_seconds)": X.between(X.key(), 0.0, 10.0),
    }
    for q in (0.5, 0.95, 0.99):
        expr = (
            f"histogram_quantile({q}, sum by (pool_id, le) "
            "(rate(boilerhouse_container_acquire_duration_seconds_bucket[5m])))"
        )
        out[expr] = quantile(acq, q, ["pool_id"])

    alerts = alert_expressions()
    lost = S.gauge(P + "events_lost_total", ["reason"])
    dropped = S.gauge(P + "events_dropped_total", ["service"])
    dead = S.gauge(P + "aggregator_dead_letters_total", ["reason"])
    out.update(
        {
            alerts["PoolExhausted"]: X.exact(
                {k: v for k, v in available.items() if v == 0 and not (min_size[k] == 0 and borrowed[k] == 0)}
            ),
            alerts["HighSyncErrorRate"]: ext(
                {k: v * w for k, v in X.where(sync_rate, lambda v: v > 0.1).items()}, w
            ),
            alerts["SlowContainerAcquisition"]: X.exact(
                X.where(S.quantile(acq, 0.99, ["pool_id"]), lambda v: v > 30)
            ),
            alerts["HighPoolUtilization"]: X.exact(X.where(util, lambda v: v > 0.9)),
            alerts["AggregatorDown"]: X.empty(),
            alerts["AggregatorPairMemberDown"]: X.empty(),
            alerts["AggregatorConsumerLag"]: X.empty(),
            alerts["AggregatorStalled"]: X.empty(),
            # These counters first appeared during the measured traffic: the `unless offset` branch reports them.
            alerts["EventsLost"]: X.exact(lost),
            alerts["EventsDropped"]: X.exact(dropped),
            alerts["EventsDeadLettered"]: X.exact(dead),
            alerts["NoLiveProducers"]: X.empty(),
            alerts["ProducerGoneSilent"]: X.exact(X.where(gone, lambda v: v > 0)),
            alerts["EventsStale"]: X.empty(),
            alerts["AggregatorCheckpointStale"]: X.empty(),
            alerts["ProducerVanished"]: X.exact({X.key(service="cron"): 1.0}),
            alerts["ProducerClockSkew"]: X.exact({X.key(direction="ahead"): 2.0}),
        }
    )
    for pair_safe, plain in PAIR_SAFE.items():
        out[pair_safe] = out[plain]
        if plain not in SEED_EQUIVALENTS.values():
            del out[plain]  # the dashboard no longer ships the plain form
    return out


def test_traffic_shape(stack: Stack) -> None:
    """The traffic is what the alert checks below rely on: an exhausted pool, a failing workload, a lost producer."""
    pools = {p["pool_id"]: p["stats"] for p in stack.pools_api}
    assert pools["web"]["available"] == 0 and pools["web"]["borrowed"] == 2
    assert pools["spare"]["size"] == 0 and pools["spare"]["min_size"] == 0 and pools["spare"]["borrowed"] == 0
    assert stack.live_before == 2
    assert SYNC_FAILURES / 300 > 0.1


def test_pool_gauges_match_the_api(stack: Stack) -> None:
    """What Prometheus stores for each pool is what the API itself reports."""
    for pool in stack.pools_api:
        for gauge in ("size", "available", "borrowed", "pending"):
            got = stack.prom.value(f'sum(boilerhouse_pool_{gauge}{{pool_id="{pool["pool_id"]}"}})')
            assert got == pool["stats"][gauge], (pool["pool_id"], gauge, got, pool["stats"])


def test_every_shipped_query_returns_what_the_traffic_implies(stack: Stack) -> None:
    at = time.time()  # one instant for every query and for what it is compared with
    table = expectations(stack, at)
    shipped = all_queries()
    assert set(table) == set(shipped.values()), (
        f"queries without expectations: {sorted(set(shipped.values()) - set(table))}; "
        f"stale expectations: {sorted(set(table) - set(shipped.values()))}"
    )
    failures = []
    for where, expr in shipped.items():
        try:
            table[expr](X.as_result(stack.prom.query(expr, at)))
        except AssertionError as exc:
            failures.append(f"{where}: {expr}\n    {exc}")
    assert not failures, "\n".join(failures)


def test_alerting_rules_load_and_evaluate_cleanly(stack: Stack) -> None:
    """Prometheus loaded every rule of alerts.yml and evaluates each without error; states follow `for`."""
    expressions = alert_expressions()
    rules = {r["name"]: r for r in stack.prom.rules()}
    assert set(rules) == set(expressions)
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))

    # Alerts whose expression returns something are pending (with a `for`) or firing (without one).
    def states_and_wanted() -> tuple[dict[str, str], dict[str, str]]:
        states = {a["labels"]["alertname"]: a["state"] for a in stack.prom.alerts()}
        want = {}
        for name, expr in expressions.items():
            if stack.prom.query(expr):
                want[name] = "firing" if rules[name].get("duration", 0) == 0 else "pending"
        return states, want

    states, _ = wait_for(
        states_and_wanted,
        "alert states follow their expressions",
        poll_s=0.5,
        accept=lambda got: got[0] == got[1],
    )
    assert {
        "PoolExhausted",
        "HighSyncErrorRate",
        "HighPoolUtilization",
        "EventsLost",
        "EventsDropped",
        "EventsDeadLettered",
        "ProducerGoneSilent",
    } <= set(states)


def test_every_metric_name_is_in_the_exposition(stack: Stack) -> None:
    exposed = names(parse(stack.text_b))
    for where, expr in all_queries().items():
        missing = metric_names(expr) - exposed - {"up"}
        assert not missing, f"{where}: {sorted(missing)} not in the aggregator's exposition"
    assert stack.prom.value(f'up{{job="{AGGREGATOR_JOB}"}}') == 1.0


def test_promtool_check_metrics_on_the_exposition(stack: Stack) -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=stack.text_b,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_dashboard_legends_use_labels_the_queries_return(stack: Stack) -> None:
    """A legend such as ``{{pool_id}}`` only works if every series of the panel's query has that label."""
    checked = 0
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            if not wanted:
                continue
            result = stack.prom.query(target["expr"])
            assert result, f"{panel['title']}: no series to label"
            for sample in result:
                assert wanted <= set(sample.labels), (panel["title"], wanted, sample.labels)
            checked += 1
    assert checked >= 15


def test_aggregator_down_alert_fires_when_the_aggregator_stops(stack: Stack) -> None:
    """Last (it stops the aggregator): AggregatorDown's expression finds the target, then the alert pends."""
    expr = alert_expressions()["AggregatorDown"]
    assert stack.prom.query(expr) == []
    stopped = time.time()
    stack.agg.stop()
    result = stack.prom.wait_for(expr, lambda r: len(r) == 1, timeout=20)
    assert result[0].labels == {
        "__name__": "up",
        "job": AGGREGATOR_JOB,
        "instance": stack.agg_url.removeprefix("http://"),
    }
    assert result[0].value == 0.0
    stack.prom.wait_for('ALERTS{alertname="AggregatorDown"}', lambda r: len(r) == 1, timeout=20)
    assert time.time() - stopped < 60  # within its `for: 1m`: pending, not yet firing
    assert stack.prom.value('ALERTS{alertname="AggregatorDown"}') == 1.0
    assert stack.prom.query('ALERTS{alertname="AggregatorDown"}')[0].labels["alertstate"] == "pending"
