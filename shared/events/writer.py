"""Writing encoded batches to a partition stream: the publisher's only contact with Redis.

Each call sends its ``XADD`` s in one pipeline on the connection of the master that serves the stream
(on a cluster: that node's plain client, not ``RedisCluster``'s pipeline machinery, which costs about
twice as much per command). With ``wait_replicas`` the pipeline ends with ``WAIT``: the batches count
as written only once that many replicas have them, so a failover cannot lose them. ``WAIT`` counts the
writes of its own connection, which is why it must share the ``XADD`` s' one (through
``RedisCluster`` it would go to an arbitrary node and mean nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import redis
from redis.exceptions import MovedError

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
        pipe = node_client(client, stream).pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(stream, {ENTRY_FIELD: payload}, maxlen=self.maxlen, approximate=True)
        if self.wait_replicas:
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        replies = pipe.execute()
        if self.wait_replicas and int(replies[-1]) < self.wait_replicas:
            raise NotReplicated(
                f"{replies[-1]} of {self.wait_replicas} replicas acknowledged within {self.wait_timeout_ms} ms"
            )
