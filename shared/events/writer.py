"""Writing encoded batches to a partition stream: the publisher's only contact with Redis.

Each call sends its ``XADD`` s in one ``MULTI``/``EXEC`` (one round trip) on the connection of the master that serves the stream
(on a cluster: that node's plain client, not ``RedisCluster``'s pipeline machinery, which costs about
twice as much per command). With ``wait_replicas`` the round trip ends with ``WAIT``: the batches count
as written only once that many replicas have them, so a failover cannot lose them. ``WAIT`` counts the
writes of its own connection, which is why it must share the ``XADD`` s' one (through
``RedisCluster`` it would go to an arbitrary node and mean nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.exceptions import ExecAbortError, MovedError

from .bus import ERRORS, Client, NotReplicated, is_cluster, node_client, refresh
from .codec import ENTRY_FIELD


class StreamWriter:
    """Sends batches to streams for one publisher.

    Parameters:
        connect: builds the client on first use (the bus may be down when the publisher starts).
        maxlen: approximate cap of the stream length (``MAXLEN ~``).
        wait_replicas: replicas that must acknowledge each pipeline (``WAIT``); 0 does not wait.
        wait_timeout_ms: how long ``WAIT`` may block; fewer replicas by then raises :class:`NotReplicated`
            and the batches are sent again later (the aggregator skips the repeated sequence numbers).
        client: an already-built client (tests, shared pools); ``connect`` is then not called.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        maxlen: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        client: Client | None = None,
    ) -> None:
        self._connect = connect
        self._client = client
        self.maxlen = maxlen
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def add(self, stream: str, payloads: Sequence[bytes]) -> None:
        """``XADD`` every payload to ``stream`` in order, in one round trip; raises one of
        :data:`shared.events.bus.ERRORS` if it is not known that all were written (and replicated)."""
        client = self.client
        try:
            self._add(client, stream, payloads)
        except MovedError:
            if not is_cluster(client):
                raise
            # The slot moved (a reshard, or a failover we had not heard of): learn where, send once more.
            refresh(client)
            self._add(client, stream, payloads)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            if is_cluster(client):  # the next attempt goes to whichever node serves the slot by then
                with contextlib.suppress(*ERRORS):  # the error to report is the one above
                    refresh(client)
            raise

    def _add(self, client: Client, stream: str, payloads: Sequence[bytes]) -> None:
        """``MULTI``, the ``XADD`` s, ``EXEC`` (and ``WAIT``) on one connection, in one round trip.

        The transaction makes the entries all-or-nothing: an error reply to one ``XADD`` of a plain
        pipeline (``OOM``, ``READONLY``, ``MISCONF``) while a later one is written would send the retried
        entry after its successor, where the aggregator skips it as duplicates; inside ``MULTI`` those
        errors abort every entry. ``WAIT`` follows ``EXEC`` on the same connection (it counts that
        connection's writes; inside the transaction it would not block). redis-py's transaction pipeline
        cannot add a command after ``EXEC``, hence the commands are written here.
        """
        pool = node_client(client, stream).connection_pool
        conn: Any = pool.get_connection()  # redis-py's Connection methods are unannotated
        commands: list[tuple[str | int | bytes, ...]] = [("MULTI",)]
        commands += [
            ("XADD", stream, "MAXLEN", "~", self.maxlen, "*", ENTRY_FIELD, payload) for payload in payloads
        ]
        commands.append(("EXEC",))
        if self.wait_replicas:
            commands.append(("WAIT", self.wait_replicas, self.wait_timeout_ms))
        replies: list[object] = []
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:  # an error reply: the others are still to be read
                    replies.append(exc)
        except BaseException:
            conn.disconnect()  # replies may still be in flight: never reuse this connection
            raise
        finally:
            pool.release(conn)
        errors = [r for r in replies if isinstance(r, redis.ResponseError)]
        if errors:
            # A redirect says where the stream is now (MovedError is handled by the caller); otherwise
            # the first error says why (EXECABORT only says that an earlier one aborted the transaction).
            moved = next((e for e in errors if isinstance(e, MovedError)), None)
            raise moved or next((e for e in errors if not isinstance(e, ExecAbortError)), errors[0])
        if self.wait_replicas and int(cast("int", replies[-1])) < self.wait_replicas:
            raise NotReplicated(
                f"{replies[-1]} of {self.wait_replicas} replicas acknowledged within {self.wait_timeout_ms} ms"
            )
