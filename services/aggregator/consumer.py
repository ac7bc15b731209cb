"""The read / fold / checkpoint / acknowledge loop of one aggregator shard.

Entries are acknowledged only inside the transaction that checkpoints the state covering them, so a
crash at any instant followed by a restart gives exactly the metrics of a run that never crashed:
the state comes back from the checkpoint and the unacknowledged entries are read again. What an
entry does to the state is :mod:`.ingest`'s job; what a checkpoint holds is :mod:`.checkpoint`'s.

On a Redis Cluster every partition's keys share one slot (the ``{p}`` hash tag) but partitions do not:
reads and inspections run as one transaction per partition there (one for all partitions on a single
Redis, where nothing is gained by splitting them), and the wait for new entries watches one partition
at a time.

Loss accounting (see docs/reliability.md): a jump in a source's ``seq`` is counted in
``events_lost_total``. When the consumer sees entries of its unread range disappear (trimmed or
deleted before it read them, :mod:`.retention`), it opens a *trim window* for the partition: the first
gap of each source known at that moment, or first seen while the window is open, is counted with
``reason="trimmed"`` instead of ``reason="seq_gap"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis.typing import StreamIdT

from shared.events import bounded
from shared.events.bus import ERRORS, BusProblem, Client, diagnose, is_cluster
from shared.events.codec import ENTRY_FIELD, MAX_ENTRY_BYTES
from shared.events.replies import (
    PendingSummary,
    RawEntry,
    StreamInfo,
    as_map,
    fields_map,
    find_group,
    read_reply,
)
from shared.events.streams import checkpoint_key, dead_letter_key, format_id, parse_id, stream_key

from . import checkpoint
from .fold import State
from .ingest import DeadLetter, Outcome, PartitionIngest
from .metrics import PartitionReading
from .retention import RedisClock, removed_unread, trim_by_age
from .settings import AggregatorSettings, SettingsError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Dead letters kept per partition (approximate trim), each at most ~4.6 KiB: see docs/reliability.md.
DEAD_LETTER_MAXLEN = 10_000
#: Raw bytes one read asks for at most, at the size of the entries read before (entries hold up to
#: 1 MiB each); shared by the partitions of one read.
READ_BYTES_BUDGET = 8 << 20
#: While a stream's first or last entry is too large to hold, XINFO STREAM (which shows both) is read
#: this often, not at every read: trim detection may then lag by as much (see docs/reliability.md).
BOUNDED_INSPECT_S = 30.0
#: A partition whose reads fail while entries wait for it (Redis answers, the consumer cannot get on) is
#: reported by /readyz once it has made no progress for this long (its self-metric shows it at once).
STALL_REPORT_S = 10.0
#: How often the streams are trimmed by age (approximate MINID trims are cheap but not free).
TRIM_INTERVAL_S = 60.0
#: How often Redis' clock is read again.
MAINTENANCE_INTERVAL_S = 2.0
#: Shortest wait on one partition when a cluster's partitions are watched in turn.
MIN_WAIT_MS = 10
#: Pending entries of other consumers taken over per XCLAIM.
CLAIM_BATCH = 1000

#: Failures of the bus (and of its sockets) that the consumer loop waits out and retries.
_TRANSIENT: tuple[type[Exception], ...] = (*ERRORS, OSError)
#: Error replies of a bus in transition (a failover, a slot moving, a restart): waited out, not a stall.
_IN_TRANSITION: tuple[type[Exception], ...] = (
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.BusyLoadingError,
)

#: Builds the client when the consumer first needs it (the bus may not be up when the process starts).
Connector = Callable[[], Client]


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition without progress while entries wait: since when (unix seconds), and why."""

    partition: int
    since: float
    seconds: float
    why: str


def _end_too_large(info: object, left_out: frozenset[bytes]) -> bool:
    """Whether an XINFO STREAM reply's first or last entry holds more than an entry may (read whole, or
    ``left_out`` by a bounded read)."""
    reply = as_map(info)
    for end in ("first-entry", "last-entry"):
        entry = reply.get(end)
        if not entry:
            continue
        values = (fields_map(entry[1]) or {}).values()
        if entry[0] in left_out or sum(len(v) for v in values if isinstance(v, bytes)) > MAX_ENTRY_BYTES:
            return True
    return False


