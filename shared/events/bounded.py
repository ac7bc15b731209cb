"""Stream replies read with bounded memory: values too long to hold are skipped on the wire.

hiredis (like redis-py's own parser) holds a whole reply before it returns, about twice the reply's size
at its peak. Redis accepts entries up to its ``proto-max-bulk-len`` (512 MB unless configured lower), so
one entry can be more than a process may allocate, and then every read that reaches it fails alike:
``XREADGROUP``, ``XRANGE``, and ``XINFO STREAM`` while it is the stream's first or last entry.

:func:`execute` sends the same commands on one of the client's connections (the node serving ``key`` on
a cluster) and parses the replies as they arrive. A bulk string longer than ``limit`` is read off the
socket in fixed-size chunks and thrown away; it stands in the reply as :class:`~.codec.Oversized` (its
length). In an entry's fields only the ``keep`` field's value may be that long; other fields are kept
while short and few. So a reply of ``n`` entries holds about ``n * limit`` bytes at most, whatever the
entries hold, and each entry keeps its id: what cannot be read can still be dead-lettered by id.

Replies have the raw RESP2 shapes of a cluster transaction (:mod:`.replies` reads them). Pure Python and
slower than hiredis: callers use it after a read ran out of memory, while an entry that large is in
reach of their reads (see docs/reliability.md).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis._parsers.base import BaseParser
from redis.connection import Connection
from redis.typing import EncodableT

from .bus import Client, is_cluster, node_client, refresh
from .codec import ENTRY_FIELD, MAX_ENTRY_BYTES, Oversized

#: A stream id; a two-element array whose first element is one is an entry: ``[id, [field, value ...]]``.
_ENTRY_ID = re.compile(rb"\d+-\d+")
#: Fields of an entry besides ``keep`` that are kept, and how long their names and values may be;
#: further ones are left out (hostile entries may hold millions).
OTHER_FIELDS = 16
SHORT_BYTES = 256
#: Bytes asked of the socket at once, and the scratch buffer long values are skipped through.
_CHUNK = 1 << 16
_SKIP_CHUNK = 1 << 20


#: What a read whose reply is too large to hold raises: Python's ``MemoryError``, or, when hiredis' C
#: reader fails to grow its buffer first, redis-py's ``InvalidResponse("Out of memory")`` (hiredis reports
#: it as a protocol error). Catch these, then call :func:`reraise_unless_out_of_memory`.
OUT_OF_MEMORY: tuple[type[Exception], ...] = (MemoryError, redis.InvalidResponse)


def reraise_unless_out_of_memory(exc: Exception) -> None:
    """Re-raise ``exc`` (caught as one of :data:`OUT_OF_MEMORY`) unless it says the reply did not fit."""
    if isinstance(exc, redis.InvalidResponse) and "out of memory" not in str(exc).lower():
        raise exc


@dataclass(frozen=True, slots=True)
class Replies:
    """The replies of :func:`execute`, in order (an error reply as its exception, not raised); how many
    values were left out because they were longer than the limit; and the ids of the entries that held
    such a value (the ``keep`` field's, or other fields' together)."""

    values: list[object]
    oversized: int
    too_large: frozenset[bytes] = frozenset()


class _Error(str):
    """An error reply (``-ERR ...``), until it is turned into redis-py's exception for it."""


@contextmanager
def _socket_errors() -> Iterator[None]:
    """Socket errors as redis-py's own: a timeout, or a lost connection."""
    try:
        yield
    except TimeoutError as exc:
        raise redis.TimeoutError("Timeout reading from socket") from exc
    except OSError as exc:
        raise redis.ConnectionError(f"Error while reading from socket: {exc}") from exc


