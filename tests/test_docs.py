"""docs/events.md and docs/metrics.md against the code, and the wire contract followed literally."""

from __future__ import annotations

import json
import re
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from services.aggregator.docs import EVENTS_BEGIN, EVENTS_END, events_markdown, metrics_markdown
from services.aggregator.metrics import METRICS
from shared.events.codec import ENTRY_FIELD, MAX_ENTRY_BYTES, MAX_EVENTS_PER_BATCH, MAX_SRC_LEN
from shared.events.schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, SCHEMA_VERSION
from shared.events.streams import dead_letter_key, partition_of, stream_key
from tests.aggregator.harness import aggregator, wait_applied, wait_for
from tests.support.expo import parse, value

DOCS = Path(__file__).resolve().parent.parent / "docs"
EVENTS_MD = DOCS / "events.md"
METRICS_MD = DOCS / "metrics.md"
P = "boilerhouse_"


def code_block(text: str, lang: str, after: str = "") -> str:
    """The first fenced block of ``lang`` after the heading/text ``after``."""
    start = text.index(after) if after else 0
    m = re.compile(rf"^```{lang}\n(.*?)^```", re.DOTALL | re.MULTILINE).search(text, start)
    assert m, f"no ```{lang} block after {after!r}"
    return m.group(1)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n#### ", start + len(heading))
    end = text.index(EVENTS_END) if nxt == -1 else nxt
    return text[start : min(end, text.index(EVENTS_END))]


# ---- generated documents do not drift -------------------------------------------------------------


def test_metrics_md_is_generated_from_the_mapping() -> None:
    assert METRICS_MD.read_text() == metrics_markdown() + "\n", (
        "docs/metrics.md is stale: run `make docs` (python -m services.aggregator.docs > docs/metrics.md)"
    )


def test_metrics_md_lists_every_metric_with_its_labels_buckets_and_events() -> None:
    text = METRICS_MD.read_text()
    for m in METRICS:
        part = text[text.index(f"### `{P}{m.name}`") :]
        part = part[: part.find("\n### ", 1) if "\n### " in part[1:] else len(part)]
        assert f"- type: {m.kind}" in part
        for label in m.labels:
            assert f"`{label}`" in part, (m.name, label)
        if m.buckets:
            assert ", ".join(f"{b:g}" for b in m.buckets) + ", +Inf" in part
        for ev in m.events:
            assert ev in EVENT_TYPES_BY_NAME, f"{m.name} names unknown event {ev}"
            assert f"`{ev}`" in part


def test_events_md_generated_block_is_current() -> None:
    text = EVENTS_MD.read_text()
    block = text[text.index(EVENTS_BEGIN) : text.index(EVENTS_END) + len(EVENTS_END)]
    assert block == events_markdown(), (
        "docs/events.md is stale: run python -m services.aggregator.docs --update-events docs/events.md"
    )


def test_events_md_lists_every_type_and_field() -> None:
    text = EVENTS_MD.read_text()
    for et in EVENT_TYPES:
        part = section(text, f"#### `{et.name}`")
        for f in et.fields:
            row = next((line for line in part.splitlines() if line.startswith(f"| `{f.name}` |")), None)
            assert row is not None, f"{et.name}.{f.name} missing from docs/events.md"
            if f.unit:
                assert f"| {f.unit} |" in row
            for choice in f.choices or ():
                assert f"`{choice}`" in row


def test_events_md_states_the_constants_the_code_uses() -> None:
    text = EVENTS_MD.read_text()
    assert stream_key(0) == "boilerhouse:events:{0}" and "`boilerhouse:events:{0}`" in text
    assert dead_letter_key(0) == "boilerhouse:deadletter:{0}" and "{prefix}:deadletter:{p}" in text
    assert ENTRY_FIELD == b"b" and "one field, `b`" in text
    assert f"currently **{SCHEMA_VERSION}**" in text
    assert MAX_ENTRY_BYTES == 1 << 20 and "1 MiB" in text
    assert f"1–{MAX_EVENTS_PER_BATCH}" in text and f"1–{MAX_SRC_LEN} characters" in text


# ---- the contract, followed literally: plain msgpack + XADD, no Publisher --------------------------


