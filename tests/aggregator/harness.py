"""Test harness: a real aggregator app served by uvicorn in a thread, scraped over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.aggregator.app import create_app
from services.aggregator.settings import AggregatorSettings
from tests.support.expo import Samples, parse, value
from tests.support.procs import ThreadServer

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
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = scrape(url, path)
        samples = parse(text)
        if condition(samples):
            return samples
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached after {timeout}s; last exposition:\n{text[-4000:]}")


def wait_applied(url: str, total: int, timeout: float = 20.0, prefix: str = "boilerhouse_") -> Samples:
    return wait_for(url, lambda s: applied_total(s, prefix) >= total, timeout,
                    what=f"{total} events applied")


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


class aggregator:  # noqa: N801  (used like a function in `with`)
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
