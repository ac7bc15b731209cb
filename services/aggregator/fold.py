"""Folding events into plain-data metric state: ``apply_batch(state, batch, entry_s)`` is deterministic.

State is numbers in dicts keyed by label tuples, so replay, checkpoints and tests need nothing but the
events. Counter and histogram series only ever grow; snapshot gauges keep one value per source.

The handler of each event type is generated from the drives declared in ``metrics.py`` (one function
per type, with the counter and histogram updates inlined: this is the aggregator's hot loop), plus the
few hand-written rules that drives mark ``custom``. ``python -m services.aggregator.fold TYPE`` prints
a generated handler.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.events.codec import FAST_VALIDATORS, Batch, explain_invalid
from shared.events.schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, TRACE_FIELD, TRACED_TYPES, UNMATCHED_PATH
from shared.events.streams import StreamId, format_id, parse_id

from .metrics import METRICS, METRICS_BY_NAME, OVERFLOW, Combine, Const, Drive, Kind, MetricDef

DEFAULT_SERIES_CAP = 10_000

Event = dict[str, Any]
LabelKey = tuple[str, ...]
#: Histogram series: non-cumulative bucket counts, then the +Inf count, then the sum.
HistSeries = list[float]
#: An exemplar: (trace id, observed value, the event's ``ts``).
Exemplar = tuple[str, float, float]
#: A histogram series' exemplars: the latest per bucket (its buckets, then +Inf; None: none yet).
ExemplarRow = list[Exemplar | None]


@dataclass(slots=True)
class Source:
    """What the fold knows of one source (a producer process life).

    ``last_seen`` is when Redis accepted the source's newest entry with an applied event (the entry id,
    in unix seconds): liveness and forgetting run on that one clock, never on a producer's ``ts``.
    ``last_seq`` is the highest sequence number applied (dedupe). ``stopped`` is set by
    ``source.stopped``.
    """

    service: str
    version: str
    last_seen: float
    last_seq: int = 0
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of the fold state (documented in docs/reliability.md).

    Parameters:
        series_cap: label sets per metric; beyond it, the metric's overflow series.
        routes: the route table (``BOILERHOUSE_HTTP_ROUTES``); None keeps every valid route template.
        max_sources: sources kept; beyond it, the longest silent are forgotten (checked on the forget grid).
        clock_skew_s: an event whose ``ts`` is further than this from its entry's time is counted as skewed.
        seq_jump_base: a sequence jump larger than this plus ``seq_jump_rate`` per second since the
            source's previous entry is not something the source could have sent: the event is rejected.
    """

    series_cap: int = DEFAULT_SERIES_CAP
    #: The route table: the templates an ``http.request``'s ``path`` may keep as its label; any other
    #: becomes ``<unmatched>`` (see :func:`route_label`). None: every valid template is kept.
    routes: frozenset[str] | None = None
    max_sources: int = 100_000
    clock_skew_s: float = 300.0
    seq_jump_base: int = 1_000_000
    seq_jump_rate: int = 1_000_000


