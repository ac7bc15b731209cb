"""Folding events into plain-data metric state: ``apply_batch(state, batch)`` is deterministic.

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
from shared.events.schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, UNMATCHED_PATH
from shared.events.streams import StreamId, format_id, parse_id

from .metrics import METRICS, METRICS_BY_NAME, OVERFLOW, Combine, Const, Drive, Kind, MetricDef

DEFAULT_SERIES_CAP = 10_000

Event = dict[str, Any]
LabelKey = tuple[str, ...]
#: Histogram series: non-cumulative bucket counts, then the +Inf count, then the sum.
HistSeries = list[float]


@dataclass(slots=True)
class Source:
    """What the fold knows of one source (a producer process life).

    ``last_seen`` is the newest event timestamp of the source; ``stopped`` is set by ``source.stopped``.
    """

    service: str
    version: str
    last_seen: float
    stopped: bool = False


class State:
    """Metric state as plain data.

    ``counters[name][labels] -> value``; ``hists[name][labels] -> HistSeries``;
    ``gauges[name][labels][src] -> value`` (snapshot gauges); ``sources[src] -> Source``;
    ``last_seq[src]`` for dedupe; ``positions[partition]`` is the last stream id applied.
    """

    __slots__ = (
        "counters",
        "gauges",
        "hists",
        "last_seq",
        "newest_ts",
        "positions",
        "routes",
        "series_cap",
        "sources",
    )

    def __init__(self, series_cap: int = DEFAULT_SERIES_CAP) -> None:
        self.counters: dict[str, dict[LabelKey, float]] = {}
        self.hists: dict[str, dict[LabelKey, HistSeries]] = {}
        self.gauges: dict[str, dict[LabelKey, dict[str, float]]] = {}
        for m in METRICS:
            if not m.stateful:
                continue
            if m.snapshot:
                self.gauges[m.name] = {}
            elif m.kind is Kind.HISTOGRAM:
                self.hists[m.name] = {}
            else:
                self.counters[m.name] = {}
        self.sources: dict[str, Source] = {}
        self.last_seq: dict[str, int] = {}
        self.positions: dict[int, str] = {}
        self.newest_ts = 0.0
        self.series_cap = series_cap
        #: The route table: the templates an ``http.request``'s ``path`` may keep as its label; any other
        #: becomes ``<unmatched>`` (see :func:`route_label`). None: every valid template is kept. Set by
        #: the ingest step from the aggregator's settings; like ``series_cap``, not checkpointed.
        self.routes: frozenset[str] | None = None

    def live_sources(self, now: float, ttl: float) -> set[str]:
        horizon = now - ttl
        return {s for s, info in self.sources.items() if not info.stopped and info.last_seen >= horizon}

    def drop_gauges_of(self, srcs: set[str]) -> None:
        """Remove the snapshot values of ``srcs`` from every gauge (stopped or forgotten sources)."""
        for per_labels in self.gauges.values():
            for per_src in per_labels.values():
                for src in srcs & per_src.keys():
                    del per_src[src]

    def forget_sources(self, cutoff: float) -> set[str]:
        """Drop the bookkeeping of sources silent since before ``cutoff``; returns them.

        Counters are never touched: only liveness, dedupe positions and snapshot values go.
        """
        gone = {s for s, info in self.sources.items() if info.last_seen < cutoff}
        if gone:
            for src in gone:
                del self.sources[src]
                self.last_seq.pop(src, None)
            self.drop_gauges_of(gone)
        return gone

    def copy(self) -> State:
        """A copy that the consumer can keep mutating while the copy is rendered."""
        new = State(self.series_cap)
        new.routes = self.routes
        new.counters = {n: dict(d) for n, d in self.counters.items()}
        new.hists = {n: {k: list(v) for k, v in d.items()} for n, d in self.hists.items()}
        new.gauges = {n: {k: dict(v) for k, v in d.items()} for n, d in self.gauges.items()}
        new.sources = {
            s: Source(i.service, i.version, i.last_seen, i.stopped) for s, i in self.sources.items()
        }
        new.last_seq = dict(self.last_seq)
        new.positions = dict(self.positions)
        new.newest_ts = self.newest_ts
        return new

    @staticmethod
    def merge(states: list[State]) -> State:
        """Combine the states of several partitions (each source writes to exactly one partition)."""
        if len(states) == 1:
            return states[0]
        out = State(states[0].series_cap if states else DEFAULT_SERIES_CAP)
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
            for n, dg in st.gauges.items():
                target_g = out.gauges[n]
                for k, per_src in dg.items():
                    target_g.setdefault(k, {}).update(per_src)
            out.sources.update(st.sources)
            out.last_seq.update(st.last_seq)
            out.positions.update(st.positions)
            out.newest_ts = max(out.newest_ts, st.newest_ts)
        return out


# ---- primitives (the slow paths of the generated handlers: first sighting of a series, the cap) -------


def inc(state: State, name: str, key: LabelKey, amount: float) -> None:
    series = state.counters[name]
    try:
        series[key] += amount  # the common case: an existing series (one lookup, one store)
        return
    except KeyError:
        pass
    if len(series) < state.series_cap or name == "aggregator_series_overflow_total":
        series[key] = amount
    else:
        overflow = (OVERFLOW,) * len(key)
        series[overflow] = series.get(overflow, 0) + amount
        inc(state, "aggregator_series_overflow_total", (name,), 1)


def _series(
    state: State, table: dict[LabelKey, Any], name: str, key: LabelKey, new: Callable[[], Any]
) -> Any:
    """The series for ``key``, created on first use; past the cap, the metric's overflow series."""
    value = table.get(key)
    if value is None:
        if len(table) >= state.series_cap:
            key = (OVERFLOW,) * len(key)
            inc(state, "aggregator_series_overflow_total", (name,), 1)
            value = table.get(key)
        if value is None:
            value = table[key] = new()
    return value


