"""Offline rebuild: re-fold each partition's retained stream into a fresh checkpoint, with progress.

Used by ``boilerhouse aggregator --rebuild`` before it starts serving (after a bucket or mapping
change). The checkpoint has the consumer's format and the consumer group's last-delivered id is set
to the position it covers, in one transaction, so the live consumer restores it and carries on with
the entries added since. Stop the other aggregators of the same consumer group first.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import msgpack
import redis

from shared.events.streams import checkpoint_key, format_id, parse_id

from .consumer import CHECKPOINT_VERSION, mapping_fingerprint
from .fold import State, TrimWindow
from .replay import Progress, StreamReader, fold_entry, trim_window
from .settings import AggregatorSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What one partition's rebuild folded and where its checkpoint now stands."""

    partition: int
    entries: int
    events: int
    position: str | None
    seconds: float


def rebuild_partition(
    client: redis.Redis, settings: AggregatorSettings, partition: int, progress: Progress | None = None
) -> RebuildResult:
    """Fold the partition's stream up to its current last id; save checkpoint + group position atomically."""
    started = time.monotonic()
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    key = reader.key(partition)
    try:
        info: dict[str, Any] = client.xinfo_stream(key)
    except redis.ResponseError:  # no stream yet
        info = {}
    last_raw = info.get("last-generated-id")
    last = parse_id(last_raw) if last_raw else (0, 0)
    added = info.get("entries-added")
    trim = trim_window(info)
    if progress is not None:
        progress.total = float(info.get("length", 0))
    state = State(settings.series_cap)
    entries = events = 0
    if last != (0, 0):
        for entry in reader.range((0, 0), last, partitions=[partition]):
            n = fold_entry(state, entry, trim)
            entries += 1
            events += n
            if progress is not None:
                progress.update(entries, n)
    position = format_id(last) if last != (0, 0) else None
    if position is not None:
        state.positions[partition] = position
    blob = msgpack.packb(
        {
            "v": CHECKPOINT_VERSION,
            "mapping": mapping_fingerprint(),
            "saved_at": time.time(),
            "state": state.to_data(),
            "trim": TrimWindow().to_data(),
        },
        use_bin_type=True,
    )
    try:
        client.xgroup_create(key, settings.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    pipe = client.pipeline(transaction=True)
    pipe.set(checkpoint_key(partition, settings.group, settings.key_prefix), blob)
    setid: list[Any] = ["XGROUP", "SETID", key, settings.group, position or "0"]
    if added is not None:
        setid += ["ENTRIESREAD", int(added)]  # everything up to `last` counts as read: lag starts right
    pipe.execute_command(*setid)
    pipe.execute()
    result = RebuildResult(partition, entries, events, position, time.monotonic() - started)
    logger.debug(
        "partition %d rebuilt: %d entries, %d events folded in %.2fs; checkpoint at %s",
        partition,
        entries,
        events,
        result.seconds,
        position,
    )
    return result


def rebuild(
    client: redis.Redis,
    settings: AggregatorSettings,
    show_progress: bool = True,
    stream: TextIO | None = None,
    progress_delay_s: float = 1.0,
) -> list[RebuildResult]:
    """Rebuild every partition of this shard; a progress bar per partition on stderr (after a second)."""
    results = []
    for p in settings.my_partitions:
        progress = Progress(
            f"rebuild partition {p}",
            0,
            "entries",
            stream=stream,
            enabled=show_progress,
            delay_s=progress_delay_s,
        )
        results.append(rebuild_partition(client, settings, p, progress))
        progress.finish()
    return results


__all__ = ["RebuildResult", "rebuild", "rebuild_offline", "rebuild_partition"]


def rebuild_offline(settings: AggregatorSettings, show_progress: bool = True) -> list[RebuildResult]:
    """``aggregator --rebuild``: rebuild before serving; a summary per partition on stderr.

    An unreachable bus ends the process with a message (exit status 1), never a traceback.
    """
    client = redis.Redis.from_url(
        settings.redis_url, protocol=2, socket_timeout=30.0, socket_connect_timeout=5.0
    )
    try:
        results = rebuild(client, settings, show_progress)
    except redis.RedisError as exc:
        raise SystemExit(f"boilerhouse: error: rebuild failed: {exc}") from None
    finally:
        client.close()
    for r in results:
        print(
            f"rebuild: partition {r.partition}: {r.entries} entries, {r.events} events folded in "
            f"{r.seconds:.2f}s; checkpoint at {r.position or 'the start'}",
            file=sys.stderr,
            flush=True,
        )
    return results
