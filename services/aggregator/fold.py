"""Folding events into plain-data metric state: ``apply_batch(state, batch)`` is deterministic.

State is numbers in dicts keyed by label tuples, so replay, checkpoints and tests need nothing but
the events. Counter and histogram series only ever grow; snapshot gauges keep one value per source.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from shared.events.codec import FAST_VALIDATORS, Batch, explain_invalid
from shared.events.streams import StreamId, format_id, parse_id

from .metrics import COUNTER, GAUGE, HISTOGRAM, METRICS, METRICS_BY_NAME, OVERFLOW, MetricDef

# Indices into State.sources[src].
SERVICE, VERSION, START_TIME, LAST_SEEN, STOPPED = range(5)

DEFAULT_SERIES_CAP = 10_000


class State:
    """Metric state as plain data.

    ``counters[name][labels] -> value``; ``hists[name][labels] -> [bucket counts..., +Inf count, sum]``
    (non-cumulative); ``gauges[name][labels][src] -> value``; ``sources[src] -> [service, version,
    start_time_s, last_seen_ts, stopped]``; ``last_seq[src]`` for dedupe; ``positions[partition]`` is the
    last stream id applied.
    """

    __slots__ = ("counters", "gauges", "hists", "last_seq", "newest_ts", "positions", "series_cap", "sources")

    def __init__(self, series_cap: int = DEFAULT_SERIES_CAP) -> None:
        self.counters: dict[str, dict[tuple[str, ...], float]] = {}
        self.hists: dict[str, dict[tuple[str, ...], list[float]]] = {}
        self.gauges: dict[str, dict[tuple[str, ...], dict[str, float]]] = {}
        for m in METRICS:
            if m.kind == COUNTER and m.derived_from is None:
                self.counters[m.name] = {}
            elif m.kind == HISTOGRAM:
                self.hists[m.name] = {}
            elif m.source == "snapshot":
                self.gauges[m.name] = {}
        self.sources: dict[str, list[Any]] = {}
        self.last_seq: dict[str, int] = {}
        self.positions: dict[int, str] = {}
        self.newest_ts = 0.0
        self.series_cap = series_cap

    # ---- plain-data round trip (checkpoints) ------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        def items(d: dict[tuple[str, ...], Any]) -> list[list[Any]]:
            return [[list(k), v] for k, v in d.items()]

        return {
            "counters": {n: items(d) for n, d in self.counters.items()},
            "hists": {n: items(d) for n, d in self.hists.items()},
            "gauges": {n: items(d) for n, d in self.gauges.items()},
            "sources": self.sources,
            "last_seq": self.last_seq,
            "positions": {str(p): i for p, i in self.positions.items()},
            "newest_ts": self.newest_ts,
        }

    @classmethod
    def from_data(cls, data: dict[str, Any], series_cap: int = DEFAULT_SERIES_CAP) -> State:
        state = cls(series_cap)
        for attr in ("counters", "hists", "gauges"):
            target = getattr(state, attr)
            for name, rows in data.get(attr, {}).items():
                if name in target:  # a metric removed from the mapping is dropped
                    target[name] = {tuple(k): v for k, v in rows}
        state.sources = {k: list(v) for k, v in data.get("sources", {}).items()}
        state.last_seq = dict(data.get("last_seq", {}))
        state.positions = {int(p): i for p, i in data.get("positions", {}).items()}
        state.newest_ts = data.get("newest_ts", 0.0)
        return state

    # ---- queries used by exposition --------------------------------------------------------------

    def live_sources(self, now: float, ttl: float) -> set[str]:
        horizon = now - ttl
        return {s for s, info in self.sources.items() if not info[STOPPED] and info[LAST_SEEN] >= horizon}


def _series(
    state: State,
    table: dict[str, dict[tuple[str, ...], Any]],
    name: str,
    key: tuple[str, ...],
    new: Callable[[], Any],
) -> Any:
    """The series for ``key``, created on first use; past the cap, the metric's overflow series."""
    series = table[name]
    value = series.get(key)
    if value is None:
        if len(series) >= state.series_cap:
            key = (OVERFLOW,) * len(key)
            _inc(state, "aggregator_series_overflow_total", (name,), 1)
            value = series.get(key)
        if value is None:
            value = series[key] = new()
    return value