class State:
    """Metric state as plain data.

    ``counters[name][labels] -> value``; ``hists[name][labels] -> HistSeries``;
    ``gauges[name][labels][src] -> value`` (snapshot gauges); ``sources[src] -> Source``;
    ``positions[partition]`` is the last stream id applied; ``newest_entry_s`` the time of the newest
    entry folded. ``dirty[name]`` holds the series changed since :meth:`take_dirty` (labels, or
    ``(labels, src)`` for gauges) and ``dirty_sources`` the sources, so a checkpoint writes only those.

    ``exemplars[name][labels]`` is an :data:`ExemplarRow` for each histogram series that observed an
    event carrying a ``trace_id``: the latest such event per bucket. At most one row per series of the
    histogram (so bounded by the series cap), and never checkpointed (docs/metrics.md, *Exemplars*).
    """

    __slots__ = (
        "counters",
        "dirty",
        "dirty_sources",
        "entry_s",
        "exemplars",
        "gauges",
        "hists",
        "limits",
        "newest_entry_s",
        "positions",
        "sources",
    )

    def __init__(self, series_cap: int = DEFAULT_SERIES_CAP, limits: Limits | None = None) -> None:
        self.limits = limits if limits is not None else Limits(series_cap=series_cap)
        self.counters: dict[str, dict[LabelKey, float]] = {}
        self.hists: dict[str, dict[LabelKey, HistSeries]] = {}
        self.gauges: dict[str, dict[LabelKey, dict[str, float]]] = {}
        self.exemplars: dict[str, dict[LabelKey, ExemplarRow]] = {}
        self.dirty: dict[str, set[Any]] = {}
        for m in METRICS:
            if not m.stateful:
                continue
            self.dirty[m.name] = set()
            if m.snapshot:
                self.gauges[m.name] = {}
            elif m.kind is Kind.HISTOGRAM:
                self.hists[m.name] = {}
                self.exemplars[m.name] = {}
            else:
                self.counters[m.name] = {}
        self.dirty_sources: set[str] = set()
        self.sources: dict[str, Source] = {}
        self.positions: dict[int, str] = {}
        self.newest_entry_s = 0.0
        #: The time of the entry being folded (its id): an exemplar's timestamp when the event's own
        #: ``ts`` is further from it than the clock-skew limit.
        self.entry_s = 0.0

    @property
    def series_cap(self) -> int:
        return self.limits.series_cap

    @property
    def routes(self) -> frozenset[str] | None:
        return self.limits.routes

    def live_sources(self, now: float, ttl: float) -> set[str]:
        horizon = now - ttl
        return {s for s, info in self.sources.items() if not info.stopped and info.last_seen >= horizon}

    def take_dirty(self) -> tuple[dict[str, set[Any]], set[str]]:
        """The series and sources changed since the last call; the state starts collecting anew."""
        dirty = {name: keys for name, keys in self.dirty.items() if keys}
        for name in dirty:
            self.dirty[name] = set()
        sources, self.dirty_sources = self.dirty_sources, set()
        return dirty, sources

    def give_back_dirty(self, dirty: dict[str, set[Any]], sources: set[str]) -> None:
        """Undo :meth:`take_dirty` (the checkpoint that was to write them failed)."""
        for name, keys in dirty.items():
            self.dirty[name] |= keys
        self.dirty_sources |= sources

    def drop_gauges_of(self, srcs: set[str]) -> None:
        """Remove the snapshot values of ``srcs`` from every gauge (stopped or forgotten sources)."""
        for name, per_labels in self.gauges.items():
            dirty = self.dirty[name]
            for key, per_src in per_labels.items():
                for src in srcs & per_src.keys():
                    del per_src[src]
                    dirty.add((key, src))

    def forget_sources(self, cutoff: float) -> set[str]:
        """Drop the bookkeeping of sources silent since before ``cutoff``; returns them.

        Counters are never touched: only liveness, dedupe positions and snapshot values go.
        """
        return self._forget({s for s, info in self.sources.items() if info.last_seen < cutoff})

    def evict_sources(self) -> set[str]:
        """Past ``limits.max_sources``, forget the longest-silent sources (counted); returns them."""
        excess = len(self.sources) - self.limits.max_sources
        if excess <= 0:
            return set()
        oldest = sorted(self.sources, key=lambda s: self.sources[s].last_seen)[:excess]
        inc(self, "aggregator_sources_evicted_total", (), len(oldest))
        return self._forget(set(oldest))

    def _forget(self, gone: set[str]) -> set[str]:
        if gone:
            for src in gone:
                del self.sources[src]
            self.dirty_sources |= gone
            self.drop_gauges_of(gone)
        return gone

    def vanished_by_service(self, now: float, ttl: float) -> dict[str, int]:
        """Sources silent for longer than ``ttl`` that never sent ``source.stopped`` (killed or stuck
        producers), by service, until they are forgotten."""
        horizon = now - ttl
        out: dict[str, int] = {}
        for info in self.sources.values():
            # last_seen 0: seen only through rejected events, never live, so it cannot vanish.
            if not info.stopped and 0 < info.last_seen < horizon:
                out[info.service] = out.get(info.service, 0) + 1
        return out

    def copy(self) -> State:
        """A copy that the consumer can keep mutating while the copy is rendered."""
        new = State(limits=self.limits)
        new.counters = {n: dict(d) for n, d in self.counters.items()}
        new.hists = {n: {k: list(v) for k, v in d.items()} for n, d in self.hists.items()}
        new.exemplars = {n: {k: list(v) for k, v in d.items()} for n, d in self.exemplars.items()}
        new.gauges = {n: {k: dict(v) for k, v in d.items()} for n, d in self.gauges.items()}
        new.sources = {
            s: Source(i.service, i.version, i.last_seen, i.last_seq, i.stopped)
            for s, i in self.sources.items()
        }
        new.positions = dict(self.positions)
        new.newest_entry_s = self.newest_entry_s
        return new

    @staticmethod
    def merge(states: list[State]) -> State:
        """Combine the states of several partitions (each source writes to exactly one partition)."""
        if len(states) == 1:
            return states[0]
        out = State(limits=states[0].limits if states else None)
        for st in states:
            for n, d in st.counters.items():
                target = out.counters[n]
                for k, v in d.items():
                    target[k] = target.get(k, 0) + v
            for n, dh in st.hists.items():
                target_h = out.hists[n]
                for k, h in dh.items():
                    cur = target_h.get(k)
                    target_h[k] = list(h) if cur is None else [a + b for a, b in zip(cur, h, strict=True)]
            for n, de in st.exemplars.items():
                target_e = out.exemplars[n]
                for k, row in de.items():
                    cur_e = target_e.get(k)
                    target_e[k] = list(row) if cur_e is None else merge_exemplars(cur_e, row)
            for n, dg in st.gauges.items():
                target_g = out.gauges[n]
                for k, per_src in dg.items():
                    target_g.setdefault(k, {}).update(per_src)
            out.sources.update(st.sources)
            out.positions.update(st.positions)
            out.newest_entry_s = max(out.newest_entry_s, st.newest_entry_s)
        return out


