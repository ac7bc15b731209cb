"""shared/events/bounded.py against a real redis-server: replies read with values over a limit left out.

The limit is lowered to a few KB here, so entries "too large to hold" stay small; the huge case (300 MB
under a real memory limit) is tests/reliability/test_huge_entry.py.
"""

from __future__ import annotations

import pytest
import redis

from shared.events import bounded
from shared.events.codec import Oversized
from shared.events.replies import PendingSummary, StreamInfo, entries, find_group, read_reply

LIMIT = 4096
KEY = "boilerhouse:events:{0}"


def test_values_over_the_limit_are_left_out_with_their_length_and_the_entry_keeps_its_id(
    redis_client: redis.Redis,
) -> None:
    small = redis_client.xadd(KEY, {"b": b"s" * 10})
    big = redis_client.xadd(KEY, {"b": b"B" * (LIMIT + 1), "x": b"y"})
    rows = entries(bounded.call(redis_client, KEY, "XRANGE", KEY, "-", "+", limit=LIMIT))
    assert rows == [(small, {b"b": b"s" * 10}), (big, {b"b": Oversized(LIMIT + 1), b"x": b"y"})]
    got = bounded.execute(redis_client, KEY, [("XRANGE", KEY, "-", "+")], transaction=False, limit=LIMIT)
    assert got.oversized == 1 and got.too_large == {big}
    # The connection is usable afterwards: the skipped bytes were consumed exactly.
    assert redis_client.ping() and redis_client.xlen(KEY) == 2


def test_an_entry_with_many_other_fields_keeps_a_few_short_ones_and_counts_as_too_large(
    redis_client: redis.Redis,
) -> None:
    fields = {f"f{i:04d}".encode(): b"v" * 200 for i in range(2000)}  # 400 KB in short fields
    fields[b"b"] = b"payload"
    entry_id = redis_client.xadd(KEY, fields)
    got = bounded.execute(redis_client, KEY, [("XRANGE", KEY, "-", "+")], transaction=False, limit=LIMIT)
    ((got_id, kept),) = entries(got.values[0])
    assert got_id == entry_id and kept[b"b"] == b"payload"
    assert len(kept) == bounded.OTHER_FIELDS + 1, "a few other fields, not thousands"
    assert got.too_large == {entry_id}


def test_a_transaction_reads_like_a_cluster_transactions_raw_replies(redis_client: redis.Redis) -> None:
    first = redis_client.xadd(KEY, {"b": b"F" * (LIMIT * 10)})
    redis_client.xgroup_create(KEY, "g", id="0")
    last = redis_client.xadd(KEY, {"b": b"last"})
    got = bounded.execute(
        redis_client,
        KEY,
        [
            ("XINFO", "STREAM", KEY),
            ("XINFO", "GROUPS", KEY),
            ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10, "STREAMS", KEY, ">"),
            ("XPENDING", KEY, "g"),
            ("XREADGROUP", "GROUP", "nogroup", "c", "STREAMS", KEY, ">"),
        ],
        limit=LIMIT,
    )
    info, groups, read, pending, refused = got.values
    parsed = StreamInfo.parse(info)
    assert parsed.first_id is not None and parsed.length == 2
    assert find_group(groups, "g") is not None
    assert read_reply(read) == [(KEY, [(first, {b"b": Oversized(LIMIT * 10)}), (last, {b"b": b"last"})])]
    assert PendingSummary.parse(pending).count == 2
    assert isinstance(refused, redis.ResponseError) and "NOGROUP" in str(refused)
    assert got.too_large == {first}  # in XINFO's first-entry and in the read


def test_a_refused_transaction_raises_what_redis_py_would(redis_client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        bounded.execute(redis_client, KEY, [("XLEN", KEY), ("XRANGE", KEY)], limit=LIMIT)
    assert redis_client.ping()


def test_only_a_reply_that_did_not_fit_counts_as_out_of_memory() -> None:
    # hiredis reports its C reader failing to grow the buffer as a protocol error: redis-py's
    # InvalidResponse("Out of memory"), where Python's parser raises MemoryError.
    for oom in (MemoryError(), redis.InvalidResponse("Out of memory")):
        assert isinstance(oom, bounded.OUT_OF_MEMORY)
        bounded.reraise_unless_out_of_memory(oom)  # returns: the caller reads bounded instead
    other = redis.InvalidResponse("Protocol error: invalid bulk length")
    with pytest.raises(redis.InvalidResponse, match="invalid bulk length"):
        bounded.reraise_unless_out_of_memory(other)