class _Wire:
    """Parses RESP2 replies off a socket without ever holding a value longer than ``limit``."""

    def __init__(self, sock: socket.socket, limit: int, keep: bytes) -> None:
        self.sock = sock
        self.limit = limit
        self.keep = keep
        self.buf = bytearray()
        self.pos = 0
        self.oversized = 0
        self.too_large: set[bytes] = set()

    # ---- bytes off the socket -------------------------------------------------------------------

    def _recv(self, size: int) -> bytes:
        with _socket_errors():
            data = self.sock.recv(size)
        if not data:
            raise redis.ConnectionError("Connection closed by server.")
        return data

    def _ensure(self, n: int) -> None:
        """At least ``n`` unread bytes in the buffer."""
        if self.pos and self.pos >= len(self.buf) // 2:
            del self.buf[: self.pos]
            self.pos = 0
        while len(self.buf) - self.pos < n:
            self.buf += self._recv(max(_CHUNK, n - (len(self.buf) - self.pos)))

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line
            self._ensure(len(self.buf) - self.pos + 1)

    def _take(self, n: int) -> bytes:
        self._ensure(n + 2)
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n + 2
        return data

    def _skip(self, n: int) -> None:
        """Consume ``n`` bytes without keeping them."""
        buffered = min(n, len(self.buf) - self.pos)
        self.pos += buffered
        n -= buffered
        if not n:
            return
        del self.buf[:]
        self.pos = 0
        scratch = memoryview(bytearray(min(n, _SKIP_CHUNK)))
        while n:
            with _socket_errors():
                got = self.sock.recv_into(scratch, min(n, len(scratch)))
            if not got:
                raise redis.ConnectionError("Connection closed by server.")
            n -= got

    # ---- RESP2 ----------------------------------------------------------------------------------

    def reply(self, limit: int | None = None, fields: bool = False) -> object:
        """The next reply; bulk strings longer than ``limit`` (default: the wire's) become Oversized."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            if n <= (self.limit if limit is None else limit):
                return self._take(n)
            self._skip(n + 2)
            if limit is None:
                self.oversized += 1
            return Oversized(n)
        if kind in b"*%~":  # array (maps and sets of RESP3 read as flat lists: the raw shapes of RESP2)
            n = int(rest) * (2 if kind == b"%" else 1)
            if n < 0:
                return None
            if fields:
                return self._fields(n)
            if n == 2:  # maybe an entry: [id, fields]
                first = self.reply()
                if not (isinstance(first, bytes) and _ENTRY_ID.fullmatch(first) is not None):
                    return [first, self.reply()]
                before = self.oversized
                entry = [first, self.reply(fields=True)]
                if self.oversized > before:
                    self.too_large.add(first)
                return entry
            return [self.reply() for _ in range(n)]
        if kind in (b":", b"("):
            return int(rest)
        if kind == b"_":
            return None
        if kind == b"+":
            return rest
        if kind == b"-":
            return _Error(rest.decode(errors="replace"))
        raise redis.InvalidResponse(f"unexpected reply {line[:40]!r} (the bus speaks RESP2)")

    def _fields(self, n: int) -> list[object]:
        """An entry's ``[field, value, ...]``: ``keep``'s value up to the limit, a few short others."""
        out: list[object] = []
        others = 0
        left_out = 0
        for _ in range(n // 2):
            name = self.reply(SHORT_BYTES)
            if name == self.keep:
                value = self.reply()
            else:
                value = self.reply(SHORT_BYTES)
                others += 1
                if isinstance(value, Oversized):
                    left_out += value.length
                elif isinstance(value, bytes) and others > OTHER_FIELDS:
                    left_out += len(value)
                if others > OTHER_FIELDS:
                    continue
            out += [name, value]
        if n % 2:
            self.reply(SHORT_BYTES)
        if left_out > self.limit:
            self.oversized += 1
        return out


def _exception(error: _Error) -> redis.RedisError:
    """redis-py's exception for an error reply (``NOGROUP`` ..., ``NOPERM`` ..., ``MOVED`` ...)."""
    exc: redis.RedisError = BaseParser.parse_error(str(error))  # type: ignore[no-untyped-call]  # redis' parser module is unannotated
    return exc


def _roundtrip(
    conn: Connection, sent: Sequence[Sequence[EncodableT]], limit: int, keep: bytes
) -> tuple[list[object], int, frozenset[bytes]]:
    """Send the commands at once and read one reply per command."""
    conn.send_packed_command(conn.pack_commands(sent))  # type: ignore[no-untyped-call]  # redis.connection is unannotated
    sock = conn._sock
    if sock is None:
        raise redis.ConnectionError("not connected")
    wire = _Wire(sock, limit, keep)
    return [wire.reply() for _ in sent], wire.oversized, frozenset(wire.too_large)


def execute(
    client: Client,
    key: str,
    commands: Sequence[Sequence[EncodableT]],
    *,
    transaction: bool = True,
    limit: int = MAX_ENTRY_BYTES,
    keep: bytes = ENTRY_FIELD,
) -> Replies:
    """Run ``commands`` (each a command's arguments) on the node serving ``key``, in one ``MULTI``/``EXEC``
    unless ``transaction`` is False, and read their replies with values longer than ``limit`` left out.

    Raises what redis-py would: the error of a refused transaction (its first refused command), a
    ``ConnectionError`` or ``TimeoutError``; a command's own error reply is returned in its place.
    """
    node = node_client(client, key)
    pool = node.connection_pool
    conn = pool.get_connection()
    sent: list[Sequence[EncodableT]] = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
    try:
        raw, oversized, too_large = _roundtrip(conn, sent, limit, keep)
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]  # what is left of the reply is unread: the connection is unusable
        raise
    finally:
        pool.release(conn)
    refused: redis.RedisError | None = None
    if transaction:  # MULTI's +OK, a +QUEUED (or the refusal) per command, EXEC's array (or -EXECABORT)
        queued = next((r for r in raw[:-1] if isinstance(r, _Error)), raw[-1])
        if isinstance(queued, _Error):
            refused = _exception(queued)
        elif not isinstance(queued, list):
            refused = redis.exceptions.WatchError("transaction discarded")
        else:
            raw = queued
    values: list[object] = [_exception(r) if isinstance(r, _Error) else r for r in raw]
    if refused is not None:
        values = [refused]
    if is_cluster(client) and any(
        isinstance(v, redis.exceptions.MovedError | redis.exceptions.AskError) for v in values
    ):
        refresh(client)  # the slot moved: the caller's next try asks the right node
    if refused is not None:
        raise refused
    return Replies(values, oversized, too_large)


def call(client: Client, key: str, *args: EncodableT, limit: int = MAX_ENTRY_BYTES) -> object:
    """One command (not a transaction) on the node serving ``key``; its reply as :func:`execute` reads it.
    An error reply is raised."""
    reply = execute(client, key, [args], transaction=False, limit=limit).values[0]
    if isinstance(reply, Exception):
        raise reply
    return reply


__all__ = ["Replies", "call", "execute"]