# ---- primitives (the slow paths of the generated handlers: first sighting of a series, the cap) -------


def inc(state: State, name: str, key: LabelKey, amount: float) -> None:
    series = state.counters[name]
    if key in series:
        series[key] += amount
    elif len(series) < state.series_cap or name == "aggregator_series_overflow_total":
        series[key] = amount
    else:
        key = (OVERFLOW,) * len(key)
        series[key] = series.get(key, 0) + amount
        inc(state, "aggregator_series_overflow_total", (name,), 1)
    state.dirty[name].add(key)


def _series(
    state: State, table: dict[LabelKey, Any], name: str, key: LabelKey, new: Callable[[], Any]
) -> tuple[LabelKey, Any]:
    """The series for ``key`` (and the key it is kept under), created on first use; past the cap, the
    metric's overflow series."""
    value = table.get(key)
    if value is None:
        if len(table) >= state.series_cap:
            key = (OVERFLOW,) * len(key)
            inc(state, "aggregator_series_overflow_total", (name,), 1)
            value = table.get(key)
        if value is None:
            value = table[key] = new()
    return key, value


def observe(state: State, name: str, key: LabelKey, value: float, buckets: tuple[float, ...]) -> LabelKey:
    """Observe ``value`` in the series ``key`` of histogram ``name``; returns the key the series is
    kept under (the overflow series' past the cap)."""
    table = state.hists[name]
    h = table.get(key)
    if h is None:
        width = len(buckets) + 2
        key, h = _series(state, table, name, key, lambda: [0] * width)
    h[bisect_left(buckets, value)] += 1
    h[-1] += value
    state.dirty[name].add(key)
    return key


def merge_exemplars(a: ExemplarRow, b: ExemplarRow) -> ExemplarRow:
    """Two partitions' exemplars of one series: per bucket, the later by ``ts`` (``b`` on a tie)."""
    return [x if y is None or (x is not None and x[2] > y[2]) else y for x, y in zip(a, b, strict=True)]


def set_gauge(state: State, name: str, key: LabelKey, src: str, value: float) -> None:
    table = state.gauges[name]
    per_src = table.get(key)
    if per_src is None:
        key, per_src = _series(state, table, name, key, dict)
    per_src[src] = value
    state.dirty[name].add((key, src))


def remove_gauge(state: State, name: str, key: LabelKey, src: str) -> None:
    per_src = state.gauges[name].get(key)
    if per_src is not None and src in per_src:
        del per_src[src]
        state.dirty[name].add((key, src))


# ---- custom rules (drives marked custom in metrics.py) ------------------------------------------------

Handler = Callable[[State, str, Event], None]


def _sync_errors(state: State, src: str, ev: Event) -> None:
    status = ev["status"]
    if status != "success":
        error_type = ev.get("error_type") or ("timeout" if status == "timeout" else "rclone_error")
        inc(state, "sync_errors_total", (ev["workload_id"], error_type), 1)


