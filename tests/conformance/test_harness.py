"""The conformance harness itself: case validation, exact raw encoding, and that comparisons catch mismatches."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgpack
import pytest

from tests.conformance.cases import CaseError, Expectation, encode_value, entry_fields, load_case
from tests.conformance.harness import compare


def _case(tmp_path: Path, file: str = "c", **doc: object) -> Path:
    base: dict[str, object] = {
        "name": file,
        "description": "d",
        "steps": [{"emit": "source.heartbeat"}],
        "expect": {"samples": []},
    }
    path = tmp_path / f"{file}.json"
    path.write_text(json.dumps({**base, **doc}))
    return path


def test_a_case_gets_default_source_options_and_its_kind(tmp_path: Path) -> None:
    case = load_case(_case(tmp_path, partitions=2, sources={"main": {"batch_size": 7}}))
    assert case.kind == "emit"
    assert case.sources == {
        "main": {
            "batch_size": 7,
            "service": "conformance",
            "version": "1.0.0",
            "heartbeat_interval_s": 3600,
            "partitions": 2,
        }
    }
    raw = load_case(_case(tmp_path, "r", steps=[{"xadd": {"batch": {"v": 1}}}, {"sleep_s": 1}]))
    assert raw.kind == "raw"
    assert raw.sources == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"name": "other"}, "must be the file name"),
        ({"extra": 1}, "unknown keys"),
        ({"steps": [{"emit": "source.heartbeat"}, {"xadd": {"batch": {}}}]}, "either emit"),
        ({"steps": [{"flush": "a", "close": "a"}]}, "unknown step"),
        ({"steps": [{"emit": "x", "repeat": 0}]}, "repeat"),
        ({"steps": [{"xadd": {"batch": {}, "fields": {}}}]}, "exactly one"),
        ({"sources": {"main": {"bufer_size": 1}}}, "unknown keys"),
        ({"expect": {"samples": [["m", {}, "1"]]}}, "must be a number"),
        ({"expect": {"samples": [["m", {}, 1], ["m", {}, 2]]}}, "listed twice"),
        ({"expect": {"absent": [["m", {"a": 1}]]}}, "labels"),
    ],
)
def test_malformed_cases_are_rejected(tmp_path: Path, doc: dict[str, object], message: str) -> None:
    with pytest.raises(CaseError, match=message):
        load_case(_case(tmp_path, **doc))


def test_raw_values_encode_exactly() -> None:
    assert encode_value({"a": 3}) == b"\x81\xa1a\x03"
    assert encode_value({"a": 3.0}) == b"\x81\xa1a\xcb" + struct.pack(">d", 3.0)
    assert encode_value({"$float64": 3}) == b"\xcb" + struct.pack(">d", 3.0)
    assert encode_value([{"$float32": 0.5}, {"$float32": 1.5}]) == (
        b"\x92\xca" + struct.pack(">f", 0.5) + b"\xca" + struct.pack(">f", 1.5)
    )
    assert encode_value({"$bin": "00ff"}) == b"\xc4\x02\x00\xff"
    assert encode_value({"$map": [[1, "x"], ["k", None]]}) == b"\x82\x01\xa1x\xa1k\xc0"
    assert encode_value([{"$repeat": {"item": 1, "count": 3}}, 2]) == b"\x94\x01\x01\x01\x02"
    assert msgpack.unpackb(encode_value({"$now": -10}, now=100.0)) == 90.0
    assert entry_fields({"fields": {"b": {"$raw": "c1"}, "x": {"$zeros": 3}, "y": "1"}}) == {
        b"b": b"\xc1",
        b"x": b"\x00\x00\x00",
        b"y": b"\xa11",
    }


def test_comparison_reports_every_kind_of_mismatch() -> None:
    def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
        return (name, frozenset(labels.items()))

    expectation = Expectation(
        samples={key("a_total", p="x"): 1.0, key("b", p="x"): 2.0, key("c", p="x"): 3.0},
        absent=(("d", None), ("e", frozenset({("p", "y")}))),
    )
    exposed = {
        key("a_total", p="x"): 1.0,  # right
        key("b", p="x"): 2.5,  # wrong value
        # c missing
        key("a_total", p="z"): 1.0,  # unlisted series of a listed name
        key("d", q="1"): 1.0,  # must be absent
        key("e", p="y"): 1.0,  # must be absent
        key("e", p="z"): 1.0,  # fine
        key("boilerhouse_events_lost_total", reason="seq_gap"): 1.0,  # health metric not expected
        key("unrelated"): 5.0,  # fine
    }
    problems = compare(expectation, exposed)
    assert [p.split()[0] for p in problems] == [
        "wrong",
        "missing",
        "unlisted",
        "unexpected",
        "present",
        "present",
    ]
    partial = Expectation(samples={key("a_total", p="x"): 1.0}, partial=frozenset({"a_total"}))
    assert compare(partial, {key("a_total", p="x"): 1.0, key("a_total", p="z"): 1.0}) == []
