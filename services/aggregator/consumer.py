"""The read / fold / checkpoint / acknowledge loop of one aggregator shard.

Entries are acknowledged only inside the transaction that checkpoints the state covering them, so a
crash at any instant followed by a restart gives exactly the metrics of a run that never crashed:
the state comes back from the checkpoint and the unacknowledged entries are read again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgpack
import redis

from shared.events.codec import ENTRY_FIELD, EventDecodeError, decode_batch
from shared.events.streams import checkpoint_key, dead_letter_key, stream_key

from .fold import State, apply_batch, copy_state, merge_states, record_dead_letter, record_lost
from .metrics import METRICS
from .settings import AggregatorSettings

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
DEAD_LETTER_MAXLEN = 100_000


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


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
        self.to_ack: list[bytes] = []
        self.dead: list[dict[bytes, bytes]] = []
        self.events_since_checkpoint = 0
        self.last_checkpoint = time.time()
        self.position: tuple[int, int] = (0, 0)


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
                self.poll_once()
                backoff = 0.1
            except CheckpointMismatch as exc:
                self.error = exc
                logger.error("%s", exc)
                return
            except (redis.RedisError, OSError) as exc:
                logger.warning("event bus error: %s; retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
            except Exception:
                logger.exception("consumer loop failed; retrying")
                self._stop.wait(1.0)

    def setup(self) -> None:
        """Create the consumer groups and restore each partition's checkpoint."""
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
                with self.lock:
                    pc.state = State.from_data(doc["state"], self.settings.series_cap)
                pos = pc.state.positions.get(pc.partition)
                pc.position = parse_id(pos) if pos else (0, 0)
                logger.info("partition %d restored from checkpoint at %s", pc.partition, pos)
            elif self.rebuild:
                # Re-read everything retained: move the group back to the start of the stream.
                self.client.xgroup_setid(pc.stream, self.settings.group, id="0")
                logger.info("partition %d: rebuilding from the start of the stream", pc.partition)
            self._check_trimmed(pc)
        # Entries delivered to us before a crash but never acknowledged come first.
        self._drain_pending()

    def _check_trimmed(self, pc: PartitionConsumer) -> None:
        """Count entries trimmed after our position before we read them (lost, reason=trimmed)."""
        if pc.position == (0, 0):
            return
        try:
            info = self.client.xinfo_stream(pc.stream)
        except redis.ResponseError:
            return
        first = info.get("first-entry")
        if first and parse_id(first[0]) > pc.position:
            # Entries between our position and the first retained entry are gone. Their events
            # show up as sequence gaps when their sources are next seen; mark the cause here.
            logger.warning("partition %d: entries after %s were trimmed before they were read",
                           pc.partition, pc.position)

    def _drain_pending(self) -> None:
        while not self._stop.is_set():
            got = self._read("0")
            if not got:
                return
            if not self._apply_entries(got):
                return

    def _read(self, from_id: str, block: int | None = None) -> list[tuple[PartitionConsumer, list[Any]]]:
        streams = {pc.stream: from_id for pc in self.parts.values()}
        reply = self.client.xreadgroup(
            self.settings.group,
            self.settings.consumer_name,
            streams,
            count=self.settings.read_count,
            block=block,
        )
        by_stream = {pc.stream.encode(): pc for pc in self.parts.values()}
        out = []
        for stream, entries in reply or []:
            if entries:
                out.append((by_stream[stream], entries))
        return out

    def poll_once(self) -> int:
        """Read one round of new entries, fold them, checkpoint if due. Returns entries read."""
        got = self._read(">", block=self.settings.block_ms)
        n = self._apply_entries(got) if got else 0
        self.checkpoint_all()
        return n

    def _apply_entries(self, got: list[tuple[PartitionConsumer, list[Any]]]) -> int:
        n = 0
        with self.lock:
            for pc, entries in got:
                state = pc.state
                for entry_id, fields in entries:
                    n += 1
                    pc.to_ack.append(entry_id)
                    if fields is None:  # deleted while pending
                        continue
                    eid = parse_id(entry_id)
                    if eid <= pc.position:
                        continue  # already covered by the checkpoint (redelivery after a crash)
                    pc.position = eid
                    state.positions[pc.partition] = entry_id.decode()
                    try:
                        batch = decode_batch(fields.get(ENTRY_FIELD), entry_id.decode())
                    except EventDecodeError as exc:
                        record_dead_letter(state, exc.reason)
                        pc.dead.append(_dead_letter(entry_id, exc.reason, exc.detail, fields))
                        continue
                    rejected = apply_batch(state, batch)
                    pc.events_since_checkpoint += len(batch.events)
                    for reason, detail, ev in rejected:
                        record_dead_letter(state, reason)
                        payload = msgpack.packb({"src": batch.src, "event": ev}, default=repr)
                        pc.dead.append(_dead_letter(entry_id, reason, detail, {ENTRY_FIELD: payload}))
        self.applied_entries += n
        return n

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
            blob = msgpack.packb(
                {"v": CHECKPOINT_VERSION, "mapping": mapping_fingerprint(), "saved_at": time.time(),
                 "state": pc.state.to_data()},
                use_bin_type=True,
            )
            ids, dead = pc.to_ack, pc.dead
            pc.to_ack, pc.dead = [], []
            pc.events_since_checkpoint = 0
        pipe = self.client.pipeline(transaction=True)
        pipe.set(pc.checkpoint, blob)
        for fields in dead:
            pipe.xadd(pc.dead_letters, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        if ids:
            pipe.xack(pc.stream, self.settings.group, *ids)
        try:
            pipe.execute()
        except BaseException:
            with self.lock:  # try again next round; nothing was acknowledged
                pc.to_ack = ids + pc.to_ack
                pc.dead = dead + pc.dead
            raise
        pc.last_checkpoint = time.time()

    def trim(self) -> None:
        """Trim each stream by age (the replay window)."""
        min_ms = int((time.time() - self.settings.retention_s) * 1000)
        for pc in self.parts.values():
            self.client.xtrim(pc.stream, minid=f"{min_ms}-0", approximate=True)


def _dead_letter(entry_id: bytes, reason: str, detail: str, fields: dict[Any, Any]) -> dict[bytes, bytes]:
    payload = fields.get(ENTRY_FIELD)
    if not isinstance(payload, bytes):
        payload = msgpack.packb({k.decode(errors="replace") if isinstance(k, bytes) else str(k): v
                                 for k, v in fields.items()}, default=repr)
    return {
        b"entry_id": entry_id,
        b"reason": reason.encode(),
        b"detail": detail[:500].encode(errors="replace"),
        b"payload": payload[:65536],
    }


__all__ = ["Consumer", "CheckpointMismatch", "record_lost"]