def _events_dropped(state: State, src: str, ev: Event) -> None:
    info = state.sources.get(src)
    inc(state, "events_dropped_total", (info.service if info else src.split(":", 1)[0],), ev["count"])


#: (metric, event type) -> the handler of a drive marked ``custom``.
CUSTOM: Mapping[tuple[str, str], Handler] = {
    ("sync_errors_total", "sync.finished"): _sync_errors,
    ("events_dropped_total", "events.dropped"): _events_dropped,
}


# ---- source lifecycle (not metrics: what liveness and the snapshot gauges rest on) --------------------


def _source_started(state: State, src: str, ev: Event) -> None:
    info = state.sources.get(src)
    if info is None:
        state.sources[src] = Source(ev["service"], ev["version"], 0.0)  # apply_batch sets last_seen
    else:
        info.service, info.version = ev["service"], ev["version"]


def _source_stopped(state: State, src: str, ev: Event) -> None:
    info = state.sources.get(src)
    if info is None:  # its first entry: it stopped without a source.started we saw
        info = state.sources[src] = Source(src.split(":", 1)[0], "", 0.0)
    info.stopped = True
    state.drop_gauges_of({src})  # a stopped source contributes nothing any more


LIFECYCLE: Mapping[str, Handler] = {"source.started": _source_started, "source.stopped": _source_stopped}


# ---- the route table (the ``path`` label) -------------------------------------------------------------

#: The event field that becomes a label only through the route table: (event type, field).
ROUTE_FIELD = ("http.request", "path")


def route_label(state: State, path: str) -> str:
    """The ``path`` label of a valid ``http.request``: its template if the route table has it (or there
    is no table), else ``<unmatched>``, counted in ``aggregator_unknown_routes_total``.

    The validator already refused anything that is not a route template (docs/events.md); this keeps
    templates the API does not have (a tenant id sent as a literal segment) out of the labels.
    """
    routes = state.routes
    if routes is None or path in routes or path == UNMATCHED_PATH:
        return path
    inc(state, "aggregator_unknown_routes_total", (), 1)
    return UNMATCHED_PATH


# ---- handler generation -----------------------------------------------------------------------------


def _label_exprs(m: MetricDef, d: Drive) -> list[str]:
    fields = {f.name: f for f in EVENT_TYPES_BY_NAME[d.event].fields}
    exprs = []
    for label, origin in zip(m.labels, d.labels if d.labels is not None else m.labels, strict=True):
        if isinstance(origin, Const):
            exprs.append(repr(origin.value))
            continue
        f = fields.get(origin)
        if f is None:
            raise AssertionError(f"{m.name}: label {label} reads {d.event}.{origin}, which the schema lacks")
        if (d.event, origin) == ROUTE_FIELD:
            exprs.append("route")  # computed once per event by the handler's first line
        else:
            exprs.append(f"_int_text(ev[{origin!r}])" if f.kind == "int" else f"ev[{origin!r}]")
    return exprs


def _drive_lines(m: MetricDef, d: Drive, env: dict[str, Any], n: int) -> list[str]:
    """Source lines applying drive ``d`` of metric ``m`` (indented by two spaces)."""
    if d.custom:
        env[f"_custom{n}"] = CUSTOM[(m.name, d.event)]
        return [f"  _custom{n}(state, src, ev)"]
    exprs = _label_exprs(m, d)
    key = f"({exprs[0]},)" if len(exprs) == 1 else f"({', '.join(exprs)})"
    value = f"ev[{d.value!r}]" if d.value is not None else "1"
    lines = [f"  key = {key}"]
    if m.snapshot:
        fn = "_remove_gauge" if d.removes else "_set_gauge"
        lines.append(f"  {fn}(state, {m.name!r}, key, src{'' if d.removes else ', ' + value})")
    elif m.kind is Kind.HISTOGRAM:
        # The common case inlined: an existing series (the slow path creates it, or folds it into the
        # overflow series, and marks it changed).
        env[f"_b{n}"] = m.buckets
        lines += [
            f"  h = state.hists[{m.name!r}].get(key)",
            f"  v = {value}",
            f"  i = _bisect(_b{n}, v)  # the bucket: counted below, and an exemplar's place",
            "  if h is None:",
            f"    key = _observe(state, {m.name!r}, key, v, _b{n})",
            "  else:",
            "    h[i] += 1",
            "    h[-1] += v",
            f"    dirty[{m.name!r}].add(key)",
        ]
        if d.event in TRACED_TYPES:
            # The event's trace id, if it carries one, becomes the exemplar of the bucket the value fell
            # in (the smallest le >= value) of the series it was counted in: one row per existing series.
            lines += [
                f"  tid = ev.get({TRACE_FIELD!r})",
                "  if tid is not None:",
                f"    ex = state.exemplars[{m.name!r}]",
                "    row = ex.get(key)",
                "    if row is None:",
                f"      row = ex[key] = [None] * {len(m.buckets or ()) + 1}",
                "    ts = ev['ts']",
                "    if abs(ts - state.entry_s) > state.limits.clock_skew_s:",
                "      ts = state.entry_s  # a skewed clock: Prometheus drops out-of-order exemplars",
                "    row[i] = (tid, v, ts)",
            ]
    else:
        lines += [
            "  try:",
            f"    state.counters[{m.name!r}][key] += {value}",
            f"    dirty[{m.name!r}].add(key)",
            "  except KeyError:",
            f"    _inc(state, {m.name!r}, key, {value})",
        ]
    if d.when is not None:
        field_, wanted = d.when
        lines = [f"  if ev[{field_!r}] == {wanted!r}:"] + ["  " + line for line in lines]
    return lines


