"""Every metric the aggregator serves: name, type, labels, buckets and the events that drive it.

This is the one mapping from events to metrics. ``fold.py`` implements it, ``exposition.py`` renders
it, and ``docs/metrics.md`` is generated from it (``python -m services.aggregator.docs``) and tested
against it, so documentation, dashboards and code cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

# Buckets from the observability plan ("Histogram Buckets").
CONTAINER_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
SYNC_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family.

    ``name`` excludes the configurable prefix (``BOILERHOUSE_METRICS_PREFIX``, default ``boilerhouse_``).
    ``events`` lists the event types that change it; ``source`` says where its value comes from:
    ``events`` (folded state), ``snapshot`` (sum over live sources of the latest snapshot value) or
    ``runtime`` (measured by the aggregator when scraped) or ``derived`` (computed at scrape time from
    the series of ``derived_from``, so the fold keeps no second copy of the same count).
    """

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    events: tuple[str, ...] = ()
    source: str = "events"
    group: str = "seed"
    derived_from: str | None = None


def _pool_gauge(name: str, help_: str) -> MetricDef:
    return MetricDef(
        name,
        GAUGE,
        help_,
        ("pool_id", "workload_id"),
        events=("pool.state", "pool.removed"),
        source="snapshot",
        group="pool",
    )


