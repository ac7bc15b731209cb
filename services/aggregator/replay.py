"""Replay: the live fold run over ranges of the streams, as of any instant or at every step of a window.

Replay folds ``XRANGE`` pages through the same :class:`.ingest.PartitionIngest` as the live consumer.
Entries are selected by stream id, i.e. by the time Redis accepted them, which is also when the live
aggregator could first have seen them: folding the entries with id <= T gives the state the live
aggregator had at instant T (less its read lag).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_latest_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from shared.events.streams import StreamId, parse_id

from .exposition import StateCollector
from .fold import State
from .ingest import PartitionIngest
from .progress import Progress
from .reader import StreamReader
from .settings import AggregatorSettings
from .times import MAX_SEQ


class Replayer:
    """Folds the streams forward in time, one ingest per partition as the live consumer keeps.

    Parameters:
        reader: where the entries come from.
        settings: the aggregator settings replayed (series cap, metric prefix, source TTL and forget horizon).
    """

    def __init__(self, reader: StreamReader, settings: AggregatorSettings | None = None) -> None:
        self.reader = reader
        self.settings = settings or AggregatorSettings()
        #: Per partition; a stream that lost entries before the fold opens its trim window up front.
        self.parts = {
            p: PartitionIngest(
                p, State(limits=self.settings.limits), reader.trim_window(p), self.settings.source_forget_s
            )
            for p in reader.partitions
        }
        self.position: StreamId = (0, 0)  # everything <= position has been folded
        self.entries = 0

    @property
    def events(self) -> int:
        return sum(part.events for part in self.parts.values())

    def advance_to(self, end: StreamId, progress: Progress | None = None, base_ms: int = 0) -> int:
        """Fold every entry with position < id <= end; returns the entries folded.

        ``progress`` is advanced in seconds of stream time since ``base_ms``.
        """
        if end <= self.position:
            return 0
        if self.position == (0, 0):
            start: StreamId = (0, 0)
        elif self.position[1] < MAX_SEQ:
            start = (self.position[0], self.position[1] + 1)
        else:
            start = (self.position[0] + 1, 0)
        n = 0
        for partition, (raw_id, fields) in self.reader.raw(start, end):
            part = self.parts[partition]
            before = part.events
            sid = parse_id(raw_id)
            part.entry(sid, fields)
            n += 1
            if progress is not None:
                progress.update((sid[0] - base_ms) / 1000, part.events - before)
        self.entries += n
        self.position = end
        return n

    def state(self) -> State:
        """The merged state (the same object for one partition: render it before advancing again)."""
        return State.merge([part.state for part in self.parts.values()])

    def collector(self, at_s: float) -> StateCollector:
        """A collector rendering the state as the exposition at ``at_s`` (no per-partition readings)."""
        state = self.state()
        return StateCollector(
            lambda: state, self.settings.metrics_prefix, self.settings.source_ttl_s, clock=lambda: at_s
        )

    def families(self, at_s: float) -> list[Metric]:
        return list(self.collector(at_s).collect())

    def exposition(self, at_s: float, openmetrics: bool = False) -> str:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector(at_s))
        render = generate_latest_openmetrics if openmetrics else generate_latest
        return render(registry).decode()


class TimestampedOpenMetrics(Collector):
    """Metric families taken at several instants, written as one timestamped OpenMetrics text.

    Rendered by prometheus_client's OpenMetrics exposition (samples carry ``timestamp``); this class only
    regroups the samples as the format wants them: each family in one block, and each series' points in
    increasing time order (histogram buckets, count and sum of one instant together). Samples are held
    until :meth:`write`, so memory grows with steps x series.
    """

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        #: family -> series (labels without ``le``) -> samples in time order
        self._series: dict[str, dict[tuple[tuple[str, str], ...], list[Sample]]] = {}

    def add(self, families: Iterable[Metric], ts_ms: int) -> None:
        stamp = ts_ms / 1000  # rendered by repr: the shortest text that is the same float
        for fam in families:
            if not fam.samples:
                continue
            if fam.name not in self._families:
                self._families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                self._series[fam.name] = {}
            series = self._series[fam.name]
            for s in fam.samples:
                key = tuple((k, v) for k, v in s.labels.items() if k != "le")
                points = series.get(key)
                if points is None:
                    points = series[key] = []
                points.append(Sample(s.name, s.labels, s.value, stamp))

    def collect(self) -> Iterable[Metric]:
        for name, fam in self._families.items():
            fam.samples = [s for key in sorted(self._series[name]) for s in self._series[name][key]]
            yield fam

    def write(self, out: TextIO) -> int:
        """Write everything, ending in ``# EOF``; returns the sample lines written."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        text: bytes = generate_latest_openmetrics(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        out.write(text.decode())
        return sum(len(points) for series in self._series.values() for points in series.values())


def step_times(start_ms: int, end_ms: int, step_ms: int) -> list[int]:
    """start, start+step, ... up to end (inclusive)."""
    return list(range(start_ms, end_ms + 1, step_ms))


def replay_range(
    replayer: Replayer,
    start_ms: int,
    end_ms: int,
    step_ms: int,
    writer: TimestampedOpenMetrics,
    progress: Progress | None = None,
) -> int:
    """Fold to each step time and add its families to ``writer``; returns the number of steps."""
    steps = step_times(start_ms, end_ms, step_ms)
    for i, t in enumerate(steps):
        before = replayer.events
        replayer.advance_to((t, MAX_SEQ))
        writer.add(replayer.families(t / 1000), t)
        if progress is not None:
            progress.update(i + 1, replayer.events - before)
    return len(steps)
