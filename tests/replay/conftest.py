"""Fixtures for the replay tests: the known history loaded into the session's real redis-server."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from services.cli import main

from .history import load


@pytest.fixture
def history(redis_client: redis.Redis) -> int:
    """The pool-exhaustion history in partition 0; returns the number of entries."""
    return load(redis_client)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run ``boilerhouse ARGS...`` in-process against the test Redis: (exit status, stdout, stderr)."""
    monkeypatch.setenv("BOILERHOUSE_REDIS_URL", redis_url)

    def run_(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run_
