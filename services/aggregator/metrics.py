"""Every metric the aggregator serves, each declaring everything about itself.

A :class:`MetricDef` names its type, labels and buckets, the events and fields that drive it
(:class:`Drive`), and how the values many producer processes contribute become one series
(:class:`Combine`, as prometheus_client's ``multiprocess_mode`` declares it on a gauge). The fold
(``fold.py``), the exposition (``exposition.py``) and ``docs/metrics.md`` (``docs.py``) are derived
from these definitions; adding a metric is one definition here, plus at most one handler in
``fold.py`` for a drive marked ``custom``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# Buckets from the observability plan ("Histogram Buckets").
CONTAINER_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
SYNC_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Label value used for every label of the overflow series of a metric past its series cap.
OVERFLOW = "__overflow__"


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Combine(StrEnum):
    """How the values from many sources (producer process lives) become one series."""

    #: Every event of every source adds to the series; it never decreases (counters, histograms).
    ADD = "add"
    #: Each source's latest snapshot, summed over live sources (prometheus_client's ``livesum``).
    LIVE_SUM = "livesum"
    #: The largest of the live sources' latest snapshots (``livemax``).
    LIVE_MAX = "livemax"
    #: Measured by the aggregator when scraped; no per-source state.
    SCRAPE = "scrape"


COMBINE_TEXT: Mapping[Combine, str] = {
    Combine.ADD: "every event of every source adds up; never decreases",
    Combine.LIVE_SUM: "each live source's latest snapshot, summed over live sources",
    Combine.LIVE_MAX: "the largest of the live sources' latest snapshots",
    Combine.SCRAPE: "measured by the aggregator at scrape time",
}


class Group(StrEnum):
    """Sections of docs/metrics.md; ``PIPELINE`` holds the aggregator's self-metrics."""

    POOL = "Pool"
    CONTAINER = "Container lifecycle"
    AFFINITY = "Affinity"
    SYNC = "Sync"
    HTTP = "HTTP"
    SYSTEM = "System"
    PIPELINE = "Event pipeline and aggregator (self-metrics)"


@dataclass(frozen=True, slots=True)
class Const:
    """A label whose value is fixed for one drive (``operation="create"`` for ``container.created``)."""

    value: str


#: Where a label value comes from: an event field of the same type as the label, or a constant.
LabelFrom = str | Const


@dataclass(frozen=True, slots=True)
class Drive:
    """One event type that changes a metric.

    Parameters:
        event: the event type.
        value: the field observed (histogram), added (counter) or set (gauge); None counts 1 (or sets
            1 for a gauge).
        labels: where each of the metric's labels comes from, in label order; None reads each label
            from the event field of the same name.
        when: ``(field, value)``: only events whose field has this value drive the metric.
        removes: for a snapshot gauge: this event removes the source's value for these labels.
        custom: a handler in ``fold.py`` applies this drive (a rule the fields above cannot say,
            described by the metric's ``note``).
    """

    event: str
    value: str | None = None
    labels: tuple[LabelFrom, ...] | None = None
    when: tuple[str, str] | None = None
    removes: bool = False
    custom: bool = False


@dataclass(frozen=True, slots=True)
class PartitionReading:
    """What the consumer measures about one partition when scraped (None: unknown)."""

    lag: int | None = None
    pending: int | None = None
    checkpoint_age_s: float | None = None
    #: Checkpoints this process wrote for the partition, and their bytes (what changed, see checkpoint.py).
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    #: Seconds without progress while entries waited for the partition (0 while it reads).
    stalled_s: float | None = None


@dataclass(frozen=True, slots=True)
class Readings:
    """Inputs of the ``SCRAPE`` metrics, taken at one scrape."""

    #: The aggregator's clock, anchored to Redis' (the clock of the entry ids), in unix seconds.
    now: float
    live_sources: int
    #: When Redis accepted the newest entry folded (unix seconds; 0 before any).
    newest_entry_s: float
    #: Sources silent past the TTL without source.stopped, by service.
    vanished: Mapping[str, int] = field(default_factory=dict)
    partitions: Mapping[int, PartitionReading] = field(default_factory=dict)


