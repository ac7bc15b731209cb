"""What one ``GET /metrics`` does: negotiate the format, render (or join a rendering in progress),
stream it, gzip it when asked.

The fold state is rendered by :class:`.render.Renderer`, the aggregator's own process, GC and platform
metrics by prometheus_client's standard collectors (appended, as the registry used to list them).
Scrapers that ask an escaping scheme the renderer does not write get the old path, prometheus_client
over :class:`.exposition.StateCollector`: slower, same text.

Concurrent scrapes of the same state in the same format share one rendering (an HA pair of
Prometheus servers, or a scraper retrying): the first one renders, chunk by chunk as its client reads,
and later ones read the chunks it kept. A rendering keeps its chunks for late joiners while they add
up to at most :data:`RETAIN_BYTES` (a gzipped exposition of 100 000 histogram series is ~7 MB);
past that it drops every chunk all its readers have read, and accepts no more joiners, so that a scrape
holds O(chunk) of output at a time, not O(output).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import UNDERSCORES

from .fold import State
from .metrics import PartitionReading
from .render import Capture, Renderer

#: Output a rendering keeps for scrapes that join it late.
RETAIN_BYTES = 16 << 20
#: Text is handed to the client (and to gzip) in pieces of about this size.
CHUNK_BYTES = 256 << 10
#: zlib level 1: ~400 MB/s here, an exposition shrinks ~20x (level 6: ~130 MB/s, ~27x; the library's
#: ``gzip.compress`` uses 9: ~45 MB/s).
GZIP_LEVEL = 1

#: The consumer's way to run a function on its partitions' states (and their version) under its lock.
CaptureUnderLock = Callable[[Callable[[Sequence[State], int], Capture]], Capture]


@dataclass(frozen=True, slots=True)
class Format:
    """The response a scraper asked for (prometheus_client's content negotiation)."""

    content_type: str
    openmetrics: bool
    escaping: str
    gzip: bool
    #: prometheus_client's encoder for this format (the library path, and the standard collectors).
    encoder: Callable[[CollectorRegistry], bytes]

    @property
    def key(self) -> tuple[str, bool]:
        return self.content_type, self.gzip


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` asks for gzip (RFC 9110, 12.5.3): ``gzip`` (or ``x-gzip``) with a
    quality above 0, or else ``*`` above 0. prometheus_client's helper of the same name takes
    ``gzip;q=0`` (gzip refused) as a yes; a bad quality value counts as refused."""
    gzip_q: float | None = None
    star_q: float | None = None
    for part in accept_encoding.split(","):
        coding, *params = (x.strip() for x in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            gzip_q = q if gzip_q is None else max(gzip_q, q)
        elif coding == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def negotiate(accept: str, accept_encoding: str = "") -> Format:
    """The format for these request headers: the content type exactly as prometheus_client chooses it;
    gzip when :func:`gzip_accepted` says so."""
    encoder, content_type = choose_encoder(accept)
    escaping = UNDERSCORES
    if isinstance(encoder, partial):
        escaping = str(encoder.keywords.get("escaping", UNDERSCORES))
    return Format(
        content_type=content_type,
        openmetrics=content_type.startswith("application/openmetrics-text"),
        escaping=escaping,
        gzip=gzip_accepted(accept_encoding),
        encoder=encoder,
    )


class Exposer:
    """Renders the consumer's state for scrapes; shares renderings among concurrent scrapes.

    Parameters:
        renderer: renders captured fold state.
        capture: runs a function on the partitions' states under the consumer's lock.
        version: the state's version (changes whenever the fold changes it); read without the lock.
        partitions: per-partition readings at scrape time (lag, pending, checkpoint age).
        standard: the aggregator's process, GC and platform collectors, rendered after the state.
        fallback: a registry rendering everything through prometheus_client (for escapings the
            renderer does not write).
        clock: wall clock.
        retain_bytes: output a rendering keeps for scrapes that join it late.
    """

    def __init__(
        self,
        renderer: Renderer,
        capture: CaptureUnderLock,
        version: Callable[[], int],
        partitions: Callable[[], Mapping[int, PartitionReading]],
        standard: CollectorRegistry,
        fallback: CollectorRegistry,
        clock: Callable[[], float] = time.time,
        retain_bytes: int = RETAIN_BYTES,
    ) -> None:
        self._renderer = renderer
        self._retain = retain_bytes
        self._capture = capture
        self._version = version
        self._partitions = partitions
        self._standard = standard
        self._fallback = fallback
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[tuple[tuple[str, bool], int], _Shared] = {}
        #: Renderings started and scrapes that joined one (for tests and the benchmark).
        self.renderings = 0
        self.joined = 0

    def open(self, fmt: Format) -> Reader:
        """A reader of the exposition in ``fmt``: joins a rendering of the same state in progress, or
        starts one (nothing is rendered until the reader asks for the first chunk)."""
        key = (fmt.key, self._version())
        with self._lock:
            shared = self._inflight.get(key)
            reader = shared.join() if shared is not None else None
            if reader is not None:
                self.joined += 1
                return reader
            new = _Shared(self._produce(fmt), lambda: self._forget(key, new), self._retain)
            self._inflight[key] = shared = new
            self.renderings += 1
            reader = shared.join()
            assert reader is not None  # a new rendering accepts readers
            return reader

    def _forget(self, key: tuple[tuple[str, bool], int], shared: _Shared) -> None:
        with self._lock:
            if self._inflight.get(key) is shared:
                del self._inflight[key]

    def render(self, fmt: Format) -> bytes:
        """The whole exposition at once (tests, tools)."""
        reader = self.open(fmt)
        try:
            return b"".join(reader)
        finally:
            reader.close()

    def _produce(self, fmt: Format) -> Iterator[bytes]:
        chunks = (
            self._text(fmt) if self._renderer.handles(fmt.escaping) else iter([fmt.encoder(self._fallback)])
        )
        return _gzip(chunks) if fmt.gzip else chunks

    def _text(self, fmt: Format) -> Iterator[bytes]:
        now = self._clock()
        renderer = self._renderer
        om = fmt.openmetrics
        cap = self._capture(lambda states, version: renderer.capture(states, version, now, exemplars=om))
        readings = cap.readings(self._partitions())
        pending: list[str] = []
        size = 0
        for text in renderer.lines(cap, readings, fmt.openmetrics):
            if not pending and len(text) >= CHUNK_BYTES:
                yield text.encode()
                continue
            pending.append(text)
            size += len(text)
            if size >= CHUNK_BYTES:
                yield "".join(pending).encode()
                pending.clear()
                size = 0
        # The standard collectors, in the same format (for OpenMetrics, with the final # EOF).
        yield "".join(pending).encode() + fmt.encoder(self._standard)


_compressor: ThreadPoolExecutor | None = None
_compressor_lock = threading.Lock()


def _compress_pool() -> ThreadPoolExecutor:
    global _compressor  # noqa: PLW0603  (one pool per process, made on the first gzipped scrape)
    with _compressor_lock:
        if _compressor is None:
            _compressor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="metrics-gzip")
        return _compressor


def _gzip(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Gzip the chunks. zlib lets go of the GIL while it compresses, so a worker thread compresses
    chunk *k* while this thread renders chunk *k+1* (on two cores, gzip costs almost no wall time).
    One chunk in flight at a time: the compressor sees the chunks in order."""
    z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    pool = _compress_pool()
    pending: Future[bytes] | None = None
    try:
        for chunk in chunks:
            if pending is not None:
                out = pending.result()
                if out:  # zlib keeps small inputs until it has a block's worth
                    yield out
            pending = pool.submit(z.compress, chunk)
        if pending is not None:
            out = pending.result()
            pending = None
            if out:
                yield out
        yield z.flush()
    finally:
        if pending is not None:  # abandoned mid-way: let the compression in flight finish first
            pending.result()


class _Shared:
    """One rendering, read by one or more scrapes; chunks are produced as the fastest reader asks.

    ``_lock`` guards the chunks and the readers' positions and is never held while rendering;
    ``_producing`` lets one reader at a time take the next chunk from the source (which may first wait
    for the consumer's lock, to capture the state).
    """

    def __init__(self, source: Iterator[bytes], done: Callable[[], None], retain: int) -> None:
        self._source = source
        self._done = done
        self._retain = retain
        self._lock = threading.Lock()
        self._producing = threading.Lock()
        self._chunks: list[bytes] = []
        self._base = 0  # index of _chunks[0] in the whole output
        self._kept = 0  # bytes in _chunks
        self._finished = False
        self._failed: BaseException | None = None
        self._positions: dict[int, int] = {}  # reader -> index of its next chunk
        self._next_reader = 0

    def join(self) -> Reader | None:
        with self._lock:
            if self._base or (self._finished and not self._positions):
                return None  # output was already dropped, or everyone left: too late to share
            rid = self._next_reader
            self._next_reader += 1
            self._positions[rid] = 0
            return Reader(self, rid)

    def chunk(self, rid: int) -> bytes | None:
        """The reader's next chunk (None at the end, or once the reader left)."""
        data = self._take(rid)
        if data is not None:
            return data
        with self._producing:
            data = self._take(rid)  # another reader may have produced it meanwhile
            if data is not None:
                return data
            with self._lock:
                if rid not in self._positions:
                    return None
                if self._failed is not None:
                    raise self._failed
                if self._finished:
                    return None
            try:
                data = next(self._source)
            except StopIteration:
                self._finish()
                return None
            except BaseException as exc:
                with self._lock:
                    self._failed = exc
                self._finish()
                raise
            with self._lock:
                self._chunks.append(data)
                self._kept += len(data)
            return self._take(rid)

    def _take(self, rid: int) -> bytes | None:
        with self._lock:
            pos = self._positions.get(rid)
            if pos is None or pos == self._base + len(self._chunks):  # left, or nothing new yet
                return None
            data = self._chunks[pos - self._base]
            self._positions[rid] = pos + 1
            if self._kept > self._retain:
                self._drop_read()
            return data

    def leave(self, rid: int) -> None:
        with self._lock:
            if self._positions.pop(rid, None) is None:
                return
            last = not self._positions
            if last:  # nobody reads any more: nothing to keep
                self._chunks.clear()
                self._kept = 0
            elif self._kept > self._retain:
                self._drop_read()
        if last:
            with self._producing:
                self._finish()

    def _drop_read(self) -> None:
        low = min(self._positions.values())
        drop = low - self._base
        if drop > 0:
            self._kept -= sum(len(c) for c in self._chunks[:drop])
            del self._chunks[:drop]
            self._base = low

    def _finish(self) -> None:
        """The source is done (or abandoned); called with ``_producing`` held, never ``_lock``."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        self._done()  # the exposer starts a new rendering for the next scrape
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class Reader:
    """One scrape's view of a rendering: iterate for the chunks, then :meth:`close`."""

    def __init__(self, shared: _Shared, rid: int) -> None:
        self._shared = shared
        self._rid = rid
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self._shared.chunk(self._rid)
        if data is None:
            raise StopIteration
        return data

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._shared.leave(self._rid)


__all__ = ["Exposer", "Format", "Reader", "negotiate"]
