"""uvicorn's HTTP/1.1 protocol with a request read timeout and a cap on open connections.

uvicorn times out only idle keep-alive connections, and only after a first response: a client that
connects and never finishes its request holds a socket (and an open file) forever, and enough of them
exhaust the process's open-files limit - the accept loop then fails, logging a traceback per attempt,
and the server stops answering. This protocol closes a connection that has not delivered a whole
request within ``read_timeout_s`` of connecting (or of its previous response), and keeps the number
of connections below ``max_connections``: a new connection over the cap evicts the oldest one still
sending its request, or is closed at once if every connection is busy with a request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

#: Open files the server keeps for itself (Redis, container and rclone processes, logs) when it derives
#: its connection cap from the open-files limit.
RESERVED_FILES = 32
#: The largest request head (request line and headers) a client may send (h11's default).
MAX_HEAD_BYTES = 16 * 1024
#: The ASGI scope key set on a request whose body the server stopped reading (its client was too slow).
READ_TIMED_OUT_KEY = "boilerhouse.read_timed_out"
#: The client's h11 states once its request is whole (or its side of the connection is over).
_REQUEST_IN = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
SHED_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections a server keeps open, and its listen backlog.

    asyncio accepts up to ``backlog`` connections in one go before any protocol sees them (and on
    EMFILE it logs a traceback per remaining attempt), so both count against the open files.
    """

    max_connections: int
    backlog: int


def connection_limits(max_connections: int, share: int = 1) -> ConnectionLimits:
    """Limits that keep ``share`` servers of this process below its open-files limit together.

    Each server gets ``(soft limit - RESERVED_FILES) / share`` files: its connections, an accept batch
    (``backlog``), and as many again for connections closed but not yet released by the event loop.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return ConnectionLimits(max_connections, 128)
    budget = max(3, (soft - RESERVED_FILES) // share)
    backlog = max(1, min(128, budget // 8))
    return ConnectionLimits(max(1, min(max_connections, budget - 2 * backlog)), backlog)


def guarded_protocol(read_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class to pass as uvicorn's ``http=``: at most ``max_connections`` stay open."""
    cap = max_connections
    shed = [0, 0.0]  # connections closed since the last warning; when the next warning may be logged

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timer: asyncio.TimerHandle | None = None
            self._reading_since = 0.0

        # Reading a request: from the connection (or the previous response) until the request is whole.

        def _start_reading(self) -> None:
            self._stop_reading()
            self._reading_since = time.monotonic()
            self._read_timer = self.loop.call_later(read_timeout_s, self._read_timed_out)

        def _stop_reading(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        @property
        def reading(self) -> bool:
            return self._read_timer is not None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # Headers arrived, the body did not: the app sees a disconnect and records a 408.
                self.scope[READ_TIMED_OUT_KEY] = True  # type: ignore[literal-required]  # our own extension key
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
            super().connection_made(transport)
            self._start_reading()
            if len(self.connections) > cap:
                self._shed()

        def _shed(self) -> None:
            """Over the cap: close the connection that has been sending its request longest, else this one."""
            readers = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c.reading]
            victim = min(readers, key=lambda c: c._reading_since) if readers else self
            shed[0] += 1
            now = time.monotonic()
            if now >= shed[1]:  # at most one line per interval, however hard the server is pushed
                logger.warning(
                    "%d connections open (cap %d): closed %d that had not sent a whole request",
                    len(self.connections),
                    cap,
                    shed[0],
                )
                shed[:] = [0, now + SHED_LOG_INTERVAL_S]
            victim._stop_reading()
            victim.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_reading()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.reading and self.conn.their_state in _REQUEST_IN:
                self._stop_reading()  # the whole request is in (or the connection is ending)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state not in _REQUEST_IN:
                self._start_reading()  # the next request on this keep-alive connection

    return GuardedH11Protocol
