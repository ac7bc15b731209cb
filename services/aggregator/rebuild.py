"""Offline rebuild: re-fold each partition's retained stream into a fresh checkpoint, with progress.

Used by ``boilerhouse aggregator --rebuild`` before it starts serving (after a bucket or mapping
change). The checkpoint is the consumer's (:mod:`.checkpoint`), folded by the consumer's ingest step,
and the consumer group's last-delivered id is set to the position it covers, in one transaction, so the
live consumer restores it and carries on with the entries added since. Stop the other aggregators of the
same consumer group first.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import redis

from shared.events.bus import ERRORS, Client, connect
from shared.events.streams import checkpoint_key, format_id, parse_id

from . import checkpoint
from .fold import State, TrimWindow
from .ingest import PartitionIngest
from .progress import Progress
from .reader import StreamReader
from .settings import AggregatorSettings, SettingsError

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
    client: Client, settings: AggregatorSettings, partition: int, progress: Progress | None = None
) -> RebuildResult:
    """Fold the partition's stream up to its current last id; save checkpoint + group position atomically."""
    started = time.monotonic()
    reader = StreamReader(client, settings.partitions, settings.key_prefix)
    key = reader.key(partition)
    info = reader.info(partition)
    last = info.last_generated_id if info is not None else (0, 0)
    if progress is not None and info is not None:
        progress.total = float(info.length)
    ingest = PartitionIngest(
        partition, State(limits=settings.limits), reader.trim_window(partition), settings.source_forget_s
    )
    entries = 0
    if last != (0, 0):
        for _, (raw_id, fields) in reader.raw((0, 0), last, partitions=[partition]):
            before = ingest.events
            ingest.entry(parse_id(raw_id), fields)
            entries += 1
            if progress is not None:
                progress.update(entries, ingest.events - before)
    position = format_id(last) if last != (0, 0) else None
    if position is not None:
        ingest.state.positions[partition] = position
    # Every gap the fold could attribute to trimming was attributed: the live consumer starts afresh.
    write = checkpoint.complete(ingest.state, TrimWindow())
    try:
        client.xgroup_create(key, settings.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    pipe = client.pipeline(transaction=True)
    write.queue(pipe, checkpoint_key(partition, settings.group, settings.key_prefix))
    # Everything up to `last` counts as read, so the group's lag starts right.
    entries_read = info.entries_added if info is not None else None
    pipe.xgroup_setid(key, settings.group, position or "0", entries_read=entries_read)
    pipe.execute()
    result = RebuildResult(partition, entries, ingest.events, position, time.monotonic() - started)
    logger.debug(
        "partition %d rebuilt: %d entries, %d events folded in %.2fs; checkpoint at %s",
        partition,
        entries,
        ingest.events,
        result.seconds,
        position,
    )
    return result


def rebuild(
    client: Client,
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


def rebuild_offline(settings: AggregatorSettings, show_progress: bool = True) -> list[RebuildResult]:
    """``aggregator --rebuild``: rebuild before serving; a summary per partition on stderr.

    An unreachable bus ends the process with a message (exit status 1), never a traceback.
    """
    client: Client | None = None
    try:
        client = connect(settings.redis, "tool")
        results = rebuild(client, settings, show_progress)
    except ERRORS as exc:
        raise SystemExit(f"boilerhouse: error: rebuild failed: {exc}") from None
    except SettingsError as exc:
        raise SystemExit(f"boilerhouse: error: {exc}") from None
    finally:
        if client is not None:
            client.close()
    for r in results:
        print(
            f"rebuild: partition {r.partition}: {r.entries} entries, {r.events} events folded in "
            f"{r.seconds:.2f}s; checkpoint at {r.position or 'the start'}",
            file=sys.stderr,
            flush=True,
        )
    return results


__all__ = ["RebuildResult", "rebuild", "rebuild_offline", "rebuild_partition"]