def _inc(state: State, name: str, key: tuple[str, ...], amount: float) -> None:
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
        _inc(state, "aggregator_series_overflow_total", (name,), 1)


def _make_observe(m: MetricDef) -> Callable[[State, tuple[str, ...], float], None]:
    name, buckets = m.name, m.buckets
    assert buckets is not None
    width = len(buckets) + 2

    def new() -> list[float]:
        return [0] * width

    def observe(state: State, key: tuple[str, ...], value: float) -> None:
        series = state.hists[name]
        h = series.get(key)
        if h is None:
            h = _series(state, state.hists, name, key, new)
        h[bisect_left(buckets, value)] += 1
        h[-1] += value

    return observe


_OBSERVE = {m.name: _make_observe(m) for m in METRICS if m.kind == HISTOGRAM}
_ACQUIRE_BUCKETS = METRICS_BY_NAME["container_acquire_duration_seconds"].buckets
_HTTP_BUCKETS = METRICS_BY_NAME["http_request_duration_seconds"].buckets
_acquire = _OBSERVE["container_acquire_duration_seconds"]
_release = _OBSERVE["container_release_duration_seconds"]
_create = _OBSERVE["container_create_duration_seconds"]
_destroy = _OBSERVE["container_destroy_duration_seconds"]
_wipe = _OBSERVE["container_wipe_duration_seconds"]
_sync_duration = _OBSERVE["sync_duration_seconds"]
_http_duration = _OBSERVE["http_request_duration_seconds"]

_POOL_GAUGES = (
    ("pool_size", "size"),
    ("pool_available", "available"),
    ("pool_borrowed", "borrowed"),
    ("pool_pending", "pending"),
    ("pool_min_size", "min_size"),
    ("pool_max_size", "max_size"),
    ("pool_target_size", "target_size"),
)
_SYNC_GAUGES = (
    ("sync_concurrent_operations", "running"),
    ("sync_queue_length", "queued"),
    ("sync_periodic_jobs_active", "periodic_jobs"),
)


def _set_gauge(state: State, name: str, key: tuple[str, ...], src: str, value: float) -> None:
    per_src = state.gauges[name].get(key)
    if per_src is None:
        per_src = _series(state, state.gauges, name, key, dict)
    per_src[src] = value


# ---- handlers: one per event type -------------------------------------------------------------------

Handler = Callable[[State, str, dict[str, Any]], None]


def _source_started(state: State, src: str, ev: dict[str, Any]) -> None:
    info = state.sources.get(src)
    if info is None:
        info = state.sources[src] = [ev["service"], ev["version"], 0.0, ev["ts"], False]
    info[SERVICE], info[VERSION], info[START_TIME] = ev["service"], ev["version"], float(ev["start_time_s"])


def _source_stopped(state: State, src: str, ev: dict[str, Any]) -> None:
    info = state.sources.get(src)
    if info is not None:
        info[STOPPED] = True
    for per_labels in state.gauges.values():  # a stopped source contributes nothing any more
        for per_src in per_labels.values():
            per_src.pop(src, None)


def _events_dropped(state: State, src: str, ev: dict[str, Any]) -> None:
    info = state.sources.get(src)
    _inc(state, "events_dropped_total", (info[SERVICE] if info else src.split(":", 1)[0],), ev["count"])


def _pool_state(state: State, src: str, ev: dict[str, Any]) -> None:
    key = (ev["pool_id"], ev["workload_id"])
    for name, field in _POOL_GAUGES:
        _set_gauge(state, name, key, src, ev[field])
    _set_gauge(state, "affinity_reservations", (ev["pool_id"],), src, ev["affinity_reservations"])


def _pool_removed(state: State, src: str, ev: dict[str, Any]) -> None:
    key = (ev["pool_id"], ev["workload_id"])
    for name, _ in _POOL_GAUGES:
        per_src = state.gauges[name].get(key)
        if per_src is not None:
            per_src.pop(src, None)
    per_src = state.gauges["affinity_reservations"].get((ev["pool_id"],))
    if per_src is not None:
        per_src.pop(src, None)