_INT_TEXT = {code: str(code) for code in range(100, 600)}


def _int_text(value: int) -> str:
    return _INT_TEXT.get(value) or str(value)


def generate_handler(event_type: str) -> tuple[Handler, str]:
    """The handler of ``event_type`` generated from the drives of every metric, and its source text."""
    env: dict[str, Any] = {
        "_inc": inc,
        "_observe": observe,
        "_set_gauge": set_gauge,
        "_remove_gauge": remove_gauge,
        "_bisect": bisect_left,
        "_int_text": _int_text,
        "_route_label": route_label,
    }
    lines = ["def handle(state, src, ev):", "  dirty = state.dirty"]
    if event_type == ROUTE_FIELD[0]:
        lines.append(f"  route = _route_label(state, ev[{ROUTE_FIELD[1]!r}])")
    if event_type in LIFECYCLE:
        env["_lifecycle"] = LIFECYCLE[event_type]
        lines.append("  _lifecycle(state, src, ev)")
    n = 0
    for m in METRICS:
        if not m.stateful:
            continue
        for d in m.drives:
            if d.event == event_type:
                lines.append(f"  # {m.name}")
                lines += _drive_lines(m, d, env, n)
                n += 1
    if len(lines) == 2:
        lines[1] = "  pass  # a sign of life only: every applied event refreshes its source"
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<handler of {event_type}>", "exec"), env)  # noqa: S102  (generated from metrics.py only)
    handler: Handler = env["handle"]
    handler.__qualname__ = f"handle[{event_type}]"
    return handler, source


def _check_definitions() -> None:
    """Every drive names a known event type and numeric value field; every custom drive has a handler."""
    for m in METRICS:
        for d in m.drives:
            et = EVENT_TYPES_BY_NAME.get(d.event)
            if et is None:
                raise AssertionError(f"{m.name}: drive by unknown event type {d.event!r}")
            kinds = {f.name: f.kind for f in et.fields}
            if d.value is not None and kinds.get(d.value) not in ("int", "float"):
                raise AssertionError(f"{m.name}: value field {d.event}.{d.value} is not a number")
            if d.custom and (m.name, d.event) not in CUSTOM:
                raise AssertionError(f"{m.name}: custom drive by {d.event} has no handler in CUSTOM")
            if d.removes and not m.snapshot:
                raise AssertionError(f"{m.name}: only snapshot gauges have removing drives")
        if m.snapshot and m.kind is not Kind.GAUGE:
            raise AssertionError(f"{m.name}: {m.combine} needs a gauge")
        if m.kind is Kind.HISTOGRAM and not m.buckets:
            raise AssertionError(f"{m.name}: a histogram needs buckets")
        if (m.combine is Combine.SCRAPE) != (m.read is not None):
            raise AssertionError(f"{m.name}: scrape-time metrics and only they have a read function")
        if m.count_of is not None and METRICS_BY_NAME[m.count_of].labels != m.labels:
            raise AssertionError(f"{m.name}: count_of {m.count_of} must have the same labels")


