"""The event catalogue: envelope, every event type with its fields and units, and the schema version.

This module is the single source of truth for the wire contract documented in ``docs/events.md``
(the document is tested against it). Events are facts with measured values, never metric operations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Bumped when a change would make an older aggregator misread events (see docs/events.md).
#: 2: the batch header carries the first event's ``seq`` and events carry none (version 1 batches,
#: one ``seq`` per event, are still read).
SCHEMA_VERSION = 2
#: The version whose events each carry their own ``seq``: what producers written for version 1 (the
#: TypeScript client) write, and what every aggregator reads.
PER_EVENT_SEQ_VERSION = 1

#: Keys every event map carries besides its own fields.
ENVELOPE_KEYS = ("type", "seq", "ts")

#: Pool, workload and other identifiers that become label values must match this.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")  # \Z: "$" would accept a trailing newline
#: Route templates used as the ``path`` label of HTTP events (the grammar is in docs/events.md, *Route
#: templates*): ``/`` or 1-16 segments, each a literal of 1-64 URL-unreserved characters other than
#: ``.`` and ``..``, or a ``{name}`` / ``{name:converter}`` placeholder; an optional trailing ``/``;
#: at most :data:`MAX_PATH_LEN` characters in all. A template is structure only: no query, no
#: percent-encoding, no dot segments.
_LITERAL = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._~-]{1,64}"
_PLACEHOLDER = r"\{[A-Za-z_][A-Za-z0-9_]{0,31}(?::[A-Za-z_][A-Za-z0-9_]{0,31})?\}"
_SEGMENT = f"(?:{_LITERAL}|{_PLACEHOLDER})"
PATH_PATTERN = re.compile(f"^/(?:{_SEGMENT}(?:/{_SEGMENT}){{0,15}}/?)?\\Z")
MAX_PATH_LEN = 128
#: The ``path`` label value shared by every request that matched no route.
UNMATCHED_PATH = "<unmatched>"
#: A W3C Trace Context trace id (https://www.w3.org/TR/trace-context/#trace-id): 32 lowercase hex
#: characters, not all zero. The ``trace_id`` of the events that measure a duration; the aggregator
#: keeps the latest per histogram bucket as an exemplar (docs/metrics.md, *Exemplars*).
TRACE_ID_PATTERN = re.compile(r"^(?!0{32})[0-9a-f]{32}\Z")

STATUSES = frozenset({"success", "failure", "timeout"})
OPERATION_STATUSES = frozenset({"success", "failure"})
AFFINITY = frozenset({"hit", "miss"})
DIRECTIONS = frozenset({"upload", "download", "bidirectional"})
MODES = frozenset({"sync", "bisync", "copy"})
SYNC_ERROR_TYPES = frozenset({"rclone_error", "timeout", "permission_denied", "network_error"})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"})


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event.

    ``kind`` is ``"str"``, ``"int"``, ``"float"`` (ints are accepted for floats), ``"id"``
    (a string matching :data:`ID_PATTERN`) or ``"trace_id"`` (a string matching
    :data:`TRACE_ID_PATTERN`). ``choices`` restricts string values; ``unit`` names the
    unit of a number; ``optional`` fields may be absent or nil.
    """

    name: str
    kind: str
    doc: str
    unit: str = ""
    choices: frozenset[str] | None = None
    optional: bool = False
    minimum: float | None = 0