Series = Mapping[tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family.

    ``name`` excludes the configurable prefix (``BOILERHOUSE_METRICS_PREFIX``, default ``boilerhouse_``).
    A metric without drives and without ``read``/``count_of`` is kept by the aggregator's own
    bookkeeping (``ingest.py``).
    """

    name: str
    kind: Kind
    help: str
    group: Group
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    drives: tuple[Drive, ...] = ()
    combine: Combine = Combine.ADD
    #: This counter is the ``_count`` of the named histogram (same labels); it has no state of its own.
    count_of: str | None = None
    #: For ``SCRAPE`` metrics: the series from one scrape's readings.
    read: Callable[[Readings], Series] | None = None
    #: A counting rule the drives cannot express (documented with the metric).
    note: str = ""
    #: The values a label of the aggregator's bookkeeping takes (documented; event-driven labels take
    #: theirs from the event schema).
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def events(self) -> tuple[str, ...]:
        """The event types that change this metric, in declaration order, without repeats."""
        return tuple(dict.fromkeys(d.event for d in self.drives))

    @property
    def snapshot(self) -> bool:
        """Kept per source (a gauge whose sources combine while live)."""
        return self.combine in (Combine.LIVE_SUM, Combine.LIVE_MAX)

    @property
    def stateful(self) -> bool:
        """Has series of its own in the fold state (and in checkpoints)."""
        return self.combine is not Combine.SCRAPE and self.count_of is None


def _pool_gauge(name: str, field_: str, help_: str) -> MetricDef:
    return MetricDef(
        name,
        Kind.GAUGE,
        help_,
        Group.POOL,
        ("pool_id", "workload_id"),
        drives=(Drive("pool.state", field_), Drive("pool.removed", removes=True)),
        combine=Combine.LIVE_SUM,
    )


def _duration(
    name: str,
    help_: str,
    event: str,
    labels: tuple[str, ...],
    buckets: tuple[float, ...],
    group: Group = Group.CONTAINER,
) -> MetricDef:
    return MetricDef(name, Kind.HISTOGRAM, help_, group, labels, buckets, (Drive(event, "duration_s"),))


def _operation(event: str, operation: str) -> Drive:
    return Drive(event, labels=("pool_id", Const(operation), "status"))


def _by_pool(name: str, help_: str, drive: Drive, group: Group) -> MetricDef:
    return MetricDef(name, Kind.COUNTER, help_, group, ("pool_id",), drives=(drive,))


def _sync_gauge(name: str, field_: str, help_: str) -> MetricDef:
    return MetricDef(
        name,
        Kind.GAUGE,
        help_,
        Group.SYNC,
        ("workload_id",),
        drives=(Drive("sync.state", field_),),
        combine=Combine.LIVE_SUM,
    )


def _self(
    name: str,
    kind: Kind,
    help_: str,
    labels: tuple[str, ...] = (),
    read: Callable[[Readings], Series] | None = None,
    values: Mapping[str, tuple[str, ...]] | None = None,
) -> MetricDef:
    return MetricDef(
        name,
        kind,
        help_,
        Group.PIPELINE,
        labels,
        read=read,
        combine=Combine.SCRAPE if read is not None else Combine.ADD,
        values=values or {},
    )


#: Why an entry or event was dead-lettered (docs/events.md explains each).
DEAD_LETTER_REASONS = (
    "missing_field",
    "too_large",
    "undecodable",
    "bad_envelope",
    "future_version",
    "bad_event",
    "unknown_type",
    "invalid_field",
    "seq_jump",
)
#: Why events were never seen: a sequence gap, or entries trimmed before they were read.
LOSS_REASONS = ("seq_gap", "trimmed")


def _per_partition(reading: Callable[[PartitionReading], float | None]) -> Callable[[Readings], Series]:
    def read(r: Readings) -> Series:
        out: dict[tuple[str, ...], float] = {}
        for p, part in r.partitions.items():
            value = reading(part)
            if value is not None:
                out[(str(p),)] = float(value)
        return out

    return read


METRICS: tuple[MetricDef, ...] = (
    # ---- pool (snapshots) ---------------------------------------------------------------------
    _pool_gauge("pool_size", "size", "Current total containers in pool"),
    _pool_gauge("pool_available", "available", "Idle containers ready for claim"),
    _pool_gauge("pool_borrowed", "borrowed", "Containers assigned to tenants"),
    _pool_gauge("pool_pending", "pending", "Containers being created/destroyed"),
    _pool_gauge("pool_min_size", "min_size", "Configured minimum pool size"),
    _pool_gauge("pool_max_size", "max_size", "Configured maximum pool size"),
    _pool_gauge("pool_target_size", "target_size", "Current target size (after scaling)"),
    # ---- container lifecycle ------------------------------------------------------------------
    _duration(
        "container_acquire_duration_seconds",
        "Time to acquire container for tenant",
        "container.acquired",
        ("pool_id", "status"),
        CONTAINER_BUCKETS,
    ),
    _duration(
        "container_release_duration_seconds",
        "Time to release container",
        "container.released",
        ("pool_id", "status"),
        CONTAINER_BUCKETS,
    ),
    _duration(
        "container_create_duration_seconds",
        "Time to create new container",
        "container.created",
        ("pool_id", "workload_id"),
        CONTAINER_BUCKETS,
    ),
    _duration(
        "container_destroy_duration_seconds",
        "Time to destroy container",
        "container.destroyed",
        ("pool_id",),
        CONTAINER_BUCKETS,
    ),
    _duration(
        "container_wipe_duration_seconds",
        "Time to wipe container state",
        "container.wiped",
        ("pool_id",),
        CONTAINER_BUCKETS,
    ),
    MetricDef(
        "container_operations_total",
        Kind.COUNTER,
        "Total operations (create/destroy/wipe)",
        Group.CONTAINER,
        ("pool_id", "operation", "status"),
        drives=(
            _operation("container.created", "create"),
            _operation("container.destroyed", "destroy"),
            _operation("container.wiped", "wipe"),
        ),
    ),
    _by_pool(
        "container_health_check_failures_total",
        "Failed health checks",
        Drive("container.health_check_failed"),
        Group.CONTAINER,
    ),
    # ---- affinity -----------------------------------------------------------------------------
    _by_pool(
        "affinity_hits_total",
        "Times affinity match found",
        Drive("container.acquired", when=("affinity", "hit")),
        Group.AFFINITY,
    ),
    _by_pool(
        "affinity_misses_total",
        "Times affinity match not found",
        Drive("container.acquired", when=("affinity", "miss")),
        Group.AFFINITY,
    ),
    _by_pool(
        "affinity_evictions_total",
        "Affinity containers evicted (timeout)",
        Drive("affinity.evicted"),
        Group.AFFINITY,
    ),
    MetricDef(
        "affinity_reservations",
        Kind.GAUGE,
        "Current affinity reservations held",
        Group.AFFINITY,
        ("pool_id",),
        drives=(Drive("pool.state", "affinity_reservations"), Drive("pool.removed", removes=True)),
        combine=Combine.LIVE_SUM,
    ),
    # ---- sync ---------------------------------------------------------------------------------
    MetricDef(
        "sync_operations_total",
        Kind.COUNTER,
        "Total sync operations",
        Group.SYNC,
        ("workload_id", "direction", "status"),
        drives=(Drive("sync.finished"),),
    ),
    _duration(
        "sync_duration_seconds",
        "Sync operation duration",
        "sync.finished",
        ("workload_id", "direction", "mode"),
        SYNC_BUCKETS,
        Group.SYNC,
    ),
    MetricDef(
        "sync_bytes_transferred_total",
        Kind.COUNTER,
        "Cumulative bytes synced",
        Group.SYNC,
        ("workload_id", "direction"),
        drives=(Drive("sync.finished", "bytes"),),
    ),
    MetricDef(
        "sync_files_transferred_total",
        Kind.COUNTER,
        "Cumulative files synced",
        Group.SYNC,
        ("workload_id", "direction"),
        drives=(Drive("sync.finished", "files"),),
    ),
    _sync_gauge("sync_concurrent_operations", "running", "Currently running syncs"),
    _sync_gauge("sync_queue_length", "queued", "Pending sync operations"),
    _sync_gauge("sync_periodic_jobs_active", "periodic_jobs", "Active periodic sync jobs"),
    MetricDef(
        "sync_errors_total",
        Kind.COUNTER,
        "Sync errors by type",
        Group.SYNC,
        ("workload_id", "error_type"),
        drives=(Drive("sync.finished", custom=True),),
        note="one per `sync.finished` whose status is not `success`; `error_type` is the event's, or "
        "`timeout` for status `timeout` and `rclone_error` otherwise when the event has none",
    ),
    MetricDef(
        "sync_bisync_resync_total",
        Kind.COUNTER,
        "Bisync resync fallback events",
        Group.SYNC,
        ("workload_id",),
        drives=(Drive("sync.resynced"),),
    ),
    # ---- http ---------------------------------------------------------------------------------
    _duration(
        "http_request_duration_seconds",
        "HTTP request latency",
        "http.request",
        ("method", "path", "status"),
        HTTP_BUCKETS,
        Group.HTTP,
    ),
    MetricDef(
        "http_requests_total",
        Kind.COUNTER,
        "Total requests",
        Group.HTTP,
        ("method", "path", "status"),
        drives=(Drive("http.request"),),
        count_of="http_request_duration_seconds",
    ),
    # ---- system -------------------------------------------------------------------------------
    MetricDef(
        "info",
        Kind.GAUGE,
        "Static info gauge (always 1), one series per version of a live source",
        Group.SYSTEM,
        ("version",),
        drives=(Drive("source.started"),),
        combine=Combine.LIVE_MAX,
    ),
    MetricDef(
        "start_time_seconds",
        Kind.GAUGE,
        "Unix timestamp of process start: the latest start among live sources",
        Group.SYSTEM,
        drives=(Drive("source.started", "start_time_s"),),
        combine=Combine.LIVE_MAX,
    ),
    # ---- the event pipeline itself --------------------------------------------------------------
    MetricDef(
        "events_dropped_total",
        Kind.COUNTER,
        "Events producers dropped because their buffer was full while the bus was unreachable, or because one "
        "was too large for an entry on its own",
        Group.PIPELINE,
        ("service",),
        drives=(Drive("events.dropped", "count", custom=True),),
        note="`service` is the dropping source's, from its `source.started` (or the first part of its `src`)",
    ),
    _self(
        "events_lost_total",
        Kind.COUNTER,
        "Events the aggregator never saw: sequence gaps, entries trimmed before they were read",
        ("reason",),
        values={"reason": LOSS_REASONS},
    ),
    _self(
        "aggregator_events_applied_total", Kind.COUNTER, "Events folded into metric state, by type", ("type",)
    ),
    _self(
        "aggregator_duplicates_total",
        Kind.COUNTER,
        "Events skipped because they were already applied (redelivery, retried XADD)",
    ),
    _self(
        "aggregator_dead_letters_total",
        Kind.COUNTER,
        "Entries or events that failed to decode or validate; each was copied to the dead-letter stream",
        ("reason",),
        values={"reason": DEAD_LETTER_REASONS},
    ),
    _self(
        "aggregator_clock_skew_events_total",
        Kind.COUNTER,
        "Events whose producer timestamp is further than BOILERHOUSE_MAX_CLOCK_SKEW_S from when Redis "
        "accepted them (applied; the timestamp drives nothing)",
        ("direction",),
        values={"direction": ("ahead", "behind")},
    ),
    _self(
        "aggregator_sources_evicted_total",
        Kind.COUNTER,
        "Sources forgotten early because more than BOILERHOUSE_MAX_SOURCES were known",
    ),
    _self(
        "aggregator_series_overflow_total",
        Kind.COUNTER,
        "Events whose label set exceeded a metric's series cap and was folded into the overflow series",
        ("metric",),
    ),
    _self(
        "aggregator_unknown_routes_total",
        Kind.COUNTER,
        "HTTP request events whose route template is not in the route table (BOILERHOUSE_HTTP_ROUTES); "
        "they are counted under the <unmatched> path",
    ),
    _self(
        "aggregator_live_sources",
        Kind.GAUGE,
        "Producer processes currently contributing to gauges",
        read=lambda r: {(): float(r.live_sources)},
    ),
    _self(
        "aggregator_vanished_sources",
        Kind.GAUGE,
        "Sources silent for longer than the TTL that never sent source.stopped (a killed or stuck "
        "producer: what it had not yet written is lost, uncounted), until they are forgotten",
        ("service",),
        read=lambda r: {(service,): float(n) for service, n in r.vanished.items()},
    ),
    _self(
        "aggregator_newest_event_age_seconds",
        Kind.GAUGE,
        "Seconds since Redis accepted the newest entry folded (by the aggregator's clock anchored to Redis')",
        read=lambda r: {(): max(0.0, r.now - r.newest_entry_s)} if r.newest_entry_s else {},
    ),
    _self(
        "aggregator_consumer_lag_entries",
        Kind.GAUGE,
        "Stream entries not yet delivered to this consumer group",
        ("partition",),
        read=_per_partition(lambda p: p.lag),
    ),
    _self(
        "aggregator_pending_entries",
        Kind.GAUGE,
        "Entries delivered to this consumer group but not yet acknowledged",
        ("partition",),
        read=_per_partition(lambda p: p.pending),
    ),
    _self(
        "aggregator_checkpoint_age_seconds",
        Kind.GAUGE,
        "Seconds since the partition's state was last checkpointed",
        ("partition",),
        read=_per_partition(lambda p: p.checkpoint_age_s),
    ),
    _self(
        "aggregator_stalled_seconds",
        Kind.GAUGE,
        "Seconds the partition has made no progress while entries waited for it: its reads fail although "
        "Redis answers (0 while it reads or is caught up)",
        ("partition",),
        read=_per_partition(lambda p: p.stalled_s),
    ),
    _self(
        "aggregator_checkpoints_total",
        Kind.COUNTER,
        "Checkpoints written by this aggregator process, by partition",
        ("partition",),
        read=_per_partition(lambda p: p.checkpoints),
    ),
    _self(
        "aggregator_checkpoint_bytes_total",
        Kind.COUNTER,
        "Bytes of checkpoint written by this aggregator process (only what changed since the previous one)",
        ("partition",),
        read=_per_partition(lambda p: p.checkpoint_bytes),
    ),
)

METRICS_BY_NAME: Mapping[str, MetricDef] = {m.name: m for m in METRICS}