def _container_acquired(state: State, src: str, ev: dict[str, Any]) -> None:
    pool = ev["pool_id"]
    # Inlined observe and inc (the hottest handlers; see docs/performance.md); same effect as
    # _acquire(...) and _inc(...), which handle the first sighting of a series and the series cap.
    key = (pool, ev["status"])
    h = state.hists["container_acquire_duration_seconds"].get(key)
    value = ev["duration_s"]
    if h is None:
        _acquire(state, key, value)
    else:
        h[bisect_left(_ACQUIRE_BUCKETS, value)] += 1  # type: ignore[arg-type]
        h[-1] += value
    _inc(state, "affinity_hits_total" if ev["affinity"] == "hit" else "affinity_misses_total", (pool,), 1)


def _container_released(state: State, src: str, ev: dict[str, Any]) -> None:
    _release(state, (ev["pool_id"], ev["status"]), ev["duration_s"])


def _container_created(state: State, src: str, ev: dict[str, Any]) -> None:
    _create(state, (ev["pool_id"], ev["workload_id"]), ev["duration_s"])
    _inc(state, "container_operations_total", (ev["pool_id"], "create", ev["status"]), 1)


def _container_destroyed(state: State, src: str, ev: dict[str, Any]) -> None:
    _destroy(state, (ev["pool_id"],), ev["duration_s"])
    _inc(state, "container_operations_total", (ev["pool_id"], "destroy", ev["status"]), 1)


def _container_wiped(state: State, src: str, ev: dict[str, Any]) -> None:
    _wipe(state, (ev["pool_id"],), ev["duration_s"])
    _inc(state, "container_operations_total", (ev["pool_id"], "wipe", ev["status"]), 1)


def _health_check_failed(state: State, src: str, ev: dict[str, Any]) -> None:
    _inc(state, "container_health_check_failures_total", (ev["pool_id"],), 1)


def _affinity_evicted(state: State, src: str, ev: dict[str, Any]) -> None:
    _inc(state, "affinity_evictions_total", (ev["pool_id"],), 1)


def _sync_finished(state: State, src: str, ev: dict[str, Any]) -> None:
    workload, direction, status = ev["workload_id"], ev["direction"], ev["status"]
    _inc(state, "sync_operations_total", (workload, direction, status), 1)
    _sync_duration(state, (workload, direction, ev["mode"]), ev["duration_s"])
    _inc(state, "sync_bytes_transferred_total", (workload, direction), ev["bytes"])
    _inc(state, "sync_files_transferred_total", (workload, direction), ev["files"])
    if status != "success":
        error_type = ev.get("error_type") or ("timeout" if status == "timeout" else "rclone_error")
        _inc(state, "sync_errors_total", (workload, error_type), 1)


def _sync_resynced(state: State, src: str, ev: dict[str, Any]) -> None:
    _inc(state, "sync_bisync_resync_total", (ev["workload_id"],), 1)


def _sync_state(state: State, src: str, ev: dict[str, Any]) -> None:
    key = (ev["workload_id"],)
    for name, field in _SYNC_GAUGES:
        _set_gauge(state, name, key, src, ev[field])


_STATUS_TEXT = {code: str(code) for code in range(100, 600)}


def _http_request(state: State, src: str, ev: dict[str, Any]) -> None:
    status = ev["status"]
    key = (ev["method"], ev["path"], _STATUS_TEXT.get(status) or str(status))
    h = state.hists["http_request_duration_seconds"].get(key)
    value = ev["duration_s"]
    if h is None:
        _http_duration(state, key, value)
    else:
        h[bisect_left(_HTTP_BUCKETS, value)] += 1  # type: ignore[arg-type]
        h[-1] += value
    # http_requests_total is this histogram's _count (metrics.py: derived), rendered at scrape time.


def _nothing(state: State, src: str, ev: dict[str, Any]) -> None:
    """Heartbeats only refresh the source's last-seen time (done for every batch)."""