class PartitionConsumer:
    """One partition's ingest, keys, and what awaits the next checkpoint (acks, dead letters)."""

    def __init__(self, partition: int, settings: AggregatorSettings) -> None:
        self.partition = partition
        self.settings = settings
        self.stream = stream_key(partition, settings.key_prefix)
        self.dead_letters = dead_letter_key(partition, settings.key_prefix)
        self.checkpoint = checkpoint_key(partition, settings.group, settings.key_prefix)
        self.restore(State(limits=settings.limits), None)
        #: When the last checkpoint was written, by the monotonic clock (cadence and age survive clock steps).
        self.last_checkpoint = time.monotonic()
        #: The group's last delivered id as of our last read (where to wait for new entries).
        self.last_delivered: tuple[int, int] = (0, 0)
        #: The stream's last entry id when it was last inspected (end of a trim window's backlog).
        self.stream_last: tuple[int, int] = (0, 0)
        #: Entries seen deleted while they were pending, or detected trimmed unread (log summaries).
        self.trims_detected = 0
        #: Read with :mod:`shared.events.bounded` (values longer than an entry may be are skipped on the
        #: wire, not held): after a read ran out of memory or met such an entry, for as long as one is in
        #: reach of the partition's reads (XINFO STREAM shows the first and last entries too).
        self.bounded = False
        #: While its stream's first or last entry is too large to hold: when to inspect the stream again.
        self.inspect_after = 0.0
        #: When the partition last made progress (monotonic): it folded entries, or found none waiting.
        self.progress_at = time.monotonic()
        #: Why its reads fail while entries wait (Redis answers, but the consumer cannot get on); None
        #: while they succeed.
        self.stalled: str | None = None

    def progressed(self, now: float) -> None:
        self.progress_at = now
        self.stalled = None

    def stalled_s(self, now: float) -> float:
        """Seconds without progress while entries waited (0 while the partition reads)."""
        return max(0.0, now - self.progress_at) if self.stalled is not None else 0.0

    def restore(
        self, state: State, restored: checkpoint.Restored | None, *, complete_next: bool = False
    ) -> None:
        """Start from ``state`` (restored, or new). ``complete_next``: the next checkpoint replaces the
        key as a whole (it holds a legacy checkpoint, or one this state does not continue)."""
        trim = restored.trim if restored is not None else None
        self.ingest = PartitionIngest(self.partition, state, forget_after_s=self.settings.source_forget_s)
        if trim is not None:
            self.ingest.trim = trim
        # A new state's first checkpoint is complete too (it is small, and writes the mapping).
        self.complete_next = complete_next or restored is None or restored.legacy
        self.reset_pending()

    @property
    def state(self) -> State:
        return self.ingest.state

    @property
    def position(self) -> tuple[int, int]:
        return self.ingest.position

    def reset_pending(self) -> None:
        self.to_ack: list[bytes] = []
        self.dead: list[DeadLetter] = []
        self.events_since_checkpoint = 0
        #: After a checkpoint transaction failed: its meta field and how many dead letters it wrote (the
        #: first ones of ``dead``), to find out whether Redis executed it although the reply was lost.
        self.unconfirmed: tuple[bytes, int] | None = None
        #: Checkpoints written and their bytes, since this process started (self-metrics).
        self.checkpoints = 0
        self.checkpoint_bytes = 0

    def trim_detected(self, why: str) -> None:
        """Entries we had not read were removed; called with the consumer's lock held."""
        self.trims_detected += 1
        if not self.ingest.trim.open:
            logger.warning(
                "partition %d: %s; gaps of the next batch of each known source are counted as lost "
                "(reason=trimmed)",
                self.partition,
                why,
            )
        self.ingest.open_trim_window(self.stream_last)
        self.events_since_checkpoint += 1  # make the next checkpoint save the window


