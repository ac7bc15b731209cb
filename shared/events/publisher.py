"""Non-blocking event publisher: ``emit()`` appends to a bounded buffer; a flusher thread batches to Redis.

The hot path does no I/O, no encoding and takes no lock. A background thread assigns sequence numbers,
encodes batches with msgpack and writes them with few XADDs. It sleeps while there is nothing to send:
the first event emitted after that wakes it, and it lingers a few milliseconds (``linger_s``, like
Kafka's ``linger.ms``) so that one entry carries many events. When Redis is down the buffer holds a
bounded number of events (plus, with ``spool_dir``, any number on disk); beyond that events are dropped
and the drop count is published as an ``events.dropped`` event once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from keyword import iskeyword
from pathlib import Path
from typing import Any

import msgspec

from shared.settings import SettingsError

from .bus import ERRORS, Client, RedisSettings, connect
from .codec import MAX_ENTRY_BYTES, MAX_EVENTS_PER_BATCH, encode_entries
from .emit import Emit
from .schema import EVENT_TYPES_BY_NAME, SCHEMA_VERSION
from .streams import DEFAULT_PREFIX, partition_of, stream_key
from .writer import StreamWriter

logger = logging.getLogger(__name__)

_time = time.time
_decode = msgspec.msgpack.Decoder().decode

#: A pending batch: (number of events, encoded payload).
_Pending = tuple[int, bytes]

#: What makes the flusher keep its batches and try again later (a misconfigured URL included: it is
#: logged, and the events wait in the buffer or spool rather than the producer failing).
_SEND_ERRORS: tuple[type[Exception], ...] = (*ERRORS, OSError, SettingsError)


class Declared:
    """An event type and the fields a positional emitter (:meth:`Publisher.declare`) sends, in order.

    ``event(ts, values)`` is the event map the flusher encodes (fields, then ``type`` and ``ts``, as
    the dict form ends up): a generated dict display, several times cheaper than ``dict(zip(...))``.
    """

    __slots__ = ("event", "fields", "type")

    def __init__(self, type_: str, fields: tuple[str, ...]) -> None:
        self.type = type_
        self.fields = fields
        items = "".join(f"{f!r}: v[{i}], " for i, f in enumerate(fields))
        source = f"def event(ts, v):\n    return {{{items}'type': {type_!r}, 'ts': ts}}\n"
        env: dict[str, Any] = {}
        exec(compile(source, f"<event map of {type_}>", "exec"), env)  # noqa: S102  (names checked by declare())
        self.event: Callable[[float, tuple[Any, ...]], dict[str, Any]] = env["event"]


#: A buffered event: (type, time, fields), or (Declared, time, values in the declared order).
_Buffered = tuple[str, float, dict[str, Any] | None] | tuple[Declared, float, tuple[Any, ...]]


def make_src(service: str) -> str:
    """A source id: one producer process life (service, host, pid and a random boot nonce)."""
    return f"{service}:{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


class Publisher:
    """Publishes events for one producer process.

    Parameters:
        bus: where the event bus is: :class:`~shared.events.bus.RedisSettings`, or just its URL.
        service: service name, part of the source id and of ``source.started``.
        version: software version reported in ``source.started`` (``boilerhouse_info``).
        partitions: number of partition streams; this source writes to one, chosen by hashing its id.
        prefix: key prefix of the streams.
        buffer_size: events held in memory while Redis is unreachable, before dropping.
        batch_size: events per stream entry.
        linger_s: after the first event of a batch, how long the flusher waits for more before it
            sends (at most; a full batch goes at once).
        flush_interval_s: how often an idle flusher looks for work nobody woke it for: batches other
            processes spooled, drops to report.
        heartbeat_interval_s: how often ``source.heartbeat`` and the registered snapshots are sent.
        stream_maxlen: approximate hard cap on the stream length (memory safety valve).
        spool_dir: if set, batches that do not fit in memory during an outage are written here and sent
            later, also by the next process life; nothing is dropped.
        wait_replicas: with a replicated bus, a batch counts as written only once this many replicas
            have it (``WAIT``), so a failover cannot lose it; 0 (the default) does not wait.
        wait_timeout_ms: how long each ``WAIT`` may take before the batches are sent again.
        client: an already-built redis client (tests, shared connection pools); overrides ``bus``.
        schema_version: the batch format written: 2 (the default) numbers events by the batch header,
            1 (one ``seq`` per event) is for aggregators older than version 2 (docs/events.md).
    """

    #: ``emit(type, fields)``: the hot path. A closure built per instance by ``_make_emit``: free
    #: variables instead of attribute lookups keep it near CPython's floor for a call.
    emit: Emit

    def __init__(
        self,
        bus: RedisSettings | str | None = None,
        service: str = "app",
        *,
        version: str = "0",
        partitions: int = 1,
        prefix: str = DEFAULT_PREFIX,
        buffer_size: int = 100_000,
        batch_size: int = 500,
        linger_s: float = 0.005,
        flush_interval_s: float = 0.25,
        heartbeat_interval_s: float = 5.0,
        stream_maxlen: int = 1_000_000,
        spool_dir: str | os.PathLike[str] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        client: Client | None = None,
        src: str | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        if schema_version not in (1, 2):
            raise ValueError(f"schema_version {schema_version} is not one this publisher writes (1, 2)")
        if not 1 <= batch_size <= MAX_EVENTS_PER_BATCH:
            # The aggregator dead-letters an entry of more events as too_large (docs/events.md, Entry size).
            raise ValueError(
                f"batch_size must be 1..{MAX_EVENTS_PER_BATCH} events per entry, not {batch_size}"
            )
        self.service = service
        self.src = src or make_src(service)
        self.partition = partition_of(self.src, partitions)
        self.stream = stream_key(self.partition, prefix)
        self._partitions = partitions
        self._prefix = prefix
        settings = bus if isinstance(bus, RedisSettings) else RedisSettings(bus or RedisSettings().url)
        # Connected by the flusher on first send: whether the bus is up (and is a cluster) is its concern.
        self._writer = StreamWriter(
            lambda: connect(settings, "publisher"), stream_maxlen, wait_replicas, wait_timeout_ms, client
        )
        self._cap = buffer_size
        self._batch_size = batch_size
        self._linger = linger_s
        self._interval = flush_interval_s
        self._schema_version = schema_version
        self._heartbeat_interval = heartbeat_interval_s
        self._maxlen = stream_maxlen
        self._spool = Path(spool_dir) if spool_dir else None
        self._spool_refused = False  # the spool's disk refused the last write (full): see _spool_batch
        if self._spool:
            self._spool.mkdir(parents=True, exist_ok=True)
            recover_spool(self._spool)

        self._buf: deque[_Buffered] = deque()
        self._pending: deque[_Pending] = deque()
        # Encoded events awaiting XADD, in a one-element list so that emit()'s closure reads it
        # without an attribute lookup.
        self._pending_box = [0]
        # The flusher's doorbell: a lock it holds while asleep, released by whoever wakes it (a lock
        # may be released by another thread; releasing it costs an emitter ~0.1 us, once per batch).
        self._bell = threading.Lock()
        self._bell.acquire()
        # True while the flusher sleeps with nothing to send: the next emit() rings the bell.
        self._asleep = [False]
        self.emit = self._make_emit()
        self._seq = 0
        self._dropped = 0
        self._dropped_reported = 0
        self._drop_lock = threading.Lock()
        self._move_lock = threading.RLock()
        self._snapshots: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._connected = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self.sent_events = 0
        self.sent_entries = 0
        self.sent_spooled_entries = 0
        self._thread = threading.Thread(target=self._run, name=f"event-flusher-{service}", daemon=True)
        self.emit(
            "source.started",
            {
                "service": service,
                "version": version,
                "host": socket.gethostname()[:200],
                "pid": os.getpid(),
                "start_time_s": _process_start_time(),
            },
        )
        self._thread.start()

    # ---- hot path -------------------------------------------------------------------------------

    def _make_emit(self) -> Emit:
        buf, pending, cap, append, now = self._buf, self._pending_box, self._cap, self._buf.append, _time
        asleep, wake, drop = self._asleep, self._wake, self._drop

        def emit(type_: str, fields: dict[str, Any] | None = None) -> None:
            """Queue one event. Never blocks, never raises for I/O reasons; takes ownership of ``fields``.

            The buffer holds at most ``buffer_size`` unsent events (queued plus encoded); past that the
            event is dropped and counted.
            """
            if len(buf) + pending[0] < cap:
                append((type_, now(), fields))
                if asleep[0]:
                    wake()
            else:
                drop()

        return emit

    def declare(self, type_: str, *fields: str) -> Callable[..., None]:
        """A positional emitter for one event type: ``acquired = pub.declare("container.acquired",
        "pool_id", "status", "duration_s", "affinity")``, then ``acquired("web", "success", 0.4, "hit")``
        (or by keyword) on the hot path.

        The same event as ``emit(type_, {...})`` reaches the stream, but the caller builds no dict: the
        flusher does. Fields not declared are not sent (optional ones may be declared and passed None).
        Raises ValueError for an unknown type or field.
        """
        et = EVENT_TYPES_BY_NAME.get(type_)
        if et is None:
            raise ValueError(f"unknown event type {type_!r}")
        known = {f.name for f in et.fields}
        bad = [f for f in fields if f not in known or not f.isidentifier() or iskeyword(f)]
        if bad or len(set(fields)) != len(fields):
            raise ValueError(f"{type_}: fields {bad or list(fields)} are not distinct fields of the type")
        missing = [f.name for f in et.fields if not f.optional and f.name not in fields]
        if missing:
            raise ValueError(f"{type_}: required fields {missing} are not declared")
        params = ", ".join(fields)
        # Generated so that the caller's arguments are the tuple the buffer holds (no *args, no dict)
        # and a wrong call fails as any Python call does.
        source = (
            f"def emit_{type_.replace('.', '_')}({params}):\n"
            "    if len(buf) + pending[0] < cap:\n"
            f"        append((head, now(), ({params}{',' if len(fields) == 1 else ''})))\n"
            "        if asleep[0]:\n"
            "            wake()\n"
            "    else:\n"
            "        drop()\n"
        )
        env: dict[str, Any] = {
            "buf": self._buf,
            "pending": self._pending_box,
            "cap": self._cap,
            "append": self._buf.append,
            "head": Declared(type_, fields),
            "now": _time,
            "asleep": self._asleep,
            "wake": self._wake,
            "drop": self._drop,
        }
        exec(compile(source, f"<emitter of {type_}>", "exec"), env)  # noqa: S102  (names checked against the schema above)
        emitter: Callable[..., None] = env[f"emit_{type_.replace('.', '_')}"]
        return emitter

    def _wake(self) -> None:
        """Ring the flusher's doorbell (an emitter saw it asleep, or flush/close want it now)."""
        self._asleep[0] = False
        with contextlib.suppress(RuntimeError):  # rung already, not yet answered
            self._bell.release()

    def _drop(self) -> None:
        with self._drop_lock:
            self._dropped += 1

    @property
    def _pending_events(self) -> int:
        return self._pending_box[0]

    @_pending_events.setter
    def _pending_events(self, value: int) -> None:
        self._pending_box[0] = value

    # ---- control --------------------------------------------------------------------------------

    def add_snapshot(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on every heartbeat (from the flusher thread); it should emit snapshots."""
        self._snapshots.append(callback)

    @property
    def dropped(self) -> int:
        """Events dropped so far because the buffer was full."""
        return self._dropped

    @property
    def connected(self) -> bool:
        return self._connected

    def buffered(self) -> int:
        """Events not yet written to Redis (memory only; spooled batches are not counted)."""
        return len(self._buf) + self._pending_events

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything emitted so far is written (or ``timeout``); True if it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._all_sent():
                return True
            self._wake()
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Publish ``source.stopped`` and flush; returns within about ``timeout`` seconds.

        Whatever could not be written by then is spooled (with ``spool_dir``) or logged as lost,
        together with an ``events.dropped`` for drops not yet reported.
        """
        if self._stop.is_set():
            return
        deadline = time.monotonic() + timeout
        self.emit("source.stopped", {})
        while time.monotonic() < deadline - 0.05:
            if self._all_sent():
                break
            if self._spool and not self._connected and self._retry_at > time.monotonic():
                break  # the bus is down: the flusher spools everything on its way out
            self._wake()
            time.sleep(0.005)
        self._stop.set()
        self._wake()
        self._thread.join(max(0.05, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "event flusher still blocked on the bus at the shutdown deadline; %d events not written",
                self.buffered(),
            )
        self._writer.close()

    def _all_sent(self) -> bool:
        # Under the move lock: while the flusher moves events from the buffer into an encoded batch
        # (or a batch into the spool) they are in neither place.
        with self._move_lock:
            if self._buf or self._pending or self._unsent_files():
                return False
        with self._drop_lock:
            return self._dropped == self._dropped_reported

    def _flush_on_exit(self) -> None:
        """Runs on the flusher thread after close(): spool (or count as lost) what was not written."""
        with self._drop_lock:
            unreported = self._dropped - self._dropped_reported
            self._dropped_reported = self._dropped
        left = self.buffered()
        if not left and not unreported:
            return
        if self._spool:
            if unreported:
                self._buf.append(("events.dropped", _time(), {"count": unreported}))
            self._drain_into_pending()
            unsent = self._pending_events
            self._spool_pending()
            lost = self._pending_events  # what the spool's disk refused
            logger.warning(
                "event bus unreachable at shutdown: %d events spooled to %s%s",
                unsent - lost,
                self._spool,
                f"; {lost} lost, the spool refused them" if lost else "",
            )
        else:
            logger.warning(
                "event bus unreachable at shutdown: %d events lost (%d dropped earlier, unreported)",
                left,
                unreported,
            )

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109  (a deadline for the flusher thread, not a cancel scope)
        """:meth:`close` from async code, without blocking the event loop."""
        await asyncio.to_thread(self.close, timeout)

    # ---- flusher --------------------------------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = time.monotonic() + self._heartbeat_interval
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + self._heartbeat_interval
                self._heartbeat()
            if now < self._retry_at:  # the bus is down: spool (with a spool) until the next attempt
                self._flush_guarded()
                self._sleep(min(self._retry_at - now, next_heartbeat - now, self._interval))
                continue
            if not self._buf and not self._pending:
                self._sleep(min(next_heartbeat - now, self._interval), idle=True)
                if not self._buf:  # no event woke us: look for spool files, drops to report
                    self._flush_guarded()
                    continue
            if len(self._buf) < self._batch_size:
                self._sleep(self._linger)  # let the batch fill (flush() and close() cut this short)
            self._flush_guarded()
        try:
            self._flush_on_exit()
        except Exception:
            logger.exception("spooling at shutdown failed")

    def _sleep(self, timeout: float, idle: bool = False) -> bool:
        """Wait for the doorbell up to ``timeout``; True if rung. ``idle``: the buffer was empty, so
        the next emit() rings it (unless an event arrived since the buffer was looked at)."""
        if idle:
            self._asleep[0] = True
            if self._buf:  # emitted after the check above, perhaps without ringing
                self._asleep[0] = False
                return True
        rung = self._bell.acquire(timeout=max(0.0, timeout))
        self._asleep[0] = False
        return rung

    def _flush_guarded(self) -> None:
        try:
            self._flush_once()
        except Exception:  # never let the flusher die
            logger.exception("event flusher failed; retrying")

    def _heartbeat(self) -> None:
        for callback in self._snapshots:
            try:
                callback()
            except Exception:
                logger.exception("snapshot callback %r failed", callback)
        self.emit("source.heartbeat", {})

    def _flush_once(self) -> None:
        if time.monotonic() < self._retry_at:
            if self._spool:  # keep memory small during an outage: everything goes to disk, in order
                self._drain_into_pending()
                self._spool_pending()
            return
        self._drain_into_pending()
        try:
            if not self._send_spool():
                # Another publisher is sending the spool, maybe with batches of ours in it: ours must
                # follow them, so this round they join the spool too (nothing waits, nothing drops).
                self._spool_pending()
                return
            while self._pending:
                self._send(list(self._pending)[:64])
                self._drain_into_pending()
            if not self._connected:
                logger.info("publishing to %s as %s", self.stream, self.src)
            self._connected = True
            self._backoff = 0.0
        except _SEND_ERRORS as exc:
            if self._connected or self._backoff == 0.0:
                logger.warning(
                    "event bus unreachable (%s: %s); buffering up to %d events",
                    type(exc).__name__,
                    exc,
                    self._cap,
                )
            self._connected = False
            self._backoff = min(5.0, max(0.05, self._backoff * 2))
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)  # noqa: S311  (jitter, not a secret)
            return
        # Everything was written, so the bus is back (or never left): report the drops, once, in the
        # next round (a round that starts by reporting could still fail and drop more after it).
        with self._drop_lock:
            unreported = self._dropped - self._dropped_reported
            self._dropped_reported += unreported
        if unreported:  # bypasses the cap: this single event is what makes the loss visible
            self._buf.append(("events.dropped", _time(), {"count": unreported}))

    def _spool_pending(self) -> None:
        with self._move_lock:
            while self._pending:
                if not self._spool_batch(self._pending[0]):
                    return  # the spool is full: the rest waits in memory, within buffer_size
                self._pending.popleft()

    def _drain_into_pending(self) -> None:
        with self._move_lock:
            self._drain_into_pending_locked()

    def _drain_into_pending_locked(self) -> None:
        """Move buffered events into encoded batches, numbering them in emit order: version 2 batches
        carry the first number in their header, version 1 batches one per event."""
        buf, size, pop = self._buf, self._batch_size, self._buf.popleft
        while buf:
            n = min(len(buf), size)  # events emitted meanwhile go in the next batch
            events: list[dict[str, Any]] = []
            append = events.append
            for _ in range(n):
                head, ts, body = pop()
                if type(body) is dict:
                    body["type"] = head
                    body["ts"] = ts
                    append(body)
                elif body is None:
                    append({"type": head, "ts": ts})
                else:  # a declared event: its values in the declared order
                    append(head.event(ts, body))  # type: ignore[union-attr, arg-type]  # a Declared and its values here
            first = self._seq + 1
            self._seq += n
            if self._schema_version == 1:
                for seq, ev in enumerate(events, first):
                    ev["seq"] = seq
                self._queue_entries(events, None)
            else:
                self._queue_entries(events, first)

    def _queue_entries(self, events: list[dict[str, Any]], first_seq: int | None) -> None:
        """Queue numbered events (version 2: from ``first_seq``; version 1: each its own ``seq``) as
        entries of at most ``MAX_ENTRY_BYTES`` (the aggregator dead-letters larger ones): a batch that
        encodes larger is split; an event too large on its own is dropped before it is written, counted
        like any drop (``events.dropped``), and takes no ``seq``."""
        entries, too_large = encode_entries(self.src, events, first_seq=first_seq)
        if too_large:
            self._seq -= len(too_large)
            with self._drop_lock:
                self._dropped += len(too_large)
            logger.warning(
                "dropped %d event(s) larger than a stream entry may be (%d bytes), e.g. a %s",
                len(too_large),
                MAX_ENTRY_BYTES,
                too_large[0].get("type"),
            )
        self._pending.extend(entries)
        self._pending_events += len(events) - len(too_large)

    def _send(self, batch: list[_Pending]) -> None:
        self._writer.add(self.stream, [payload for _, payload in batch])
        for _ in batch:
            n, _payload = self._pending.popleft()
            self._pending_events -= n
            self.sent_events += n
            self.sent_entries += 1

    # ---- spool ----------------------------------------------------------------------------------

    def _spool_batch(self, item: _Pending) -> bool:
        """Write one batch to the spool (fsync, atomic rename); False if the disk refused it.

        A refused batch (disk full, quota, I/O error) keeps its place at the head of the memory
        buffer, where it counts against ``buffer_size``: events beyond that are dropped before they get
        a sequence number, so the loss is reported in ``events.dropped``, never seen as a gap. The
        partial file is removed; the first refusal of an episode is logged, and its end.
        """
        n, payload = item
        assert self._spool is not None
        # The partition is part of the name: a later life with another partition count sends the
        # batch where the source's earlier batches went (its dedupe and gap state live there).
        name = f"{time.time_ns():020d}-{os.getpid()}-{n}-p{self.partition}.batch"
        tmp = self._spool / (name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(self._spool / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if not self._spool_refused:
                self._spool_refused = True
                logger.warning(
                    "cannot write to the spool %s (%s): batches stay in memory, up to %d events; "
                    "events beyond that are dropped and reported as dropped",
                    self._spool,
                    exc.strerror or exc,
                    self._cap,
                )
            return False
        if self._spool_refused:
            self._spool_refused = False
            logger.info("the spool %s takes batches again", self._spool)
        self._pending_events -= n
        return True

    def _spooled_files(self) -> list[Path]:
        if not self._spool:
            return []
        return sorted(self._spool.glob("*.batch"))

    def _unsent_files(self) -> list[Path]:
        """Spooled batches not yet written, including those being sent right now."""
        if not self._spool:
            return []
        return [*self._spool.glob("*.batch"), *self._spool.glob("*.sending-*")]

    def _send_spool(self) -> bool:
        """Send spooled batches oldest first (also those of earlier process lives), 64 per round trip.

        One sender at a time (an flock on ``.lock`` in the spool directory), so each source's batches
        reach the stream in order even when several publishers share the directory. A file is deleted
        only after its XADD was answered: a crash in between sends it again, and the aggregator skips
        the repeated sequence numbers. Returns False if another publisher holds the lock.
        """
        if not self._spool or not self._unsent_files():
            return True
        fd = os.open(self._spool / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # With the lock held nobody else is sending: claimed files were left by a sender that
            # died mid-send; they go back to the queue (a repeat is skipped by sequence number).
            for path in self._spool.glob("*.sending-*"):
                path.rename(path.with_suffix(".batch"))
            self._send_spool_locked()
            return True
        finally:
            os.close(fd)  # releases the lock

    def _send_spool_locked(self) -> None:
        files = self._spooled_files()
        while files:
            claimed: list[tuple[Path, Path, bytes]] = []
            for path in files[:64]:
                target = path.with_suffix(f".sending-{os.getpid()}")
                try:
                    path.rename(target)
                except FileNotFoundError:
                    continue  # another process took it
                claimed.append((path, target, target.read_bytes()))
            files = files[64:]
            if not claimed:
                continue
            by_stream: dict[str, list[bytes]] = {}  # in file order within each stream
            for path, _, payload in claimed:
                by_stream.setdefault(self._stream_of(path, payload), []).append(payload)
            try:
                for stream, payloads in by_stream.items():
                    self._writer.add(stream, payloads)
            except BaseException:
                for path, target, _ in claimed:
                    target.rename(path)
                raise
            for _, target, _ in claimed:
                target.unlink()
            self.sent_entries += len(claimed)
            self.sent_spooled_entries += len(claimed)
            self._spool_refused = False  # space was freed: a new refusal is a new episode, logged again

    def _stream_of(self, path: Path, payload: bytes) -> str:
        """The stream a spooled batch belongs to: its own source's partition (maybe an earlier life's),
        as named in the file, or else computed from its source with this publisher's partition count."""
        named = _SPOOLED_PARTITION.search(path.name)
        if named is not None:
            return stream_key(int(named.group(1)), self._prefix)
        if self._partitions <= 1:
            return self.stream
        try:
            src = _decode(payload).get("src")
        except (msgspec.DecodeError, AttributeError):  # damaged: sent as it is, and dead-lettered
            return self.stream
        return (
            stream_key(partition_of(src, self._partitions), self._prefix) if type(src) is str else self.stream
        )


#: ``…-p<partition>.batch``: the partition a spooled batch's source wrote to.
_SPOOLED_PARTITION = re.compile(r"-p(\d+)\.batch$")


def recover_spool(spool: Path) -> None:
    """Drop torn writes: ``*.tmp`` files of dead processes were never completely written.

    The batch in such a file never left its process, so its events are lost like the rest of that
    process's memory (the aggregator counts them as a sequence gap if the source is seen again).
    Batches claimed by a sender that died mid-send are put back by the next sender (``_send_spool``).
    """
    for path in spool.glob("*.batch.tmp"):
        pid = path.name.split("-")[1] if path.name.count("-") >= 2 else ""
        if pid.isdigit() and _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_start_time() -> float:
    """Unix time at which this process started (from /proc where available)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