def observe(state: State, name: str, key: LabelKey, value: float, buckets: tuple[float, ...]) -> None:
    table = state.hists[name]
    h = table.get(key)
    if h is None:
        width = len(buckets) + 2
        h = _series(state, table, name, key, lambda: [0] * width)
    h[bisect_left(buckets, value)] += 1
    h[-1] += value


def set_gauge(state: State, name: str, key: LabelKey, src: str, value: float) -> None:
    table = state.gauges[name]
    per_src = table.get(key)
    if per_src is None:
        per_src = _series(state, table, name, key, dict)
    per_src[src] = value


def remove_gauge(state: State, name: str, key: LabelKey, src: str) -> None:
    per_src = state.gauges[name].get(key)
    if per_src is not None:
        per_src.pop(src, None)


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
        state.sources[src] = Source(ev["service"], ev["version"], ev["ts"])
    else:
        info.service, info.version = ev["service"], ev["version"]


def _source_stopped(state: State, src: str, ev: Event) -> None:
    info = state.sources.get(src)
    if info is not None:
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
        env[f"_b{n}"] = m.buckets
        lines += [
            f"  h = state.hists[{m.name!r}].get(key)",
            f"  v = {value}",
            "  if h is None:",
            f"    _observe(state, {m.name!r}, key, v, _b{n})",
            "  else:",
            f"    h[_bisect(_b{n}, v)] += 1",
            "    h[-1] += v",
        ]
    else:
        lines += [
            "  try:",
            f"    state.counters[{m.name!r}][key] += {value}",
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
    lines = ["def handle(state, src, ev):"]
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
    if len(lines) == 1:
        lines.append("  pass  # a sign of life only: every applied event refreshes its source")
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


def apply_batch(state: State, batch: Batch) -> list[Rejected]:
    """Fold one decoded entry into ``state``; return the events that were invalid (to dead-letter).

    Events at or below the source's last applied ``seq`` are duplicates and skipped; a jump in
    ``seq`` is counted in ``events_lost_total{reason="seq_gap"}``.
    """
    src = batch.src
    last = state.last_seq.get(src, 0)
    rejected: list[Rejected] = []
    per_type: dict[str, int] = {}
    newest = 0.0
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
                if type(seq) is int and seq > last:  # an invalid event still took its place in the sequence
                    gap += seq - last - 1
                    last = seq
                continue
            type_ = ev["type"]  # valid after all (the readable checks have the last word)
        seq = ev["seq"]
        if seq <= last:
            duplicates += 1
            continue
        if seq != last + 1:
            gap += seq - last - 1
        last = seq
        handlers[type_](state, src, ev)
        per_type[type_] = per_type.get(type_, 0) + 1
        ts = ev["ts"]
        newest = max(newest, ts)
    if per_type:
        applied = state.counters["aggregator_events_applied_total"]
        for type_, n in per_type.items():
            key = (type_,)
            applied[key] = applied.get(key, 0) + n
    if gap:
        inc(state, "events_lost_total", ("seq_gap",), gap)
    if duplicates:
        inc(state, "aggregator_duplicates_total", (), duplicates)
    state.last_seq[src] = last
    if newest:
        info = state.sources.get(src)
        if info is None:  # first seen mid-life (its source.started was trimmed or is elsewhere)
            state.sources[src] = Source(src.split(":", 1)[0], "", newest)
        elif newest > info.last_seen:
            info.last_seen = newest
        state.newest_ts = max(state.newest_ts, newest)
    return rejected


def apply_all(state: State, batches: Iterable[Batch]) -> State:
    for batch in batches:
        apply_batch(state, batch)
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
            _count_trimmed_gap(state, batch)
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


def _count_trimmed_gap(state: State, batch: Batch) -> None:
    """Count the gap before ``batch`` (in its source's ``seq``) as lost to trimming, and advance the
    source's ``last_seq`` so that :func:`apply_batch` does not count it again as a ``seq_gap``."""
    last = state.last_seq.get(batch.src, 0)
    for ev in batch.events:
        seq = ev.get("seq") if type(ev) is dict else None
        if type(seq) is int and seq > last:
            if seq > last + 1:
                record_lost(state, "trimmed", seq - last - 1)
                state.last_seq[batch.src] = seq - 1
            return


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(HANDLER_SOURCE):
        sys.stdout.write(f"# {name}\n{HANDLER_SOURCE[name]}\n")