METRICS: tuple[MetricDef, ...] = (
    # ---- pool (snapshots) ---------------------------------------------------------------------
    _pool_gauge("pool_size", "Current total containers in pool"),
    _pool_gauge("pool_available", "Idle containers ready for claim"),
    _pool_gauge("pool_borrowed", "Containers assigned to tenants"),
    _pool_gauge("pool_pending", "Containers being created/destroyed"),
    _pool_gauge("pool_min_size", "Configured minimum pool size"),
    _pool_gauge("pool_max_size", "Configured maximum pool size"),
    _pool_gauge("pool_target_size", "Current target size (after scaling)"),
    # ---- container lifecycle ------------------------------------------------------------------
    MetricDef(
        "container_acquire_duration_seconds",
        HISTOGRAM,
        "Time to acquire container for tenant",
        ("pool_id", "status"),
        CONTAINER_BUCKETS,
        ("container.acquired",),
        group="container",
    ),
    MetricDef(
        "container_release_duration_seconds",
        HISTOGRAM,
        "Time to release container",
        ("pool_id", "status"),
        CONTAINER_BUCKETS,
        ("container.released",),
        group="container",
    ),
    MetricDef(
        "container_create_duration_seconds",
        HISTOGRAM,
        "Time to create new container",
        ("pool_id", "workload_id"),
        CONTAINER_BUCKETS,
        ("container.created",),
        group="container",
    ),
    MetricDef(
        "container_destroy_duration_seconds",
        HISTOGRAM,
        "Time to destroy container",
        ("pool_id",),
        CONTAINER_BUCKETS,
        ("container.destroyed",),
        group="container",
    ),
    MetricDef(
        "container_wipe_duration_seconds",
        HISTOGRAM,
        "Time to wipe container state",
        ("pool_id",),
        CONTAINER_BUCKETS,
        ("container.wiped",),
        group="container",
    ),
    MetricDef(
        "container_operations_total",
        COUNTER,
        "Total operations (create/destroy/wipe)",
        ("pool_id", "operation", "status"),
        events=("container.created", "container.destroyed", "container.wiped"),
        group="container",
    ),
    MetricDef(
        "container_health_check_failures_total",
        COUNTER,
        "Failed health checks",
        ("pool_id",),
        events=("container.health_check_failed",),
        group="container",
    ),
    # ---- affinity -----------------------------------------------------------------------------
    MetricDef(
        "affinity_hits_total",
        COUNTER,
        "Times affinity match found",
        ("pool_id",),
        events=("container.acquired",),
        group="affinity",
    ),
    MetricDef(
        "affinity_misses_total",
        COUNTER,
        "Times affinity match not found",
        ("pool_id",),
        events=("container.acquired",),
        group="affinity",
    ),
    MetricDef(
        "affinity_evictions_total",
        COUNTER,
        "Affinity containers evicted (timeout)",
        ("pool_id",),
        events=("affinity.evicted",),
        group="affinity",
    ),
    MetricDef(
        "affinity_reservations",
        GAUGE,
        "Current affinity reservations held",
        ("pool_id",),
        events=("pool.state", "pool.removed"),
        source="snapshot",
        group="affinity",
    ),
    # ---- sync ---------------------------------------------------------------------------------
    MetricDef(
        "sync_operations_total",
        COUNTER,
        "Total sync operations",
        ("workload_id", "direction", "status"),
        events=("sync.finished",),
        group="sync",
    ),
    MetricDef(
        "sync_duration_seconds",
        HISTOGRAM,
        "Sync operation duration",
        ("workload_id", "direction", "mode"),
        SYNC_BUCKETS,
        ("sync.finished",),
        group="sync",
    ),
    MetricDef(
        "sync_bytes_transferred_total",
        COUNTER,
        "Cumulative bytes synced",
        ("workload_id", "direction"),
        events=("sync.finished",),
        group="sync",
    ),
    MetricDef(
        "sync_files_transferred_total",
        COUNTER,
        "Cumulative files synced",
        ("workload_id", "direction"),
        events=("sync.finished",),
        group="sync",
    ),
    MetricDef(
        "sync_concurrent_operations",
        GAUGE,
        "Currently running syncs",
        ("workload_id",),
        events=("sync.state",),
        source="snapshot",
        group="sync",
    ),
    MetricDef(
        "sync_queue_length",
        GAUGE,
        "Pending sync operations",
        ("workload_id",),
        events=("sync.state",),
        source="snapshot",
        group="sync",
    ),
    MetricDef(
        "sync_periodic_jobs_active",
        GAUGE,
        "Active periodic sync jobs",
        ("workload_id",),
        events=("sync.state",),
        source="snapshot",
        group="sync",
    ),
    MetricDef(
        "sync_errors_total",
        COUNTER,
        "Sync errors by type",
        ("workload_id", "error_type"),
        events=("sync.finished",),
        group="sync",
    ),
    MetricDef(
        "sync_bisync_resync_total",
        COUNTER,
        "Bisync resync fallback events",
        ("workload_id",),
        events=("sync.resynced",),
        group="sync",
    ),
    # ---- http ---------------------------------------------------------------------------------
    MetricDef(
        "http_request_duration_seconds",
        HISTOGRAM,
        "HTTP request latency",
        ("method", "path", "status"),
        HTTP_BUCKETS,
        ("http.request",),
        group="http",
    ),
    # Every request is one observation of the latency histogram: its _count is this counter.
    MetricDef(
        "http_requests_total",
        COUNTER,
        "Total requests",
        ("method", "path", "status"),
        events=("http.request",),
        source="derived",
        group="http",
        derived_from="http_request_duration_seconds",
    ),
    # ---- system -------------------------------------------------------------------------------
    MetricDef(
        "info",
        GAUGE,
        "Static info gauge (always 1), one series per version of a live source",
        ("version",),
        events=("source.started", "source.stopped"),
        source="snapshot",
        group="system",
    ),
    MetricDef(
        "start_time_seconds",
        GAUGE,
        "Unix timestamp of process start: the most recent start among live sources",
        events=("source.started", "source.stopped"),
        source="snapshot",
        group="system",
    ),
    # ---- the event pipeline itself --------------------------------------------------------------
    MetricDef(
        "events_dropped_total",
        COUNTER,
        "Events producers dropped because their buffer was full while the bus was unreachable",
        ("service",),
        events=("events.dropped",),
        group="pipeline",
    ),
    MetricDef(
        "events_lost_total",
        COUNTER,
        "Events the aggregator never saw: sequence gaps, entries trimmed before they were read",
        ("reason",),
        group="pipeline",
    ),
    MetricDef(
        "aggregator_events_applied_total",
        COUNTER,
        "Events folded into metric state, by type",
        ("type",),
        group="pipeline",
    ),
    MetricDef(
        "aggregator_duplicates_total",
        COUNTER,
        "Events skipped because they were already applied (redelivery, retried XADD)",
        group="pipeline",
    ),
    MetricDef(
        "aggregator_dead_letters_total",
        COUNTER,
        "Entries or events that failed to decode or validate; each was copied to the dead-letter stream",
        ("reason",),
        group="pipeline",
    ),
    MetricDef(
        "aggregator_series_overflow_total",
        COUNTER,
        "Events whose label set exceeded a metric's series cap and was folded into the overflow series",
        ("metric",),
        group="pipeline",
    ),
    MetricDef(
        "aggregator_live_sources",
        GAUGE,
        "Producer processes currently contributing to gauges",
        source="runtime",
        group="pipeline",
    ),
    MetricDef(
        "aggregator_newest_event_age_seconds",
        GAUGE,
        "Age of the newest event applied (wall clock minus its producer timestamp)",
        source="runtime",
        group="pipeline",
    ),
    MetricDef(
        "aggregator_consumer_lag_entries",
        GAUGE,
        "Stream entries not yet delivered to this consumer group",
        ("partition",),
        source="runtime",
        group="pipeline",
    ),
    MetricDef(
        "aggregator_pending_entries",
        GAUGE,
        "Entries delivered to this consumer group but not yet acknowledged",
        ("partition",),
        source="runtime",
        group="pipeline",
    ),
    MetricDef(
        "aggregator_checkpoint_age_seconds",
        GAUGE,
        "Seconds since the state was last checkpointed",
        source="runtime",
        group="pipeline",
    ),
)

METRICS_BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}

#: Label value used for every label of the overflow series of a metric past its series cap.
OVERFLOW = "__overflow__"
