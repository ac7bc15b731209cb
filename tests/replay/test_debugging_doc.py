"""docs/debugging.md stays true: its `boilerhouse events|replay` examples, the OpenMetrics file and the
promtool run are done again on the incident's history and must print what the document shows."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from services.aggregator.consumer import Consumer
from services.aggregator.settings import AggregatorSettings
from shared.events.streams import stream_key

from .conftest import Run
from .history import load

DOC = Path(__file__).resolve().parents[2] / "docs" / "debugging.md"
#: The document's history starts at 2026-11-27T00:00:00Z.
DOC_BASE_S = 1795737600


def examples() -> list[tuple[str, list[str], int | None]]:
    """(command, expected output lines, expected exit status if shown) from the document's code blocks."""
    out: list[tuple[str, list[str], int | None]] = []
    for block in re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.DOTALL):
        current: tuple[str, list[str]] | None = None
        for line in [*block.splitlines(), "$ "]:
            if line.startswith("$ "):
                if current is not None:
                    lines, code = current[1], None
                    while lines and not lines[-1]:
                        lines.pop()
                    if lines and re.fullmatch(r"\[exit \d+\]", lines[-1]):
                        code = int(lines.pop()[6:-1])
                    out.append((current[0], lines, code))
                current = (line[2:], [])
            elif current is not None:
                current[1].append(line)
    return out


def _shown_om_lines(om: Path) -> list[str]:
    """What ``grep -A4 'TYPE boilerhouse_pool_available' incident.om; tail -n 2 incident.om`` prints."""
    lines = om.read_text().splitlines()
    i = lines.index("# TYPE boilerhouse_pool_available gauge")
    return lines[i : i + 5] + lines[-2:]


def _promtool(om: Path, out_dir: str) -> list[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run ./scripts/install-system-deps.sh (make test does)")
    done = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), out_dir],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=om.parent,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _without_ulid(lines: list[str]) -> list[str]:
    return [re.sub(r"^[0-9A-HJKMNP-TV-Z]{26} ", "ULID ", line) for line in lines]


def test_the_worked_incident_prints_what_the_document_shows(
    run: Run, redis_url: str, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the document writes incident.om and ./backfill in the current directory
    load(redis_client, base_s=DOC_BASE_S)
    consumer = Consumer(redis_client, AggregatorSettings(redis_url=redis_url, block_ms=10))
    consumer.setup()
    while consumer.poll_once():
        pass
    consumer.checkpoint_all(force=True)  # writes the dead letters, as the running aggregator did
    checked = 0
    for command, expected, code in examples():
        if command.startswith("redis-cli") and "XTRIM" in command:
            minid = shlex.split(command)[-1]
            redis_client.xtrim(stream_key(0), minid=minid, approximate=False)
            continue
        if command.startswith("grep -A4 'TYPE boilerhouse_pool_available' incident.om"):
            assert _shown_om_lines(tmp_path / "incident.om") == expected
            checked += 1
            continue
        if command.startswith("promtool tsdb create-blocks-from openmetrics"):
            argv = shlex.split(command)
            assert _without_ulid(_promtool(tmp_path / argv[-2], argv[-1])) == _without_ulid(expected)
            checked += 1
            continue
        pipeline = command.split(" | grep -E ")
        argv = shlex.split(pipeline[0])
        if argv[:2] not in (["boilerhouse", "events"], ["boilerhouse", "replay"]):
            continue
        status, out, err = run(*argv[1:])
        lines = (out + err).splitlines()
        if len(pipeline) == 2:
            pattern = re.compile(shlex.split(pipeline[1])[0])
            lines = [line for line in lines if pattern.search(line)]
        assert lines == expected, command
        assert status == (0 if code is None else code), command
        checked += 1
    assert checked >= 15
