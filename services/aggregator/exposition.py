"""Rendering folded state as Prometheus metric families (a prometheus_client custom collector).

Every family is rendered by one generic rule per metric kind and :class:`~.metrics.Combine` mode, as
declared in ``metrics.py``; no metric is special-cased here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from .fold import State
from .metrics import METRICS, Combine, Kind, MetricDef, PartitionReading, Readings

#: What the consumer measures per partition at scrape time.
PartitionReadings = Callable[[], Mapping[int, PartitionReading]]


def _float_str(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def combine(mode: Combine, values: list[float]) -> float:
    """The series value from the live sources' values (``values`` is not empty)."""
    if mode is Combine.LIVE_MAX:
        return max(values)
    return float(sum(values))


class StateCollector(Collector):
    """Exposes a :class:`State` (and the consumer's per-partition readings) under ``prefix``.

    Parameters:
        state: a callable returning the current state (the consumer may swap it on restore).
        prefix: metric name prefix, e.g. ``boilerhouse_``.
        source_ttl_s: a source silent for longer than this stops contributing to gauges.
        partitions: a callable returning the per-partition readings (lag, pending, checkpoint age).
        clock: wall clock, injectable for replay and tests.
    """

    def __init__(
        self,
        state: Callable[[], State],
        prefix: str = "boilerhouse_",
        source_ttl_s: float = 30.0,
        partitions: PartitionReadings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._prefix = prefix
        self._ttl = source_ttl_s
        self._partitions = partitions or dict
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # families are generated per scrape; no need to collect at registration

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        now = self._clock()
        live = state.live_sources(now, self._ttl)
        vanished = state.vanished_by_service(now, self._ttl)
        readings = Readings(now, len(live), state.newest_entry_s, vanished, self._partitions())
        for m in METRICS:
            yield self._family(m, state, live, readings)

    def _family(self, m: MetricDef, state: State, live: set[str], readings: Readings) -> Metric:
        name = self._prefix + m.name
        labels = list(m.labels)
        if m.kind is Kind.HISTOGRAM:
            fam_h = HistogramMetricFamily(name, m.help, labels=labels)
            bounds = [_float_str(b) for b in (m.buckets or ())] + ["+Inf"]
            exemplars = state.exemplars[m.name]
            for key, h in sorted(state.hists[m.name].items()):
                cumulative: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
                running = 0.0
                row = exemplars.get(key)
                for j, (bound, count) in enumerate(zip(bounds, h[:-1], strict=True)):
                    running += count
                    e = row[j] if row is not None else None
                    if e is None:
                        cumulative.append((bound, running))
                    else:  # the text format leaves exemplars out; OpenMetrics writes them
                        cumulative.append((bound, running, Exemplar({"trace_id": e[0]}, e[1], e[2])))
                fam_h.add_metric(list(key), cumulative, h[-1])
            return fam_h
        fam: CounterMetricFamily | GaugeMetricFamily
        if m.kind is Kind.COUNTER:
            fam = CounterMetricFamily(name, m.help, labels=labels)
        else:
            fam = GaugeMetricFamily(name, m.help, labels=labels)
        if m.read is not None:
            values: Mapping[tuple[str, ...], float] = m.read(readings)
        elif m.count_of is not None:  # the _count of a histogram with the same labels
            values = {k: float(sum(h[:-1])) for k, h in state.hists[m.count_of].items()}
        elif m.snapshot:
            values = {}
            for key, per_src in state.gauges[m.name].items():
                alive = [v for s, v in per_src.items() if s in live]
                if alive:
                    values[key] = combine(m.combine, alive)
        else:
            values = state.counters[m.name]
        for key, value in sorted(values.items()):
            fam.add_metric(list(key), value)
        return fam
