"""A Compose file as ``docker compose config`` resolves it (the Compose v2 binary, no engine needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import REPO, tool

COMPOSE_YML = REPO / "compose.yaml"


def compose_config(path: Path = COMPOSE_YML) -> dict[str, Any]:
    result = subprocess.run(
        [tool("docker"), "compose", "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    if "is not a docker command" in result.stderr or "unknown command" in result.stderr:
        pytest.fail("docker compose plugin missing: run ./scripts/install-system-deps.sh (make test does)")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]