def crc32_ieee(data: bytes) -> int:
    """CRC-32 exactly as docs/events.md describes it (bitwise, independent of zlib)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_partition_rule_as_documented() -> None:
    for src in ("api:host1:4242:9f2c1a7b", "sync-worker:h:1:00", "ü:ñ:1:x"):
        assert crc32_ieee(src.encode()) == zlib.crc32(src.encode())
        for parts in (1, 2, 4, 7):
            assert partition_of(src, parts) == crc32_ieee(src.encode()) % parts


@pytest.mark.parametrize(("version", "after"), [(1, "## Worked example"), (2, "In version 2 the same entry")])
def test_worked_example_bytes_match_the_json_and_are_counted(
    redis_url: str, redis_client: redis.Redis, version: int, after: str
) -> None:
    text = EVENTS_MD.read_text()
    doc = json.loads(code_block(text, "json", after))
    payload = bytes.fromhex(code_block(text, "hex", after).replace("\n", " "))
    assert doc["v"] == version
    assert msgpack.unpackb(payload) == doc
    assert msgpack.packb(doc, use_bin_type=True) == payload, (
        "the hex in docs/events.md is not the JSON's msgpack"
    )
    assert re.search(rf"these\s+{len(payload)}\s+bytes", text[text.index(after) :]), (
        "the byte count in docs/events.md is wrong"
    )

    redis_client.execute_command(
        "XADD", "boilerhouse:events:{0}", "MAXLEN", "~", "1000000", "*", "b", payload
    )
    with aggregator(redis_url) as agg:
        s = wait_applied(agg.url, 2)
    expected = parse(code_block(text, "", "After the\naggregator has read it") + "\n")
    assert expected
    for (name, labels), v in expected.items():
        assert s[(name, labels)] == v, name


def test_python_producer_snippet_runs_as_documented(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = code_block(EVENTS_MD.read_text(), "python", "The same with nothing but")
    assert "Publisher" not in snippet and "shared.events" not in snippet
    monkeypatch.setenv("REDIS_URL", redis_url)
    exec(compile(snippet, "docs/events.md", "exec"), {"__name__": "docs_snippet"})
    with aggregator(redis_url) as agg:
        s = wait_applied(agg.url, 6)
    req = f"{P}http_requests_total"
    assert value(s, req, method="GET", path="/api/v1/pools/{pool_id}", status="200") == 2
    assert value(s, req, method="GET", path="<unmatched>", status="404") == 1
    assert (
        value(
            s,
            f"{P}http_request_duration_seconds_bucket",
            method="GET",
            path="/api/v1/pools/{pool_id}",
            status="200",
            le="0.01",
        )
        == 1
    )
    assert value(s, f"{P}info", version="1.0.0") is None, "stopped source"
    assert value(s, f"{P}pool_size", pool_id="pool-a", workload_id="echo") is None, "stopped source"
    assert value(s, f"{P}aggregator_events_applied_total", type="pool.state") == 1
    assert value(s, f"{P}aggregator_dead_letters_total", reason="invalid_field") is None


def _entry(src: str, events: list[dict[str, Any]], v: int = 1) -> bytes:
    return msgpack.packb({"v": v, "src": src, "events": events}, use_bin_type=True)


def _ev(type_: str, seq: int, **fields: Any) -> dict[str, Any]:
    return {"type": type_, "seq": seq, "ts": time.time(), **fields}


def test_partitions_seq_retries_and_gaps_as_documented(redis_url: str, redis_client: redis.Redis) -> None:
    """Four partitions, sources placed by the documented CRC rule; a retried entry counts once; gaps lost."""
    partitions = 4
    sources = [f"svc{i}:host:{100 + i}:abcd" for i in range(8)]
    assert len({crc32_ieee(s.encode()) % partitions for s in sources}) > 1, "spread over several partitions"
    for src in sources:
        key = f"boilerhouse:events:{{{crc32_ieee(src.encode()) % partitions}}}"
        first = _entry(
            src,
            [
                _ev("container.health_check_failed", 1, pool_id="p"),
                _ev("container.health_check_failed", 2, pool_id="p"),
            ],
        )
        redis_client.xadd(key, {"b": first})
        redis_client.xadd(key, {"b": first})  # a retried XADD: same events, same seq
        redis_client.xadd(key, {"b": _entry(src, [_ev("container.health_check_failed", 5, pool_id="p")])})
    with aggregator(redis_url, partitions=partitions) as agg:
        s = wait_for(
            agg.url,
            lambda x: value(x, f"{P}aggregator_duplicates_total") == 2 * len(sources),
            what="duplicates counted",
        )
    assert value(s, f"{P}container_health_check_failures_total", pool_id="p") == 3 * len(sources)
    assert value(s, f"{P}events_lost_total", reason="seq_gap") == 2 * len(sources)  # seq 3 and 4
    assert {lab for (n, lab) in s if n == f"{P}aggregator_consumer_lag_entries"} == {
        frozenset({("partition", str(p))}) for p in range(partitions)
    }


def test_every_documented_dead_letter_reason(redis_url: str, redis_client: redis.Redis) -> None:
    text = EVENTS_MD.read_text()
    table = text[text.index("## What the aggregator rejects") : text.index("## Versioning")]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| (?:entry|event) \|", table, re.MULTILINE))
    stream = "boilerhouse:events:{0}"
    src = "bad:host:1:00"
    good = _ev("affinity.evicted", 1, pool_id="p")
    entries: dict[str, dict[str, bytes]] = {
        "missing_field": {"x": b"1"},
        "too_large": {"b": b"\x00" * (MAX_ENTRY_BYTES + 1)},
        "undecodable": {"b": b"\xc1 not msgpack"},
        "bad_envelope": {"b": msgpack.packb([1, 2, 3])},
        "future_version": {"b": _entry(src, [good], v=SCHEMA_VERSION + 1)},
        "bad_event": {"b": _entry(src, [{"type": "affinity.evicted", "seq": 0, "ts": 1.0, "pool_id": "p"}])},
        "unknown_type": {"b": _entry(src, [_ev("pool.exploded", 1)])},
        "invalid_field": {"b": _entry(src, [_ev("affinity.evicted", 2, pool_id="not a valid id!")])},
        # A live source's seq under someone else's pen: 2**62 right after 1.
        "seq_jump": {"b": _entry("jump:host:1:00", [_ev("affinity.evicted", 2**62, pool_id="q")])},
    }
    assert set(entries) == documented, "docs/events.md and this test disagree about the reasons"
    redis_client.xadd(stream, {"b": _entry("jump:host:1:00", [_ev("affinity.evicted", 1, pool_id="q")])})
    for fields in entries.values():
        redis_client.xadd(stream, fields)
    # The valid event of an entry is applied even when another event in it is rejected.
    redis_client.xadd(
        stream,
        {"b": _entry(src, [_ev("sync.state", 3, workload_id="w"), _ev("affinity.evicted", 4, pool_id="p")])},
    )
    with aggregator(redis_url) as agg:
        s = wait_for(
            agg.url,
            lambda x: (
                sum(v for (n, _), v in x.items() if n == f"{P}aggregator_dead_letters_total")
                == len(entries) + 1
            ),
            what="all dead letters",
        )
        s = wait_applied(agg.url, 1)
    for reason in entries:
        want = 2 if reason == "invalid_field" else 1
        assert value(s, f"{P}aggregator_dead_letters_total", reason=reason) == want, reason
    assert value(s, f"{P}affinity_evictions_total", pool_id="p") == 1
    assert value(s, f"{P}affinity_evictions_total", pool_id="q") == 1  # the jump counted nothing
    dead = redis_client.xrange("boilerhouse:deadletter:{0}")
    assert sorted(f[b"reason"].decode() for _, f in dead) == sorted([*entries, "invalid_field"])
    assert all(f[b"entry_id"] and b"detail" in f for _, f in dead)
    by_reason = {f[b"reason"].decode(): f for _, f in dead}
    assert by_reason["undecodable"][b"payload"] == entries["undecodable"]["b"]
    assert msgpack.unpackb(by_reason["missing_field"][b"payload"]) == {"x": b"1"}
    unknown = msgpack.unpackb(by_reason["unknown_type"][b"payload"])
    assert unknown["src"] == src and unknown["event"]["type"] == "pool.exploded"