_check_definitions()
_GENERATED = {et.name: generate_handler(et.name) for et in EVENT_TYPES}
HANDLERS: Mapping[str, Handler] = {name: h for name, (h, _) in _GENERATED.items()}
HANDLER_SOURCE: Mapping[str, str] = {name: src for name, (_, src) in _GENERATED.items()}


# ---- one batch --------------------------------------------------------------------------------------

#: An event that could not be applied: (reason, detail, the event as received).
Rejected = tuple[str, str, Any]


def apply_batch(state: State, batch: Batch, entry_s: float) -> list[Rejected]:
    """Fold one decoded entry, accepted by Redis at ``entry_s`` (its id, unix seconds), into ``state``;
    return the events that were invalid (to dead-letter).

    Events at or below the source's last applied ``seq`` are duplicates and skipped; a jump in ``seq``
    is counted in ``events_lost_total{reason="seq_gap"}``, unless it is larger than the source could
    have sent since its previous entry (:class:`Limits`): such an event is rejected as ``seq_jump`` and
    the source's position does not move. An event whose ``ts`` is far from ``entry_s`` is applied and
    counted as clock skew; ``ts`` drives nothing else (an exemplar of such an event carries
    ``entry_s`` instead of it).
    """
    state.entry_s = entry_s
    src = batch.src
    info = state.sources.get(src)
    last = info.last_seq if info is not None else 0
    limits = state.limits
    # The largest gap this source could have made since its previous entry (a first entry: the base).
    elapsed = max(0.0, entry_s - info.last_seen) if info is not None else 0.0
    max_jump = limits.seq_jump_base + limits.seq_jump_rate * elapsed
    rejected: list[Rejected] = []
    per_type: dict[str, int] = {}
    lo_ts, hi_ts = entry_s, entry_s
    duplicates = 0
    gap = 0
    fast_validators, handlers = FAST_VALIDATORS, HANDLERS
    for ev in batch.events:
        # Fast path: one generated check per type (see codec.py); the readable one explains rejects.
        # Decoded events are plain dicts, lists, strings or numbers: a non-dict or an unknown or
        # unhashable type fails the lookup.
        try:
            type_ = ev["type"]
            valid = fast_validators[type_](ev)
        except (KeyError, TypeError, IndexError):
            valid = False
        if not valid:
            problem = explain_invalid(ev)
            if problem is not None:
                rejected.append((problem[0], problem[1], ev))
                seq = ev.get("seq") if type(ev) is dict else None
                # An invalid event still took its place in the sequence (unless the jump is implausible).
                if type(seq) is int and seq > last and not (last and seq - last > max_jump):
                    gap += seq - last - 1
                    last = seq
                continue
            type_ = ev["type"]  # valid after all (the readable checks have the last word)
        seq = ev["seq"]
        if seq <= last:
            duplicates += 1
            continue
        if seq != last + 1:
            if last and seq - last > max_jump:
                rejected.append(
                    (
                        "seq_jump",
                        f"seq {seq} is {seq - last} past {last}, more than the source could send",
                        ev,
                    )
                )
                continue
            gap += seq - last - 1
        last = seq
        handlers[type_](state, src, ev)
        per_type[type_] = per_type.get(type_, 0) + 1
        ts = ev["ts"]
        if ts < lo_ts:
            lo_ts = ts
        elif ts > hi_ts:
            hi_ts = ts
    if per_type:
        applied = state.counters["aggregator_events_applied_total"]
        dirty = state.dirty["aggregator_events_applied_total"]
        for type_, n in per_type.items():
            key = (type_,)
            applied[key] = applied.get(key, 0) + n
            dirty.add(key)
        if hi_ts - entry_s > limits.clock_skew_s or entry_s - lo_ts > limits.clock_skew_s:
            _count_skew(state, batch, entry_s)
    if gap:
        inc(state, "events_lost_total", ("seq_gap",), gap)
    if duplicates:
        inc(state, "aggregator_duplicates_total", (), duplicates)
    info = state.sources.get(src)  # source.started or source.stopped may have created it
    if info is None:
        if not per_type and not rejected:
            return rejected  # duplicates only: nothing new about a source we do not know
        # Seen only through rejected events: known (their seqs count), but never live.
        info = state.sources[src] = Source(src.split(":", 1)[0], "", entry_s if per_type else 0.0)
    info.last_seq = last
    if per_type:
        info.last_seen = entry_s
    state.dirty_sources.add(src)
    state.newest_entry_s = max(state.newest_entry_s, entry_s)
    return rejected