HANDLERS: dict[str, Handler] = {
    "source.started": _source_started,
    "source.heartbeat": _nothing,
    "source.stopped": _source_stopped,
    "events.dropped": _events_dropped,
    "pool.state": _pool_state,
    "pool.removed": _pool_removed,
    "container.acquired": _container_acquired,
    "container.released": _container_released,
    "container.created": _container_created,
    "container.destroyed": _container_destroyed,
    "container.wiped": _container_wiped,
    "container.health_check_failed": _health_check_failed,
    "affinity.evicted": _affinity_evicted,
    "sync.finished": _sync_finished,
    "sync.resynced": _sync_resynced,
    "sync.state": _sync_state,
    "http.request": _http_request,
}

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
        _inc(state, "events_lost_total", ("seq_gap",), gap)
    if duplicates:
        _inc(state, "aggregator_duplicates_total", (), duplicates)
    state.last_seq[src] = last
    if newest:
        info = state.sources.get(src)
        if info is None:  # first seen mid-life (its source.started was trimmed or is elsewhere)
            parts = src.split(":")
            info = state.sources[src] = [parts[0], "", 0.0, newest, False]
        elif newest > info[LAST_SEEN]:
            info[LAST_SEEN] = newest
        state.newest_ts = max(state.newest_ts, newest)
    return rejected


def apply_all(state: State, batches: Iterable[Batch]) -> State:
    for batch in batches:
        apply_batch(state, batch)
    return state


def record_dead_letter(state: State, reason: str, count: int = 1) -> None:
    _inc(state, "aggregator_dead_letters_total", (reason,), count)


def record_lost(state: State, reason: str, count: int) -> None:
    if count > 0:
        _inc(state, "events_lost_total", (reason,), count)


def count_trimmed_gap(state: State, batch: Any) -> None:
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


class TrimWindow:
    """Sources whose next sequence gap is attributed to entries trimmed before they were read.

    Opened when the consumer sees that entries it had not read were removed (and by replay and rebuild
    when the stream they fold from the start lost entries). Each source's first
    batch after that is checked (``check``): its gap, if any, is what the trim took. The window stays
    open until every source known at the detection (``suspects``) was seen again or forgotten, and
    the consumer has read up to the stream's last entry at the detection (``until``), so sources
    first seen in that backlog are checked too.
    """

    __slots__ = ("handled_deleted", "open", "seen", "suspects", "until")

    def __init__(self) -> None:
        self.suspects: set[str] = set()
        self.seen: set[str] = set()
        self.open = False
        self.until: StreamId = (0, 0)
        #: The stream's max-deleted-entry-id already accounted for.
        self.handled_deleted: StreamId = (0, 0)

    def start(self, known: set[str], until: StreamId) -> None:
        self.suspects = set(known)
        self.seen = set()
        self.until = max(self.until, until) if self.open else until
        self.open = True

    def check(self, src: str) -> bool:
        """True if ``src``'s current batch is its first since the window opened."""
        if not self.open or src in self.seen:
            return False
        self.seen.add(src)
        self.suspects.discard(src)
        return True

    def attribute(self, state: State, batch: Batch, position: StreamId) -> None:
        """Before ``batch`` (at stream ``position``) is folded: if it is its source's first since the
        window opened, count the gap in front of it as trimmed (:func:`count_trimmed_gap`)."""
        if self.open:
            if self.check(batch.src):
                count_trimmed_gap(state, batch)
            self.maybe_close(position)

    def maybe_close(self, position: StreamId) -> None:
        if self.open and not self.suspects and position >= self.until:
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
    def from_data(cls, data: dict[str, Any] | None) -> TrimWindow:
        w = cls()
        if data:
            w.open = bool(data.get("open"))
            w.suspects = set(data.get("suspects", ()))
            w.seen = set(data.get("seen", ()))
            w.until = parse_id(data.get("until", "0-0"))
            w.handled_deleted = parse_id(data.get("handled_deleted", "0-0"))
        return w


__all__ = [
    "GAUGE",
    "HANDLERS",
    "State",
    "TrimWindow",
    "apply_all",
    "apply_batch",
    "count_trimmed_gap",
    "record_dead_letter",
    "record_lost",
]


def copy_state(state: State) -> State:
    """A copy that the consumer can keep mutating while the copy is rendered."""
    new = State(state.series_cap)
    new.counters = {n: dict(d) for n, d in state.counters.items()}
    new.hists = {n: {k: list(v) for k, v in d.items()} for n, d in state.hists.items()}
    new.gauges = {n: {k: dict(v) for k, v in d.items()} for n, d in state.gauges.items()}
    new.sources = {s: list(v) for s, v in state.sources.items()}
    new.last_seq = dict(state.last_seq)
    new.positions = dict(state.positions)
    new.newest_ts = state.newest_ts
    return new


def merge_states(states: list[State]) -> State:
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
