"""Test harness: a real aggregator app served by uvicorn in a thread, scraped over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.aggregator.app import create_app
from services.aggregator.settings import AggregatorSettings
from shared.events.publisher import Publisher
from shared.events.schema import UNMATCHED_PATH
from tests.support.expo import Samples, parse, value
from tests.support.procs import ThreadServer
from tests.support.wait import wait_for as poll

#: Fast cadence for tests: short blocking reads and frequent checkpoints.
FAST = {"block_ms": 50, "checkpoint_interval_s": 0.2}


def applied_total(samples: Samples, prefix: str = "boilerhouse_") -> float:
    """All events folded so far, summed over types."""
    name = f"{prefix}aggregator_events_applied_total"
    return sum(v for (n, _), v in samples.items() if n == name)


def scrape(url: str, path: str = "/metrics", headers: dict[str, str] | None = None) -> str:
    r = httpx.get(url + path, headers=headers or {}, timeout=10)
    r.raise_for_status()
    return r.text


def wait_for(
    url: str,
    condition: Callable[[Samples], bool],
    timeout: float = 20.0,
    path: str = "/metrics",
    what: str = "condition",
) -> Samples:
    """Scrape until ``condition(samples)`` holds; fail with the last exposition otherwise."""

    def probe() -> tuple[str, Samples]:
        text = scrape(url, path)
        return text, parse(text)

    return poll(probe, what, within_s=timeout, accept=lambda got: condition(got[1]), show=lambda got: got[0])[
        1
    ]


def wait_applied(url: str, total: int, timeout: float = 20.0, prefix: str = "boilerhouse_") -> Samples:
    return wait_for(url, lambda s: applied_total(s, prefix) >= total, timeout, what=f"{total} events applied")


@dataclass
class RunningAggregator:
    """An aggregator app with its consumer thread, on a real uvicorn server."""

    settings: AggregatorSettings
    server: ThreadServer
    app: Any = field(repr=False)

    @property
    def url(self) -> str:
        return self.server.url

    def samples(self) -> Samples:
        return parse(scrape(self.url, self.settings.metrics_path))

    def value(self, name: str, **labels: str) -> float | None:
        return value(self.samples(), self.settings.metrics_prefix + name, **labels)


class aggregator:
    """``with aggregator(redis_url, **settings) as agg:`` runs create_app on a free port."""

    def __init__(self, redis_url: str, **overrides: Any) -> None:
        self.settings = AggregatorSettings(redis_url=redis_url, **{**FAST, **overrides})

    def __enter__(self) -> RunningAggregator:
        app = create_app(self.settings)
        self._server = ThreadServer(app)
        self._server.__enter__()
        return RunningAggregator(self.settings, self._server, app)

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)


class Producer:
    """Records what a test emits so expectations are computed from the events, not typed in."""

    def __init__(self, pub: Publisher) -> None:
        self.pub = pub
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type_: str, **fields: Any) -> None:
        self.events.append((type_, dict(fields)))
        self.pub.emit(type_, fields)

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [f for t, f in self.events if t == type_ and all(f.get(k) == v for k, v in match.items())]


def publisher(redis_url: str, service: str = "pipeline-test", **kw: Any) -> Publisher:
    return Publisher(
        redis_url, service, version="9.9.9", heartbeat_interval_s=3600, flush_interval_s=0.01, **kw
    )


def emit_every_type(p: Producer) -> None:
    pool_state = {"pending": 0, "min_size": 2, "max_size": 10}
    p.emit(
        "pool.state",
        pool_id="pool-a",
        workload_id="echo",
        size=5,
        available=3,
        borrowed=2,
        target_size=5,
        affinity_reservations=1,
        **pool_state,
    )
    p.emit(
        "pool.state",
        pool_id="pool-b",
        workload_id="echo",
        size=1,
        available=1,
        borrowed=0,
        target_size=1,
        affinity_reservations=0,
        **pool_state,
    )
    # The latest snapshot of a source wins.
    p.emit(
        "pool.state",
        pool_id="pool-a",
        workload_id="echo",
        size=6,
        available=3,
        borrowed=3,
        target_size=6,
        affinity_reservations=2,
        **pool_state,
    )
    p.emit("pool.removed", pool_id="pool-b", workload_id="echo")
    for pool, status, d, aff in [
        ("pool-a", "success", 0.05, "hit"),
        ("pool-a", "success", 0.5, "miss"),
        ("pool-a", "success", 3.0, "hit"),
        ("pool-a", "failure", 70.0, "miss"),
        ("pool-b", "timeout", 1.0, "miss"),
    ]:
        p.emit("container.acquired", pool_id=pool, status=status, duration_s=d, affinity=aff)
    p.emit("container.released", pool_id="pool-a", status="success", duration_s=0.2)
    p.emit("container.released", pool_id="pool-a", status="failure", duration_s=12)
    p.emit("container.created", pool_id="pool-a", workload_id="echo", status="success", duration_s=2.5)
    p.emit("container.created", pool_id="pool-a", workload_id="echo", status="failure", duration_s=0.3)
    p.emit("container.destroyed", pool_id="pool-a", status="success", duration_s=0.1)
    p.emit("container.wiped", pool_id="pool-a", status="success", duration_s=0.7)
    p.emit("container.wiped", pool_id="pool-a", status="failure", duration_s=1.2)
    for pool in ("pool-a", "pool-a", "pool-b"):
        p.emit("container.health_check_failed", pool_id=pool)
    for _ in range(3):
        p.emit("affinity.evicted", pool_id="pool-a")
    for direction, mode, status, d, nbytes, files, err in [
        ("upload", "sync", "success", 12.0, 1000, 3, None),
        ("upload", "bisync", "failure", 4.0, 10, 1, "network_error"),
        ("download", "copy", "timeout", 600.0, 0, 0, None),
        ("download", "sync", "failure", 700.0, 5, 0, None),
    ]:
        p.emit(
            "sync.finished",
            workload_id="echo",
            direction=direction,
            mode=mode,
            status=status,
            duration_s=d,
            bytes=nbytes,
            files=files,
            error_type=err,
        )
    p.emit("sync.resynced", workload_id="echo")
    p.emit("sync.resynced", workload_id="echo")
    p.emit("sync.state", workload_id="echo", running=2, queued=5, periodic_jobs=3)
    p.emit("sync.state", workload_id="echo", running=1, queued=4, periodic_jobs=3)
    for method, path, status, d in [
        ("GET", "/api/v1/pools/{pool_id}", 200, 0.004),
        ("GET", "/api/v1/pools/{pool_id}", 200, 0.3),
        ("POST", "/api/v1/tenants/{tenant_id}/claim", 500, 11.0),
        ("GET", UNMATCHED_PATH, 404, 0.001),
    ]:
        p.emit("http.request", method=method, path=path, status=status, duration_s=d)
    p.emit("events.dropped", count=7)
    p.emit("source.heartbeat")