def _count_skew(state: State, batch: Batch, entry_s: float) -> None:
    """Count the events of ``batch`` whose ``ts`` is further than the limit from the entry's time."""
    skew = state.limits.clock_skew_s
    for ev in batch.events:
        ts = ev.get("ts") if type(ev) is dict else None
        if isinstance(ts, int | float):
            if ts - entry_s > skew:
                inc(state, "aggregator_clock_skew_events_total", ("ahead",), 1)
            elif entry_s - ts > skew:
                inc(state, "aggregator_clock_skew_events_total", ("behind",), 1)


def apply_all(state: State, batches: Iterable[Batch], entry_s: float) -> State:
    """Fold ``batches`` as if Redis accepted them all at ``entry_s`` (tests and tools)."""
    for batch in batches:
        apply_batch(state, batch, entry_s)
    return state


def record_dead_letter(state: State, reason: str, count: int = 1) -> None:
    inc(state, "aggregator_dead_letters_total", (reason,), count)


def record_lost(state: State, reason: str, count: int) -> None:
    if count > 0:
        inc(state, "events_lost_total", (reason,), count)


# ---- attributing gaps to trimming -------------------------------------------------------------------


class TrimWindow:
    """Sources whose next sequence gap is attributed to entries trimmed before they were read.

    Opened when the consumer sees that entries it had not read were removed (and by replay and rebuild
    when the stream they fold from the start lost entries). Each source's first batch after that is
    checked: its gap, if any, is what the trim took. The window stays open until every source known at
    the detection (``suspects``) was seen again or forgotten, and the fold has reached the stream's last
    entry at the detection (``until``), so sources first seen in that backlog are checked too.
    """

    __slots__ = ("handled_deleted", "open", "seen", "suspects", "until")

    def __init__(self) -> None:
        self.suspects: set[str] = set()
        self.seen: set[str] = set()
        self.open = False
        self.until: StreamId = (0, 0)
        #: The stream's max-deleted-entry-id already accounted for.
        self.handled_deleted: StreamId = (0, 0)

    def start(self, known: Iterable[str], until: StreamId) -> None:
        self.suspects = set(known)
        self.seen = set()
        self.until = max(self.until, until) if self.open else until
        self.open = True

    def attribute(self, state: State, batch: Batch, position: StreamId) -> None:
        """Before ``batch`` (at stream ``position``) is folded: if it is its source's first since the
        window opened, count the gap in front of it as trimmed."""
        if not self.open:
            return
        src = batch.src
        if src not in self.seen:
            self.seen.add(src)
            self.suspects.discard(src)
            _count_trimmed_gap(state, batch, position[0] / 1000)
        if not self.suspects and position >= self.until:
            self.open = False
            self.seen = set()

    def forget(self, srcs: set[str]) -> None:
        if self.open:
            self.suspects -= srcs
            self.seen -= srcs

    def to_data(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "suspects": sorted(self.suspects),
            "seen": sorted(self.seen),
            "until": format_id(self.until),
            "handled_deleted": format_id(self.handled_deleted),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any] | None) -> TrimWindow:
        w = cls()
        if data:
            w.open = bool(data.get("open"))
            w.suspects = set(data.get("suspects", ()))
            w.seen = set(data.get("seen", ()))
            w.until = parse_id(data.get("until", "0-0"))
            w.handled_deleted = parse_id(data.get("handled_deleted", "0-0"))
        return w


def _count_trimmed_gap(state: State, batch: Batch, entry_s: float) -> None:
    """Count the gap before ``batch`` (in its source's ``seq``) as lost to trimming, and advance the
    source's ``last_seq`` so that :func:`apply_batch` does not count it again as a ``seq_gap``."""
    info = state.sources.get(batch.src)
    last = info.last_seq if info is not None else 0
    for ev in batch.events:
        seq = ev.get("seq") if type(ev) is dict else None
        if type(seq) is int and seq > last:
            if seq > last + 1:
                record_lost(state, "trimmed", seq - last - 1)
                if info is None:
                    info = state.sources[batch.src] = Source(batch.src.split(":", 1)[0], "", entry_s)
                info.last_seq = seq - 1
                state.dirty_sources.add(batch.src)
            return


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(HANDLER_SOURCE):
        sys.stdout.write(f"# {name}\n{HANDLER_SOURCE[name]}\n")
