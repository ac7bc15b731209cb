"""Rendering folded state as Prometheus metric families (a prometheus_client custom collector)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .fold import START_TIME, VERSION, State
from .metrics import COUNTER, GAUGE, HISTOGRAM, METRICS, MetricDef

#: Runtime gauges measured by the consumer: name -> {label tuple: value}.
RuntimeValues = Mapping[str, Mapping[tuple[str, ...], float]]


def _float_str(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


class StateCollector(Collector):
    """Exposes a :class:`State` (and the consumer's runtime gauges) under ``prefix``.

    Parameters:
        state: a callable returning the current state (the consumer may swap it on restore).
        prefix: metric name prefix, e.g. ``boilerhouse_``.
        source_ttl_s: a source silent for longer than this stops contributing to gauges.
        runtime: a callable returning the runtime gauges (lag, checkpoint age ...).
        clock: wall clock, injectable for replay and tests.
    """

    def __init__(
        self,
        state: Callable[[], State],
        prefix: str = "boilerhouse_",
        source_ttl_s: float = 30.0,
        runtime: Callable[[], RuntimeValues] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._prefix = prefix
        self._ttl = source_ttl_s
        self._runtime = runtime or (dict)
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # families are generated per scrape; no need to collect at registration

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        now = self._clock()
        live = state.live_sources(now, self._ttl)
        runtime = dict(self._runtime())
        runtime.setdefault("aggregator_live_sources", {(): float(len(live))})
        if state.newest_ts:
            runtime.setdefault("aggregator_newest_event_age_seconds", {(): max(0.0, now - state.newest_ts)})
        for m in METRICS:
            yield self._family(m, state, live, runtime)

    def _family(self, m: MetricDef, state: State, live: set[str], runtime: dict[str, Any]) -> Metric:
        name = self._prefix + m.name
        labels = list(m.labels)
        if m.kind == COUNTER:
            fam = CounterMetricFamily(name, m.help, labels=labels)
            if m.derived_from is not None:  # the _count of a histogram with the same labels
                values = {k: float(sum(h[:-1])) for k, h in state.hists[m.derived_from].items()}
            else:
                values = state.counters[m.name]
            for key, value in sorted(values.items()):
                fam.add_metric(list(key), value)
            return fam
        if m.kind == HISTOGRAM:
            fam_h = HistogramMetricFamily(name, m.help, labels=labels)
            bounds = [_float_str(b) for b in (m.buckets or ())] + ["+Inf"]
            for key, h in sorted(state.hists[m.name].items()):
                cumulative, running = [], 0.0
                for bound, count in zip(bounds, h[:-1], strict=True):
                    running += count
                    cumulative.append((bound, running))
                fam_h.add_metric(list(key), cumulative, h[-1])
            return fam_h
        assert m.kind == GAUGE
        fam_g = GaugeMetricFamily(name, m.help, labels=labels)
        if m.source == "runtime":
            for key, value in sorted(runtime.get(m.name, {}).items()):
                fam_g.add_metric(list(key), value)
        elif m.name == "info":
            for version in sorted({state.sources[s][VERSION] for s in live if state.sources[s][VERSION]}):
                fam_g.add_metric([version], 1.0)
        elif m.name == "start_time_seconds":
            starts = [state.sources[s][START_TIME] for s in live if state.sources[s][START_TIME]]
            if starts:
                fam_g.add_metric([], max(starts))
        else:
            for key, per_src in sorted(state.gauges[m.name].items()):
                values = [v for s, v in per_src.items() if s in live]
                if values:
                    fam_g.add_metric(list(key), float(sum(values)))
        return fam_g
