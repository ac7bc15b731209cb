"""A consumer that makes no progress while entries wait is reported (issue 11, item 5): /readyz and a gauge.

The stall is real: the aggregator's Redis user loses the right to XREADGROUP while it runs (Redis
answers every read, and refuses it). With nothing waiting that is no stall; with entries waiting it
is, by partition and since when, until the right comes back.
"""

from __future__ import annotations

import time
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from services.aggregator.consumer import STALL_REPORT_S, Consumer
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import stream_key
from tests.aggregator.harness import aggregator, wait_for
from tests.support.expo import value
from tests.support.wait import wait_for as poll
from tests.support.wait import wait_until

P = "boilerhouse_"
USER, PASSWORD = "stall-test", "stall-test-password"
SRC = "api:h:1:5ta11"


def heartbeats(first: int, n: int) -> bytes:
    events = [{"type": "source.heartbeat", "seq": seq, "ts": time.time()} for seq in range(first, first + n)]
    return encode_batch(SRC, events)


def as_user(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{USER}:{PASSWORD}@{parts.hostname}:{parts.port}"))


def test_a_partition_whose_reads_fail_while_entries_wait_is_reported_stalled_until_it_reads_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    try:
        with aggregator(as_user(redis_url)) as agg:
            consumer: Consumer = agg.app.state.consumer
            redis_client.xadd(stream_key(0), {ENTRY_FIELD: heartbeats(1, 2)})
            wait_for(
                agg.url,
                lambda s: value(s, f"{P}aggregator_events_applied_total", type="source.heartbeat") == 2,
            )

            redis_client.acl_setuser(USER, commands=["-xreadgroup"])
            wait_until(
                lambda: (
                    consumer.bus_problem is not None and consumer.bus_problem.reason == "permission_denied"
                ),
                "the consumer refused XREADGROUP",
            )
            # Refused, but nothing waits: caught up, not stalled.
            assert value(agg.samples(), f"{P}aggregator_stalled_seconds", partition="0") == 0.0
            assert httpx.get(agg.url + "/readyz", timeout=5).status_code == 200

            written = time.time()
            redis_client.xadd(stream_key(0), {ENTRY_FIELD: heartbeats(3, 2)})
            wait_for(
                agg.url,
                lambda s: (value(s, f"{P}aggregator_stalled_seconds", partition="0") or 0) > 1,
                what="the partition reported stalled",
            )
            body = poll(
                lambda: httpx.get(agg.url + "/readyz", timeout=5),
                "/readyz reports the stall",
                within_s=STALL_REPORT_S + 20,
                accept=lambda r: r.status_code == 503,
                show=lambda r: f"{r.status_code} {r.text}",
            ).json()
            assert body["status"] == "stalled" and body["reason"] == "no_progress"
            (stall,) = body["partitions"]
            assert stall["partition"] == 0 and "NoPermissionError" in stall["error"]
            since = datetime.fromisoformat(stall["since"]).timestamp()
            assert written - 5 <= since <= time.time() - STALL_REPORT_S + 1, (written, since)
            assert "partition 0" in body["detail"]
            assert value(agg.samples(), f"{P}aggregator_events_applied_total", type="source.heartbeat") == 2

            redis_client.acl_setuser(USER, commands=["+xreadgroup"])
            wait_for(
                agg.url,
                lambda s: (
                    value(s, f"{P}aggregator_events_applied_total", type="source.heartbeat") == 4
                    and value(s, f"{P}aggregator_stalled_seconds", partition="0") == 0.0
                ),
                what="progress again",
            )
            ready = httpx.get(agg.url + "/readyz", timeout=5)
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
    finally:
        redis_client.acl_deluser(USER)
