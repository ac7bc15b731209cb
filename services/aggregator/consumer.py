"""The read / fold / checkpoint / acknowledge loop of one aggregator shard.

Entries are acknowledged only inside the transaction that checkpoints the state covering them, so a
crash at any instant followed by a restart gives exactly the metrics of a run that never crashed:
the state comes back from the checkpoint and the unacknowledged entries are read again.

Loss accounting (see docs/reliability.md): a jump in a source's ``seq`` is counted in
``events_lost_total``. When the consumer has seen entries of its unread range disappear (trimmed or
deleted before it read them), it opens a *trim window* for the partition: the first gap of each source
that was known at that moment, or first appears while the window is open, is counted with
``reason="trimmed"`` instead of ``reason="seq_gap"``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgpack
import redis

from shared.events.codec import ENTRY_FIELD, EventDecodeError, decode_batch
from shared.events.streams import (
    checkpoint_key,
    dead_letter_key,
    entries_removed,
    format_id,
    parse_id,
    stream_key,
)

from .fold import (
    LAST_SEEN,
    State,
    TrimWindow,
    apply_batch,
    copy_state,
    merge_states,
    record_dead_letter,
)
from .metrics import METRICS
from .settings import AggregatorSettings

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
DEAD_LETTER_MAXLEN = 100_000
#: Upper bound on raw bytes asked for in one XREADGROUP (entries hold up to 1 MiB each).
READ_BYTES_BUDGET = 8 << 20
#: How often the stream is trimmed by age and checked for entries trimmed before we read them.
MAINTENANCE_INTERVAL_S = 5.0
#: Trim at most this often (approximate MINID trims are cheap but not free).
TRIM_INTERVAL_S = 60.0


def mapping_fingerprint() -> list[Any]:
    """What a checkpoint's state layout depends on: metric names, kinds and buckets."""
    return [[m.name, m.kind, list(m.buckets or ())] for m in METRICS]


class CheckpointMismatch(RuntimeError):
    """The checkpoint was written by a different metric mapping; run ``aggregator --rebuild``."""


class PartitionConsumer:
    """State, position and pending acknowledgements of one partition."""

    def __init__(self, partition: int, settings: AggregatorSettings) -> None:
        self.partition = partition
        self.stream = stream_key(partition, settings.key_prefix)
        self.dead_letters = dead_letter_key(partition, settings.key_prefix)
        self.checkpoint = checkpoint_key(partition, settings.group, settings.key_prefix)
        self.state = State(settings.series_cap)
        self.trim = TrimWindow()
        self.reset_pending()
        self.last_checkpoint = time.time()
        self.position: tuple[int, int] = (0, 0)
        #: The group's last delivered id as of our last read (where to wait for new entries).
        self.last_delivered: tuple[int, int] = (0, 0)
        #: The stream's last entry id when it was last inspected (end of a trim window's backlog).
        self.stream_last: tuple[int, int] = (0, 0)
        #: Entries seen deleted while they were pending, or detected trimmed unread (log summaries).
        self.trims_detected = 0

    def reset_pending(self) -> None:
        self.to_ack: list[bytes] = []
        self.dead: list[dict[bytes, bytes]] = []
        self.events_since_checkpoint = 0
        #: After a checkpoint transaction failed: its blob and how many dead letters it wrote (the first
        #: ones of ``dead``), to find out whether Redis executed it although the reply was lost.
        self.unconfirmed: tuple[bytes, int] | None = None


