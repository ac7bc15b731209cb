"""A checkpoint transaction whose reply is lost: Redis executed it, the aggregator saw a connection error.

The retry must not write the transaction's dead letters a second time (before this was handled, the
dead-letter stream got a duplicate of each), while a transaction that really failed must still write
them once. Real redis-server; the lost reply is produced by running the transaction, then raising.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from services.aggregator.consumer import Consumer
from services.aggregator.settings import AggregatorSettings
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import dead_letter_key, stream_key

STREAM = stream_key(0)
DEAD = dead_letter_key(0)


class Flaky:
    """A redis client whose next transactions fail: ``"lost"`` ones execute and then raise (the reply
    never arrived), ``"failed"`` ones raise without executing."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self.failures: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self._client.pipeline(transaction=transaction)
        if transaction and self.failures:
            how, execute = self.failures.pop(0), pipe.execute

            def failing(*args: Any, **kwargs: Any) -> Any:
                if how == "lost":
                    execute(*args, **kwargs)
                raise redis.ConnectionError(f"connection reset (test: reply {how})")

            pipe.execute = failing
        return pipe


def _add(client: redis.Redis, n: int, first_seq: int) -> list[bytes]:
    """``n`` undecodable entries and one valid event each; the entry ids of the undecodable ones."""
    ids = []
    for i in range(n):
        ids.append(client.xadd(STREAM, {ENTRY_FIELD: b"\xc1 garbage %d" % i}))
        ev = {"type": "container.health_check_failed", "seq": first_seq + i, "ts": 1.0, "pool_id": "p"}
        client.xadd(STREAM, {ENTRY_FIELD: encode_batch("lost-reply:h:1:ab", [ev])})
    return ids


def _dead_letter_ids(client: redis.Redis) -> list[bytes]:
    return [fields[b"entry_id"] for _, fields in client.xrange(DEAD)]


@pytest.mark.parametrize(
    "failures", [["lost"], ["failed"], ["lost", "lost"], ["lost", "failed"], ["failed", "lost"]]
)
def test_dead_letters_are_written_once_whatever_happened_to_the_reply(
    failures: list[str], redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.flushall()
    flaky = Flaky(redis_client)
    consumer = Consumer(flaky, AggregatorSettings(redis_url=redis_url, block_ms=10))  # type: ignore[arg-type]
    consumer.setup()
    bad = _add(redis_client, 3, 1)
    while consumer.poll_once():
        pass
    for i, how in enumerate(failures):
        if i:
            bad += _add(redis_client, 2, 2 + 2 * i)  # read between failed attempts: part of the retry
            while consumer.poll_once():
                pass
        flaky.failures = [how]
        with pytest.raises(redis.ConnectionError, match=how):
            consumer.checkpoint_all(force=True)
    consumer.checkpoint_all(force=True)

    assert _dead_letter_ids(redis_client) == bad
    assert redis_client.xpending(STREAM, "aggregator")["pending"] == 0
    state = consumer.snapshot()
    assert sum(state.counters["aggregator_dead_letters_total"].values()) == len(bad)
    assert sum(state.counters["container_health_check_failures_total"].values()) == len(bad)
    assert sum(state.counters["events_lost_total"].values()) == 0

    # A restart restores that checkpoint: nothing is dead-lettered or counted again.
    again = Consumer(redis_client, AggregatorSettings(redis_url=redis_url, block_ms=10))
    again.setup()
    while again.poll_once():
        pass
    again.checkpoint_all(force=True)
    assert _dead_letter_ids(redis_client) == bad
    assert sum(again.snapshot().counters["aggregator_dead_letters_total"].values()) == len(bad)