class Consumer:
    """Consumes this shard's partitions with a consumer group and keeps their metric state.

    Parameters:
        client: a client from :func:`shared.events.bus.connect` (binary replies), or a function that
            builds one: it is then called from the consumer's retry loop until the bus answers.
        settings: aggregator settings (partitions, group, checkpoint cadence ...).
        rebuild: ignore existing checkpoints and fold again from the start of the retained stream.
    """

    def __init__(
        self, client: Client | Connector, settings: AggregatorSettings, rebuild: bool = False
    ) -> None:
        self._client: Client | None = None
        self._connector: Connector | None = None
        if callable(client) and not isinstance(client, redis.Redis | redis.RedisCluster):
            self._connector = client
        else:
            self._client = client
        self.settings = settings
        self.parts = {p: PartitionConsumer(p, settings) for p in settings.my_partitions}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.rebuild = rebuild
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        #: Why the last attempt to use the bus failed, until one succeeds (wrong password, refused ...).
        self.bus_problem: BusProblem | None = None
        self.applied_entries = 0
        self.checkpoints = 0
        #: Changes (under the lock) whenever the fold state may have changed: scrapes of the same
        #: version render the same state.
        self.version = 0
        self._bytes_per_entry = 1024.0
        self._redrain = False
        #: Redis' clock on this process's monotonic clock: what liveness, staleness and retention use.
        self.clock = RedisClock()
        self._next_maintenance = 0.0
        self._next_trim = time.monotonic() + min(TRIM_INTERVAL_S, settings.retention_s / 4)
        self._wait_turn = 0

    @property
    def client(self) -> Client:
        """The bus client, built on first use when the consumer was given a connector."""
        if self._client is None:
            assert self._connector is not None
            self._client = self._connector()
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _read_sets(self) -> list[list[PartitionConsumer]]:
        """The partitions read (and inspected) together in one transaction: all of them on a single
        Redis; each on its own on a cluster, where a transaction's keys must share one slot."""
        parts = list(self.parts.values())
        if is_cluster(self.client):
            return [[pc] for pc in parts]
        return [parts]

    # ---- state access ---------------------------------------------------------------------------

    def snapshot(self) -> State:
        """A copy of the whole state (all partitions merged)."""
        with self.lock:
            return State.merge([pc.state.copy() for pc in self.parts.values()])

    def capture(self, take: Callable[[Sequence[State], int], T]) -> T:
        """``take(states, version)`` under the lock: what a scrape copies, without copying the state."""
        with self.lock:
            return take([pc.state for pc in self.parts.values()], self.version)

    def readings(self) -> Mapping[int, PartitionReading]:
        """Lag and pending per partition (XINFO GROUPS) and checkpoint age, for the scrape."""
        now = time.monotonic()
        out: dict[int, PartitionReading] = {}
        for p, pc in self.parts.items():
            lag = pending = None
            group = None
            if self._client is not None:
                try:
                    group = find_group(self._client.xinfo_groups(pc.stream), self.settings.group)
                except ERRORS:
                    group = None
            if group is not None:
                lag, pending = group.lag, group.pending
            out[p] = PartitionReading(
                lag,
                pending,
                now - pc.last_checkpoint,
                pc.checkpoints,
                pc.checkpoint_bytes,
                stalled_s=pc.stalled_s(now),
            )
        return out

    def stalls(self, at_least_s: float = STALL_REPORT_S) -> list[Stall]:
        """Partitions that have made no progress for ``at_least_s`` while entries waited (for /readyz)."""
        now, wall = time.monotonic(), time.time()
        out = []
        for p, pc in sorted(self.parts.items()):
            why, seconds = pc.stalled, pc.stalled_s(now)
            if why is not None and seconds >= at_least_s:
                out.append(Stall(p, wall - seconds, seconds, why))
        return out

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aggregator-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)
        if self._thread is not None and self._thread.is_alive():
            logger.warning("consumer thread still busy after %.1fs; skipping the final checkpoint", timeout)
            return
        if not self.ready.is_set():
            return  # nothing restored: a checkpoint now would overwrite the saved state with an empty one
        try:
            self.checkpoint_all(force=True)
        except ERRORS as exc:
            logger.warning("final checkpoint failed: %s", exc)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                if not self.ready.is_set():
                    self.setup()
                    self.ready.set()
                elif self._redrain:
                    # A read whose reply was lost (connection reset, timeout, Redis restarted) still
                    # moved its entries into our pending list; ">" never returns them again.
                    self._drain_pending()
                    self._redrain = False
                self.poll_once()
                self.maintain()
                backoff = 0.1
                if self.bus_problem is not None:
                    logger.info("event bus usable again (after: %s)", self.bus_problem)
                    self.bus_problem = None
            except (checkpoint.CheckpointError, SettingsError) as exc:
                self.error = exc
                logger.error("%s", exc)
                return
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc) and self.ready.is_set():
                    # The stream or group vanished (Redis lost its data, or someone deleted the key):
                    # save what we have, then create the group again and restore.
                    logger.warning("consumer group missing (%s); checkpointing and setting up again", exc)
                    self._resetup()
                else:
                    self._bus_failed(exc, backoff)
                    if not isinstance(exc, _IN_TRANSITION):
                        self._note_stall(exc)  # Redis answers, and refuses (a permission taken away ...)
                    self._stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
            except _TRANSIENT as exc:
                self._bus_failed(exc, backoff)
                self._redrain = True
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception as exc:
                logger.exception("consumer loop failed; retrying")
                self._note_stall(exc)
                self._stop.wait(1.0)

    def _note_stall(self, exc: BaseException) -> None:
        """The loop failed although Redis answers: each partition with entries waiting has stalled (until
        one of its reads succeeds); one with none waiting is merely caught up."""
        why = f"{type(exc).__name__}: {exc}"[:300]
        now = time.monotonic()
        for pc in self.parts.values():
            if self._entries_wait(pc) is False:
                pc.progressed(now)
            else:
                pc.stalled = why

    def _entries_wait(self, pc: PartitionConsumer) -> bool | None:
        """Whether entries wait for the partition: undelivered ones (the group's lag), or pending ones
        beyond what was folded. None when Redis cannot tell (or does not answer)."""
        if self._client is None:
            return None
        try:
            group = find_group(self._client.xinfo_groups(pc.stream), self.settings.group)
            pending = PendingSummary.parse(self._client.xpending(pc.stream, self.settings.group))
        except ERRORS:
            return None
        if pending.max_id is not None and pending.max_id > pc.position:
            return True
        if group is None or group.lag is None:
            return None
        return group.lag > 0

    def _bus_failed(self, exc: BaseException, retry_in_s: float) -> None:
        """Remember why the bus failed (``/readyz`` shows it) and log it once per distinct problem."""
        problem = diagnose(exc, self.settings.redis)
        repeated = self.bus_problem is not None and self.bus_problem.reason == problem.reason
        self.bus_problem = problem
        if repeated:
            logger.debug("event bus error: %s; retrying in %.1fs", problem, retry_in_s)
        elif self.ready.is_set():
            logger.warning("event bus error: %s; retrying", problem)
        else:
            logger.error("cannot set up the consumer: %s; retrying until it can", problem)

    def _resetup(self) -> None:
        try:
            for pc in self.parts.values():
                # Even with nothing to acknowledge, and complete: Redis may have lost the last one.
                pc.complete_next = True
                self._checkpoint(pc)
        except ERRORS as exc:
            logger.warning("checkpoint before set-up failed: %s", exc)
            self._stop.wait(0.5)
            return
        self.ready.clear()

    def setup(self) -> None:
        """Create the consumer groups, restore each partition's checkpoint, re-read pending entries."""
        for pc in self.parts.values():
            try:
                self.client.xgroup_create(pc.stream, self.settings.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            restored = (
                None if self.rebuild else checkpoint.fetch(self.client, pc.checkpoint, self.settings.limits)
            )
            if restored is not None:
                with self.lock:
                    pc.restore(restored.state, restored)
                    self.version += 1
                pc.last_checkpoint = time.monotonic() - max(0.0, time.time() - restored.saved_at)
                logger.info(
                    "partition %d restored from checkpoint at %s (%d sources)",
                    pc.partition,
                    format_id(pc.position),
                    len(restored.state.sources),
                )
            elif self.rebuild:
                # Re-read everything retained: move the group back to the start of the stream. Pending
                # entries are delivered again by ">", so they are not drained separately.
                self.client.xgroup_setid(pc.stream, self.settings.group, id="0")
                pc.complete_next = True  # the old checkpoint's fields are not this fold's
                logger.info("partition %d: rebuilding from the start of the stream", pc.partition)
            if not self.rebuild:
                self._take_over_pending(pc)  # after the restore: it may open the partition's trim window
        self.detect_trimmed()  # also learns where the stream ends (a trim window's backlog)
        if not self.rebuild:
            # Entries delivered to us before a crash but never acknowledged come first.
            self._drain_pending()
        self.rebuild = False  # a later re-setup (group lost) restores our own checkpoint
        self.detect_trimmed()

    def _take_over_pending(self, pc: PartitionConsumer) -> None:
        """Make the partition's pending entries ours: entries delivered to another consumer of the group
        and never acknowledged (a shard that stopped without checkpointing before the shard count
        changed, so that the partition now belongs to us) are re-read from our pending list like our own.

        Only one aggregator of a group may consume a partition at a time (docs/scaling.md says in which
        order to restart when changing the shard count); the one that owned it before is gone.
        """
        me = self.settings.consumer_name
        summary = PendingSummary.parse(self.client.xpending(pc.stream, self.settings.group))
        for other, count in summary.consumers:
            if other == me or not count:
                continue
            taken = gone = 0
            while True:
                rows = self.client.xpending_range(
                    pc.stream, self.settings.group, min="-", max="+", count=CLAIM_BATCH, consumername=other
                )
                ids: list[StreamIdT] = [row["message_id"] for row in rows]
                if not ids:
                    break
                claimed = self.client.xclaim(pc.stream, self.settings.group, me, 0, ids, justid=True)
                taken += len(claimed)
                gone += len(ids) - len(claimed)  # deleted while pending: XCLAIM drops them
            logger.warning(
                "partition %d: took over %d entries pending for consumer %r of group %r (it stopped "
                "without acknowledging them, e.g. before the shard count changed)",
                pc.partition,
                taken,
                other,
                self.settings.group,
            )
            if gone:
                with self.lock:
                    pc.trim_detected(f"{gone} entries pending for {other!r} were deleted")

    # ---- reading --------------------------------------------------------------------------------

    def _drain_pending(self) -> None:
        for parts in self._read_sets():
            self._drain_pending_of(parts)

    def _drain_pending_of(self, parts: list[PartitionConsumer]) -> None:
        after = {pc.stream: "0" for pc in parts}
        while after and not self._stop.is_set():
            got = self._read_from(after)
            done = set(after)
            for pc, entries in got:
                if entries:
                    after[pc.stream] = entries[-1][0].decode()
                    done.discard(pc.stream)
            for stream in done:
                del after[stream]
            if got:
                self._apply_entries(got)
        if not self._stop.is_set():
            now = time.monotonic()
            for pc in parts:  # nothing left pending beyond what was folded
                pc.progressed(now)

    def _by_stream(self, reply: object) -> list[tuple[PartitionConsumer, list[RawEntry]]]:
        by_stream = {pc.stream: pc for pc in self.parts.values()}
        return [(by_stream[stream], entries) for stream, entries in read_reply(reply)]

    def _read_from(self, ids: dict[str, str]) -> list[tuple[PartitionConsumer, list[RawEntry]]]:
        """Our pending entries after ``ids`` (stream -> id)."""
        by_stream = {pc.stream: pc for pc in self.parts.values()}
        parts = [by_stream[stream] for stream in ids]
        count = self._read_count(len(ids))
        if not any(pc.bounded for pc in parts):
            try:
                reply = self.client.xreadgroup(
                    self.settings.group,
                    self.settings.consumer_name,
                    ids,  # type: ignore[arg-type]  # redis-py types streams as dict[KeyT, StreamIdT]; str keys are fine
                    count=count,
                )
                return self._by_stream(reply)
            except bounded.OUT_OF_MEMORY as exc:
                bounded.reraise_unless_out_of_memory(exc)
                self._out_of_memory(parts, "re-reading its pending entries")
        read = ("XREADGROUP", "GROUP", self.settings.group, self.settings.consumer_name, "COUNT", count)
        replies = bounded.execute(
            self.client, parts[0].stream, [(*read, "STREAMS", *ids, *ids.values())], transaction=False
        )
        if isinstance(replies.values[0], Exception):
            raise replies.values[0]
        return self._by_stream(replies.values[0])

    def _read_count(self, streams: int = 1) -> int:
        """Entries to ask of each stream of a read: as many as fit :data:`READ_BYTES_BUDGET` (shared by
        the read's ``streams``) at the running average size of the entries read so far."""
        per_stream = READ_BYTES_BUDGET / max(1, streams)
        return max(1, min(self.settings.read_count, int(per_stream / self._bytes_per_entry)))

    def _out_of_memory(self, parts: list[PartitionConsumer], doing: str) -> None:
        """A read of ``parts`` ran out of memory: Redis sent it all the same (its entries are pending
        now), so read those partitions with values too long to hold skipped on the wire from now on."""
        for pc in parts:
            if not pc.bounded:
                logger.warning(
                    "partition %d: out of memory %s (an entry too large to hold?); reading it with values "
                    "over %d bytes skipped on the wire: such entries are dead-lettered as too_large by id",
                    pc.partition,
                    doing,
                    MAX_ENTRY_BYTES,
                )
            pc.bounded = True

    def poll_once(self) -> int:
        """Read one round of new entries, fold them, checkpoint if due. Returns entries read."""
        got = self._inspect_and_read()
        if not got:
            # Nothing waiting: wait for new entries with a plain XREAD (it takes nothing from the
            # group), then read them atomically with the inspection as above. A blocking XREADGROUP
            # would fold whatever follows a hole trimmed while we waited, before we could see the hole.
            self._wait_for_entries()
            got = self._inspect_and_read()
        n = self._apply_entries(got) if got else 0
        now = time.monotonic()
        for pc in self.parts.values():  # every partition read, and what waited folded
            pc.progressed(now)
        self.checkpoint_all()
        return n

    def _wait_for_entries(self) -> None:
        """Block until a partition may have new entries, or ``block_ms`` passed.

        One XREAD on all partitions on a single Redis. On a cluster an XREAD's streams must share a
        slot, so each wait watches one partition, in turn, for ``block_ms`` divided among them (entries
        of the others are then seen within that slice; under load nobody waits at all).
        """
        parts = list(self.parts.values())
        block_ms = self.settings.block_ms
        if len(parts) > 1 and is_cluster(self.client):
            block_ms = max(MIN_WAIT_MS, block_ms // len(parts))
            parts = [parts[self._wait_turn % len(parts)]]
            self._wait_turn += 1
        try:
            self.client.xread(
                {pc.stream: format_id(pc.last_delivered) for pc in parts},
                count=1,
                block=block_ms,
            )
        except bounded.OUT_OF_MEMORY as exc:
            bounded.reraise_unless_out_of_memory(exc)
            # The entry that arrived is too large to hold; the wait is over all the same.
            self._out_of_memory(parts, "waiting for entries")

    def _inspect_and_read(self) -> list[tuple[PartitionConsumer, list[RawEntry]]]:
        """Stream and group info and a non-blocking read in one transaction: trim detection sees
        exactly the stream the read saw, so a hole is known before the entries after it are folded.

        The transaction also checks our pending list: an entry there beyond our position was
        delivered by a read whose reply never reached us (connection reset, timeout; redis-py may
        even have retried the command without telling us). Those come first, from the pending list.
        One transaction per read set (:meth:`_read_sets`).
        """
        got: list[tuple[PartitionConsumer, list[RawEntry]]] = []
        unseen = False
        for parts in self._read_sets():
            try:
                got_set, unseen_set = self._inspect_and_read_set(parts)
            except ERRORS:
                # Entries read from the other partitions are ours now (pending): fold them first.
                if got:
                    self._apply_entries(got)
                raise
            got += got_set
            unseen = unseen or unseen_set
        if unseen:
            logger.warning(
                "entries were delivered to us by a read whose reply was lost; re-reading them from the pending list"
            )
            self._drain_pending()  # in stream order, including what this read returned
            return []
        return got

    def _inspect_and_read_set(
        self, parts: list[PartitionConsumer]
    ) -> tuple[list[tuple[PartitionConsumer, list[RawEntry]]], bool]:
        count = self._read_count(len(parts))
        left_out: bounded.Replies | None = None  # a bounded read: what its replies left out
        if any(pc.bounded for pc in parts):
            left_out = self._inspect_and_read_bounded(parts, count)
            replies = left_out.values
        else:
            pipe = self.client.pipeline(transaction=True)
            for pc in parts:
                pipe.xinfo_stream(pc.stream)
                pipe.xinfo_groups(pc.stream)
                pipe.xpending(pc.stream, self.settings.group)
            pipe.xreadgroup(
                self.settings.group,
                self.settings.consumer_name,
                {pc.stream: ">" for pc in parts},
                count=count,
            )
            try:
                replies = pipe.execute(raise_on_error=False)
            except bounded.OUT_OF_MEMORY as exc:
                bounded.reraise_unless_out_of_memory(exc)
                # Redis executed the transaction: what it delivered is pending now, and re-read (bounded)
                # from the pending list below.
                self._out_of_memory(parts, "reading new entries")
                left_out = self._inspect_and_read_bounded(parts, count)
                replies = left_out.values
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        got = self._by_stream(replies[-1])
        read = {pc.partition: entries for pc, entries in got}
        unseen = False
        inspected = True
        for i, pc in enumerate(parts):
            info, groups, pending = replies[3 * i : 3 * i + 3]
            if isinstance(info, Exception) or isinstance(groups, Exception):
                continue
            stream_info = None
            if info is None:  # left out of this read (bounded), see _inspect_and_read_bounded
                inspected = False
            else:
                stream_info = StreamInfo.parse(info)
                if _end_too_large(info, left_out.too_large if left_out else frozenset()):
                    self._end_too_large(pc)
                    inspected = False
            self._inspect(pc, stream_info, groups, read.get(pc.partition, []))
            if not isinstance(pending, Exception):
                summary = PendingSummary.parse(pending)
                if summary.count and summary.max_id is not None and summary.max_id > pc.position:
                    unseen = True
        if left_out is not None and not left_out.oversized and inspected and not unseen:
            for pc in parts:
                if pc.bounded:
                    logger.info(
                        "partition %d: no entry too large to hold in reach; reading as usual", pc.partition
                    )
                    pc.bounded = False
        return got, unseen

    def _end_too_large(self, pc: PartitionConsumer) -> None:
        """XINFO STREAM showed an entry too large to hold as the stream's first or last: every inspection
        would carry it (Redis builds and sends it, even when this process skips it), so the partition is
        read bounded and inspected only every :data:`BOUNDED_INSPECT_S` while that lasts."""
        if not pc.bounded or pc.inspect_after <= time.monotonic():
            logger.warning(
                "partition %d: the stream's first or last entry is too large to hold; inspecting the stream "
                "every %.0fs (not at every read) while it is",
                pc.partition,
                BOUNDED_INSPECT_S,
            )
        pc.bounded = True
        pc.inspect_after = time.monotonic() + BOUNDED_INSPECT_S

    def _inspect_and_read_bounded(self, parts: list[PartitionConsumer], count: int) -> bounded.Replies:
        """The transaction of :meth:`_inspect_and_read_set`, with values too long to hold skipped on the
        wire (:mod:`shared.events.bounded`): its raw replies, in the same places (None for an XINFO STREAM
        left out while the stream's first or last entry is too large: see :meth:`_end_too_large`)."""
        group = self.settings.group
        now = time.monotonic()
        commands: list[tuple[str | int, ...]] = []
        places: list[int | None] = []  # for each place of the normal layout, its command (None: left out)
        for pc in parts:
            if pc.inspect_after <= now:
                places.append(len(commands))
                commands.append(("XINFO", "STREAM", pc.stream))
            else:
                places.append(None)
            places += [len(commands), len(commands) + 1]
            commands += [("XINFO", "GROUPS", pc.stream), ("XPENDING", pc.stream, group)]
        streams = [pc.stream for pc in parts]
        read = ("XREADGROUP", "GROUP", group, self.settings.consumer_name, "COUNT", count)
        places.append(len(commands))
        commands.append((*read, "STREAMS", *streams, *(">" for _ in streams)))
        got = bounded.execute(self.client, parts[0].stream, commands)
        values = [None if at is None else got.values[at] for at in places]
        return bounded.Replies(values, got.oversized, got.too_large)

    def _apply_entries(self, got: list[tuple[PartitionConsumer, list[RawEntry]]]) -> int:
        n = 0
        size = 0
        now = time.monotonic()
        with self.lock:
            for pc, entries in got:
                if entries:
                    pc.progressed(now)
                for entry_id, fields in entries:
                    n += 1
                    pc.to_ack.append(entry_id)
                    payload = fields.get(ENTRY_FIELD) if fields else None
                    if isinstance(payload, bytes):
                        size += len(payload)
                        if len(payload) > MAX_ENTRY_BYTES and not pc.bounded:
                            # Until it is out of reach (XINFO STREAM shows it while first or last), do not
                            # read it whole again.
                            logger.warning(
                                "partition %d: entry %s holds %d bytes; reading with values over %d bytes "
                                "skipped on the wire while it is in reach",
                                pc.partition,
                                entry_id.decode(),
                                len(payload),
                                MAX_ENTRY_BYTES,
                            )
                            pc.bounded = True
                    else:
                        size += 64
                    events_before = pc.ingest.events
                    outcome = pc.ingest.entry(parse_id(entry_id), fields, pc.dead)
                    if outcome is Outcome.DELETED:  # trimmed or deleted while pending: its events are lost
                        pc.trim_detected(f"pending entry {entry_id.decode()} was deleted")
                    pc.events_since_checkpoint += pc.ingest.events - events_before
            if n:
                self.version += 1
        if n:
            self._bytes_per_entry = max(64.0, 0.5 * self._bytes_per_entry + 0.5 * size / n)
        self.applied_entries += n
        return n

    # ---- checkpoints --------------------------------------------------------------------------------

    def checkpoint_all(self, force: bool = False) -> None:
        now = time.monotonic()
        for pc in self.parts.values():
            due = (
                pc.events_since_checkpoint >= self.settings.checkpoint_events
                or now - pc.last_checkpoint >= self.settings.checkpoint_interval_s
            )
            if (force or due) and (pc.to_ack or pc.dead or pc.events_since_checkpoint):
                self._checkpoint(pc)
            elif due:
                pc.last_checkpoint = now

    def _checkpoint(self, pc: PartitionConsumer) -> None:
        """What changed in the state (with the position), new dead letters and the acknowledgements of
        the entries covered: one MULTI/EXEC on keys that share the partition's hash tag."""
        with self.lock:
            dirty, dirty_sources = pc.state.take_dirty()
            complete = pc.complete_next
            if complete:
                write = checkpoint.complete(pc.state, pc.ingest.trim)
            else:
                write = checkpoint.changes(pc.state, pc.ingest.trim, dirty, dirty_sources)
            ids, dead = pc.to_ack, pc.dead
            pc.to_ack, pc.dead = [], []
            pc.events_since_checkpoint = 0
        sent = False
        written = 0
        try:
            if pc.unconfirmed is not None:
                failed_meta, failed_dead = pc.unconfirmed
                if self.client.hget(pc.checkpoint, checkpoint.META) == failed_meta:
                    # Redis executed the failed transaction; only its reply was lost. Its dead letters
                    # (the first ones retried) are in the stream already: do not add them twice.
                    written = failed_dead
                pc.unconfirmed = None
            pipe = self.client.pipeline(transaction=True)
            write.queue(pipe, pc.checkpoint)
            for letter in dead[written:]:
                pipe.xadd(pc.dead_letters, letter.fields(), maxlen=DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]  # bytes field names
            if ids:
                pipe.xack(pc.stream, self.settings.group, *ids)
            sent = True
            pipe.execute()
        except BaseException:
            with self.lock:  # try again next round (acknowledging twice is harmless, so is setting a field)
                pc.state.give_back_dirty(dirty, dirty_sources)
                pc.to_ack = ids + pc.to_ack
                pc.dead = dead[written:] + pc.dead
                if sent:
                    pc.unconfirmed = (write.meta, len(dead) - written)
            raise
        pc.complete_next = False
        pc.last_checkpoint = time.monotonic()
        pc.checkpoints += 1
        pc.checkpoint_bytes += write.size
        self.checkpoints += 1

    # ---- maintenance: trimming by age, detecting entries removed unread --------------------------

    def maintain(self, force: bool = False) -> None:
        """Housekeeping between polls: follow Redis' clock, trim when due."""
        now = time.monotonic()
        if force or now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_INTERVAL_S
            self.clock.sync(self.client)
        if force or now >= self._next_trim:
            self._next_trim = now + min(TRIM_INTERVAL_S, self.settings.retention_s / 4)
            self.trim()

    def trim(self, approximate: bool = True) -> None:
        """Trim each stream by age (the replay window), by Redis' clock."""
        for pc in self.parts.values():
            removed = trim_by_age(
                self.client, pc.stream, self.settings.retention_s, self.clock.now(), approximate
            )
            if removed:
                logger.info(
                    "partition %d: trimmed %d entries older than %.0fs",
                    pc.partition,
                    removed,
                    self.settings.retention_s,
                )

    def detect_trimmed(self) -> None:
        """Inspect each stream (outside a read) and open a trim window if unread entries were removed."""
        for pc in self.parts.values():
            try:
                info, groups = self._stream_and_groups(pc)
            except redis.ResponseError:
                continue  # no stream yet
            self._inspect(pc, StreamInfo.parse(info), groups, [])

    def _stream_and_groups(self, pc: PartitionConsumer) -> tuple[object, object]:
        """``XINFO STREAM`` and ``XINFO GROUPS`` of the partition in one transaction; ``ResponseError``
        when there is no stream. XINFO STREAM holds the first and last entries: bounded when needed."""
        if not pc.bounded:
            pipe = self.client.pipeline(transaction=True)
            pipe.xinfo_stream(pc.stream)
            pipe.xinfo_groups(pc.stream)
            try:
                info, groups = pipe.execute()
            except bounded.OUT_OF_MEMORY as exc:
                bounded.reraise_unless_out_of_memory(exc)
                self._out_of_memory([pc], "inspecting its stream")
            else:
                if _end_too_large(info, frozenset()):
                    self._end_too_large(pc)
                return info, groups
        commands = [("XINFO", "STREAM", pc.stream), ("XINFO", "GROUPS", pc.stream)]
        got = bounded.execute(self.client, pc.stream, commands)
        info, groups = got.values
        for reply in (info, groups):
            if isinstance(reply, Exception):
                raise reply
        if _end_too_large(info, got.too_large):
            self._end_too_large(pc)
        return info, groups

    def _inspect(
        self, pc: PartitionConsumer, info: StreamInfo | None, groups: object, read: list[RawEntry]
    ) -> None:
        """Note where the group and the stream stand, and act on entries removed unread
        (:func:`.retention.removed_unread`); without ``info`` (left out of a bounded read) only the former."""
        group = find_group(groups, self.settings.group)
        if group is None:
            return
        pc.last_delivered = parse_id(read[-1][0]) if read else group.last_delivered_id
        if info is None:
            return
        pc.stream_last = info.last_generated_id
        for removal in removed_unread(info, group, pc.ingest.trim.handled_deleted, len(read)):
            if removal.deleted is not None:
                pc.ingest.trim.handled_deleted = removal.deleted
            with self.lock:
                pc.trim_detected(removal.why)
            if removal.entries_read is not None:
                last = read[-1][0].decode() if read else format_id(group.last_delivered_id)
                self.client.xgroup_setid(
                    pc.stream, self.settings.group, last, entries_read=removal.entries_read
                )


__all__ = ["Consumer", "Stall"]