class Consumer:
    """Consumes this shard's partitions with a consumer group and keeps their metric state.

    Parameters:
        client: a redis client (``protocol=2``; binary replies).
        settings: aggregator settings (partitions, group, checkpoint cadence ...).
        rebuild: ignore existing checkpoints and fold again from the start of the retained stream.
    """

    def __init__(self, client: redis.Redis, settings: AggregatorSettings, rebuild: bool = False) -> None:
        self.client = client
        self.settings = settings
        self.parts = {p: PartitionConsumer(p, settings) for p in settings.my_partitions}
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.rebuild = rebuild
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.applied_entries = 0
        self.checkpoints = 0
        self._bytes_per_entry = 1024.0
        self._redrain = False
        self._next_maintenance = 0.0
        self._next_trim = time.monotonic() + min(TRIM_INTERVAL_S, settings.retention_s / 4)

    # ---- state access ---------------------------------------------------------------------------

    def snapshot(self) -> State:
        with self.lock:
            return merge_states([copy_state(pc.state) for pc in self.parts.values()])

    def runtime_values(self) -> dict[str, dict[tuple[str, ...], float]]:
        """Lag and pending per partition (XINFO GROUPS), checkpoint age."""
        lag: dict[tuple[str, ...], float] = {}
        pending: dict[tuple[str, ...], float] = {}
        for p, pc in self.parts.items():
            try:
                groups = self.client.xinfo_groups(pc.stream)
            except redis.RedisError:
                continue
            for g in groups:
                name = g.get("name")
                if (name.decode() if isinstance(name, bytes) else name) == self.settings.group:
                    if g.get("lag") is not None:
                        lag[(str(p),)] = float(g["lag"])
                    pending[(str(p),)] = float(g.get("pending", 0))
        now = time.time()
        ages = [now - pc.last_checkpoint for pc in self.parts.values()]
        return {
            "aggregator_consumer_lag_entries": lag,
            "aggregator_pending_entries": pending,
            "aggregator_checkpoint_age_seconds": {(): max(ages) if ages else 0.0},
        }

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
        except redis.RedisError as exc:
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
            except CheckpointMismatch as exc:
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
                    logger.warning("event bus error: %s; retrying in %.1fs", exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
            except (redis.RedisError, OSError) as exc:
                logger.warning("event bus error: %s; retrying in %.1fs", exc, backoff)
                self._redrain = True
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception:
                logger.exception("consumer loop failed; retrying")
                self._stop.wait(1.0)

    def _resetup(self) -> None:
        try:
            for pc in self.parts.values():
                self._checkpoint(pc)  # even with nothing to acknowledge: Redis may have lost the last one
        except redis.RedisError as exc:
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
            raw = None if self.rebuild else self.client.get(pc.checkpoint)
            if raw is not None:
                doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
                if doc.get("mapping") != mapping_fingerprint():
                    raise CheckpointMismatch(
                        f"checkpoint {pc.checkpoint} was written by another metric mapping "
                        "(buckets or metrics changed): run `boilerhouse aggregator --rebuild`"
                    )
                state = State.from_data(doc["state"], self.settings.series_cap)
                with self.lock:
                    pc.state = state
                    pc.trim = TrimWindow.from_data(doc.get("trim"))
                    pc.reset_pending()
                pos = state.positions.get(pc.partition)
                pc.position = parse_id(pos) if pos else (0, 0)
                pc.last_checkpoint = float(doc.get("saved_at", time.time()))
                logger.info(
                    "partition %d restored from checkpoint at %s (%d sources)",
                    pc.partition,
                    pos,
                    len(state.last_seq),
                )
            elif self.rebuild:
                # Re-read everything retained: move the group back to the start of the stream. Pending
                # entries are delivered again by ">", so they are not drained separately.
                self.client.xgroup_setid(pc.stream, self.settings.group, id="0")
                logger.info("partition %d: rebuilding from the start of the stream", pc.partition)
        self.detect_trimmed()  # also learns where the stream ends (a trim window's backlog)
        if not self.rebuild:
            # Entries delivered to us before a crash but never acknowledged come first.
            self._drain_pending()
        self.rebuild = False  # a later re-setup (group lost) restores our own checkpoint
        self.detect_trimmed()

    def _drain_pending(self) -> None:
        after = {pc.stream: "0" for pc in self.parts.values()}
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

    def _read_from(
        self, ids: dict[str, str], block: int | None = None
    ) -> list[tuple[PartitionConsumer, list[Any]]]:
        reply = self.client.xreadgroup(
            self.settings.group,
            self.settings.consumer_name,
            ids,  # type: ignore[arg-type]
            count=self._read_count(),
            block=block,
        )
        by_stream = {pc.stream.encode(): pc for pc in self.parts.values()}
        return [(by_stream[stream], entries) for stream, entries in reply or [] if entries]

    def _read_count(self) -> int:
        return max(1, min(self.settings.read_count, int(READ_BYTES_BUDGET / self._bytes_per_entry)))

    def _read(self, from_id: str, block: int | None = None) -> list[tuple[PartitionConsumer, list[Any]]]:
        return self._read_from({pc.stream: from_id for pc in self.parts.values()}, block)

    def poll_once(self) -> int:
        """Read one round of new entries, fold them, checkpoint if due. Returns entries read."""
        got = self._inspect_and_read()
        if not got:
            # Nothing waiting: wait for new entries with a plain XREAD (it takes nothing from the
            # group), then read them atomically with the inspection as above. A blocking XREADGROUP
            # would fold whatever follows a hole trimmed while we waited, before we could see the hole.
            self.client.xread(
                {pc.stream: format_id(pc.last_delivered) for pc in self.parts.values()},
                count=1,
                block=self.settings.block_ms,
            )
            got = self._inspect_and_read()
        n = self._apply_entries(got) if got else 0
        self.checkpoint_all()
        return n

    def _inspect_and_read(self) -> list[tuple[PartitionConsumer, list[Any]]]:
        """Stream and group info and a non-blocking read in one transaction: trim detection sees
        exactly the stream the read saw, so a hole is known before the entries after it are folded.

        The transaction also checks our pending list: an entry there beyond our position was
        delivered by a read whose reply never reached us (connection reset, timeout; redis-py may
        even have retried the command without telling us). Those come first, from the pending list.
        """
        pipe = self.client.pipeline(transaction=True)
        parts = list(self.parts.values())
        for pc in parts:
            pipe.xinfo_stream(pc.stream)
            pipe.xinfo_groups(pc.stream)
            pipe.xpending(pc.stream, self.settings.group)
        pipe.xreadgroup(
            self.settings.group,
            self.settings.consumer_name,
            {pc.stream: ">" for pc in parts},
            count=self._read_count(),
        )  # type: ignore[arg-type]
        replies = pipe.execute(raise_on_error=False)
        reply = replies[-1]
        if isinstance(reply, Exception):
            raise reply
        by_stream = {pc.stream.encode(): pc for pc in parts}
        got = [(by_stream[stream], entries) for stream, entries in reply or [] if entries]
        read = {pc.partition: entries for pc, entries in got}
        unseen = False
        for i, pc in enumerate(parts):
            info, groups, pending = replies[3 * i : 3 * i + 3]
            if isinstance(info, Exception) or isinstance(groups, Exception):
                continue
            self._inspect(pc, info, groups, read.get(pc.partition, []))
            if (
                isinstance(pending, dict)
                and pending.get("pending")
                and pending.get("max") is not None
                and parse_id(pending["max"]) > pc.position
            ):
                unseen = True
        if unseen:
            logger.warning(
                "entries were delivered to us by a read whose reply was lost; re-reading "
                "them from the pending list"
            )
            self._drain_pending()  # in stream order, including what this read returned
            return []
        return got

    def _apply_entries(self, got: list[tuple[PartitionConsumer, list[Any]]]) -> int:
        n = 0
        size = 0
        with self.lock:
            for pc, entries in got:
                state = pc.state
                for entry_id, fields in entries:
                    n += 1
                    pc.to_ack.append(entry_id)
                    eid = parse_id(entry_id)
                    if eid <= pc.position:
                        continue  # already covered by the checkpoint (redelivery after a crash)
                    if not fields:  # deleted (trimmed) while pending: its events are lost
                        pc.position = eid
                        self._trim_detected(pc, f"pending entry {entry_id.decode()} was deleted")
                        continue
                    pc.position = eid
                    state.positions[pc.partition] = entry_id.decode()
                    payload = fields.get(ENTRY_FIELD)
                    size += len(payload) if isinstance(payload, bytes) else 64
                    try:
                        batch = decode_batch(payload, entry_id.decode())
                    except EventDecodeError as exc:
                        record_dead_letter(state, exc.reason)
                        pc.dead.append(_dead_letter(entry_id, exc.reason, exc.detail, fields))
                        continue
                    pc.trim.attribute(state, batch, eid)
                    rejected = apply_batch(state, batch)
                    pc.events_since_checkpoint += len(batch.events)
                    for reason, detail, ev in rejected:
                        record_dead_letter(state, reason)
                        payload = msgpack.packb({"src": batch.src, "event": ev}, default=repr)
                        pc.dead.append(_dead_letter(entry_id, reason, detail, {ENTRY_FIELD: payload}))
        if n:
            self._bytes_per_entry = max(64.0, 0.5 * self._bytes_per_entry + 0.5 * size / n)
        self.applied_entries += n
        return n

    # ---- checkpoints --------------------------------------------------------------------------------

    def checkpoint_all(self, force: bool = False) -> None:
        now = time.time()
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
        with self.lock:
            blob = _pack_checkpoint(
                {
                    "v": CHECKPOINT_VERSION,
                    "mapping": mapping_fingerprint(),
                    "saved_at": time.time(),
                    "state": pc.state.to_data(),
                    "trim": pc.trim.to_data(),
                }
            )
            ids, dead = pc.to_ack, pc.dead
            pc.to_ack, pc.dead = [], []
            pc.events_since_checkpoint = 0
        sent = False
        try:
            written = 0
            if pc.unconfirmed is not None:
                failed_blob, failed_dead = pc.unconfirmed
                if self.client.get(pc.checkpoint) == failed_blob:
                    # Redis executed the failed transaction; only its reply was lost. Its dead letters
                    # (the first ones retried) are in the stream already: do not add them twice.
                    written = failed_dead
                pc.unconfirmed = None
            pipe = self.client.pipeline(transaction=True)
            pipe.set(pc.checkpoint, blob)
            for fields in dead[written:]:
                pipe.xadd(pc.dead_letters, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            if ids:
                pipe.xack(pc.stream, self.settings.group, *ids)
            sent = True
            pipe.execute()
        except BaseException:
            with self.lock:  # try again next round (acknowledging twice is harmless)
                pc.to_ack = ids + pc.to_ack
                pc.dead = dead[written:] + pc.dead
                if sent:
                    pc.unconfirmed = (blob, len(dead) - written)
            raise
        pc.last_checkpoint = time.time()
        self.checkpoints += 1

    # ---- maintenance: trimming, trim detection, forgetting dead sources -----------------------------

    def maintain(self, force: bool = False) -> None:
        """Periodic housekeeping, run by the consumer loop between polls."""
        now = time.monotonic()
        if not force and now < self._next_maintenance:
            return
        self._next_maintenance = now + MAINTENANCE_INTERVAL_S
        self.forget_sources()
        if force or now >= self._next_trim:
            self._next_trim = now + min(TRIM_INTERVAL_S, self.settings.retention_s / 4)
            self.trim()

    def detect_trimmed(self) -> None:
        """Inspect each stream (outside a read) and open a trim window if unread entries were removed."""
        for pc in self.parts.values():
            pipe = self.client.pipeline(transaction=True)
            pipe.xinfo_stream(pc.stream)
            pipe.xinfo_groups(pc.stream)
            try:
                info, groups = pipe.execute()
            except redis.ResponseError:
                continue  # no stream yet
            self._inspect(pc, info, groups, [])

    def _inspect(
        self, pc: PartitionConsumer, info: dict[str, Any], groups: list[dict[str, Any]], read: list[Any]
    ) -> None:
        """Open a trim window if entries after the group's last delivered id were removed unread.

        ``info``/``groups`` were taken atomically with the read that returned ``read``. With the
        group's ``last-delivered-id`` L before that read (everything up to L was delivered to us, so
        it is folded or pending), entries were lost unread when the stream's first entry is after L and
        the group's lag (entries added minus entries read) exceeds what is left in the stream (for a
        group that has delivered nothing: when the stream holds fewer entries than were ever added), or
        when an entry after L was deleted (``max-deleted-entry-id`` > L).
        """
        group = next((g for g in groups if _text(g.get("name")) == self.settings.group), None)
        if group is None:
            return
        last_delivered = parse_id(group["last-delivered-id"])
        pc.last_delivered = parse_id(read[-1][0]) if read else last_delivered
        pc.stream_last = parse_id(info.get("last-generated-id") or b"0-0")
        max_deleted = parse_id(info.get("max-deleted-entry-id") or b"0-0")
        first = info.get("first-entry")
        length = int(info.get("length", 0))
        if max_deleted > last_delivered and max_deleted > pc.trim.handled_deleted:
            pc.trim.handled_deleted = max_deleted  # XDEL of an entry we had not read
            with self.lock:
                self._trim_detected(pc, f"entry {format_id(max_deleted)} was deleted unread")
        if first is not None and parse_id(first[0]) <= last_delivered:
            return  # everything removed had been delivered: folded, or pending (seen when drained)
        added, entries_read = info.get("entries-added"), group.get("entries-read")
        if last_delivered == (0, 0):
            # A group that has delivered nothing (new, or set back to the start by a rebuild): what the
            # stream no longer holds was never read by it. Replay counts the same (replay.fold_entry).
            lost_unread = entries_removed(info)
        elif added is not None and entries_read is not None:
            lost_unread = int(added) - int(entries_read) > length
        else:
            lost_unread = group.get("lag") is None and length > 0
        if not lost_unread:
            return
        with self.lock:
            self._trim_detected(pc, f"entries after {format_id(last_delivered)} were trimmed unread")
        # Redis keeps counting the trimmed entries as unread: set the group's read counter to the
        # truth (all removed entries, plus those this read returned) so the lag gauge is right again.
        last = read[-1][0].decode() if read else format_id(last_delivered)
        self.client.execute_command(
            "XGROUP",
            "SETID",
            pc.stream,
            self.settings.group,
            last,
            "ENTRIESREAD",
            int(added or 0) - length + len(read),
        )

    def _trim_detected(self, pc: PartitionConsumer, why: str) -> None:
        """Called with the lock held."""
        pc.trims_detected += 1
        if not pc.trim.open:
            logger.warning(
                "partition %d: %s; gaps of the next batch of each known source are "
                "counted as lost (reason=trimmed)",
                pc.partition,
                why,
            )
        pc.trim.start(set(pc.state.last_seq), max(pc.stream_last, pc.position))
        pc.events_since_checkpoint += 1  # make the next checkpoint save the window

    def forget_sources(self) -> None:
        """Drop sources silent (by their own clock) for longer than ``source_forget_s``.

        Measured against the newest event time seen, so replay and crash recovery forget exactly the
        same sources as a live run. Counters are never touched; only per-source bookkeeping goes.
        """
        horizon_s = self.settings.source_forget_s
        with self.lock:
            for pc in self.parts.values():
                state = pc.state
                cutoff = state.newest_ts - horizon_s
                dead = {s for s, info in state.sources.items() if info[LAST_SEEN] < cutoff}
                if not dead:
                    continue
                for src in dead:
                    del state.sources[src]
                    state.last_seq.pop(src, None)
                for per_labels in state.gauges.values():
                    for per_src in per_labels.values():
                        for src in dead & per_src.keys():
                            del per_src[src]
                pc.trim.forget(dead)
                pc.events_since_checkpoint += 1
                logger.info(
                    "partition %d: forgot %d sources silent for over %.0fs",
                    pc.partition,
                    len(dead),
                    horizon_s,
                )

    def trim(self, approximate: bool = True) -> None:
        """Trim each stream by age (the replay window)."""
        min_ms = int((time.time() - self.settings.retention_s) * 1000)
        for pc in self.parts.values():
            removed = self.client.xtrim(pc.stream, minid=f"{min_ms}-0", approximate=approximate)
            if removed:
                logger.info(
                    "partition %d: trimmed %d entries older than %.0fs",
                    pc.partition,
                    removed,
                    self.settings.retention_s,
                )


def _pack_checkpoint(doc: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb(doc, use_bin_type=True)
    except OverflowError:
        # A counter grew past msgpack's 64-bit integers (absurd but valid input): store such values as
        # floats, as the exposition renders them anyway, rather than never checkpointing again.
        return msgpack.packb(_big_ints_to_floats(doc), use_bin_type=True)


def _big_ints_to_floats(value: Any) -> Any:
    if type(value) is int:
        return value if -(2**63) <= value < 2**64 else float(value)
    if isinstance(value, dict):
        return {k: _big_ints_to_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_to_floats(v) for v in value]
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dead_letter(entry_id: bytes, reason: str, detail: str, fields: dict[Any, Any]) -> dict[bytes, bytes]:
    payload = fields.get(ENTRY_FIELD)
    if not isinstance(payload, bytes):
        payload = msgpack.packb(
            {k.decode(errors="replace") if isinstance(k, bytes) else str(k): v for k, v in fields.items()},
            default=repr,
        )
    return {
        b"entry_id": entry_id,
        b"reason": reason.encode(),
        b"detail": detail[:500].encode(errors="replace"),
        b"payload": payload[:65536],
    }


__all__ = ["CheckpointMismatch", "Consumer"]