@dataclass(frozen=True, slots=True)
class EventType:
    """An event type: a past-tense fact with the fields a producer measured."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    #: Snapshot events carry absolute values (gauges); the aggregator keeps one value per source.
    snapshot: bool = False


def _id(name: str, doc: str) -> Field:
    return Field(name, "id", doc)


def _duration() -> Field:
    return Field("duration_s", "float", "Duration measured by the producer with a monotonic clock", "seconds")


#: The optional field of the events that measure a duration: the trace id, kept as an exemplar.
TRACE_FIELD = "trace_id"


def _trace_id() -> Field:
    return Field(
        TRACE_FIELD,
        "trace_id",
        "W3C trace id of the request this operation served (becomes an exemplar, never a label); "
        "nil or absent outside a trace",
        optional=True,
    )


def _count(name: str, doc: str) -> Field:
    return Field(name, "int", doc, "count")


POOL_ID = _id("pool_id", "Pool identifier")
WORKLOAD_ID = _id("workload_id", "Workload identifier")

EVENT_TYPES: tuple[EventType, ...] = (
    # --- source lifecycle -------------------------------------------------------------------
    EventType(
        "source.started",
        "A producer process started publishing. First event of every source.",
        (
            Field("service", "id", "Service name, e.g. api, sync-worker"),
            Field("version", "str", "Software version of the producer"),
            Field("host", "str", "Host name"),
            Field("pid", "int", "Process id"),
            Field("start_time_s", "float", "Process start time", "unix seconds"),
        ),
    ),
    EventType(
        "source.heartbeat",
        "The source is alive. Sent every heartbeat interval; any event also counts as a sign of life.",
        (),
    ),
    EventType(
        "source.stopped",
        "The source shut down cleanly; its gauge snapshots stop contributing at once.",
        (),
    ),
    EventType(
        "events.dropped",
        "The producer dropped events: its buffer was full while the bus was unreachable, or an event was too "
        "large for an entry on its own.",
        (_count("count", "Events dropped since the previous events.dropped of this source"),),
    ),
    # --- pool --------------------------------------------------------------------------------
    EventType(
        "pool.state",
        "Snapshot of a pool, published on every change and on each heartbeat.",
        (
            POOL_ID,
            WORKLOAD_ID,
            _count("size", "Containers in the pool (available + borrowed + pending)"),
            _count("available", "Idle containers ready for claim"),
            _count("borrowed", "Containers assigned to tenants"),
            _count("pending", "Containers being created or destroyed"),
            _count("min_size", "Configured minimum pool size"),
            _count("max_size", "Configured maximum pool size"),
            _count("target_size", "Current target size after scaling"),
            _count("affinity_reservations", "Released containers held for their previous tenant"),
        ),
        snapshot=True,
    ),
    EventType(
        "pool.removed",
        "A pool was deleted; its gauges from this source disappear.",
        (POOL_ID, WORKLOAD_ID),
    ),
    # --- container lifecycle -------------------------------------------------------------------
    EventType(
        "container.acquired",
        "A tenant claim finished (successfully or not).",
        (
            POOL_ID,
            Field("status", "str", "Outcome", choices=STATUSES),
            _duration(),
            Field("affinity", "str", "hit: the tenant's reserved container was reused", choices=AFFINITY),
            _trace_id(),
        ),
    ),
    EventType(
        "container.released",
        "A tenant release finished (sync out, wipe, return or destroy).",
        (POOL_ID, Field("status", "str", "Outcome", choices=STATUSES), _duration(), _trace_id()),
    ),
    EventType(
        "container.created",
        "The container manager finished creating a container.",
        (
            POOL_ID,
            WORKLOAD_ID,
            Field("status", "str", "Outcome", choices=OPERATION_STATUSES),
            _duration(),
            _trace_id(),
        ),
    ),
    EventType(
        "container.destroyed",
        "The container manager finished destroying a container.",
        (POOL_ID, Field("status", "str", "Outcome", choices=OPERATION_STATUSES), _duration(), _trace_id()),
    ),
    EventType(
        "container.wiped",
        "A container's tenant state was wiped.",
        (POOL_ID, Field("status", "str", "Outcome", choices=OPERATION_STATUSES), _duration(), _trace_id()),
    ),
    EventType(
        "container.health_check_failed",
        "A container failed its health check (it is then destroyed and replaced).",
        (POOL_ID,),
    ),
    # --- affinity ------------------------------------------------------------------------------
    EventType(
        "affinity.evicted",
        "An affinity reservation expired; the container was wiped and returned to the pool.",
        (POOL_ID,),
    ),
    # --- sync ----------------------------------------------------------------------------------
    EventType(
        "sync.finished",
        "An rclone sync operation finished.",
        (
            WORKLOAD_ID,
            Field("direction", "str", "Data direction", choices=DIRECTIONS),
            Field("mode", "str", "rclone mode", choices=MODES),
            Field("status", "str", "Outcome", choices=STATUSES),
            _duration(),
            Field("bytes", "int", "Bytes transferred (rclone stats)", "bytes"),
            Field("files", "int", "Files transferred (rclone stats)", "count"),
            Field(
                "error_type",
                "str",
                "Failure class; nil on success",
                choices=SYNC_ERROR_TYPES,
                optional=True,
            ),
            _trace_id(),
        ),
    ),
    EventType(
        "sync.resynced",
        "bisync had to fall back to a --resync run (first run or lost listings).",
        (WORKLOAD_ID,),
    ),
    EventType(
        "sync.state",
        "Snapshot of a workload's sync coordinator, on change and on each heartbeat.",
        (
            WORKLOAD_ID,
            _count("running", "Sync operations running now"),
            _count("queued", "Sync operations waiting for a concurrency slot"),
            _count("periodic_jobs", "Active periodic sync jobs"),
        ),
        snapshot=True,
    ),
    # --- http ----------------------------------------------------------------------------------
    EventType(
        "http.request",
        "The API answered a request.",
        (
            Field("method", "str", "HTTP method (OTHER for anything not listed)", choices=HTTP_METHODS),
            Field("path", "str", f"Route template, never the raw path; {UNMATCHED_PATH} if no route matched"),
            Field("status", "int", "HTTP status code", minimum=100),
            _duration(),
            _trace_id(),
        ),
    ),
)

EVENT_TYPES_BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES}
#: The event types that have a ``trace_id`` field.
TRACED_TYPES = frozenset(t.name for t in EVENT_TYPES if any(f.name == TRACE_FIELD for f in t.fields))
