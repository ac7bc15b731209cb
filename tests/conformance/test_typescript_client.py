"""clients/typescript: its own test suite (node --test, real redis-server) and its generated event types."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from tests.conformance.drivers import TS_DIR, build_typescript

GENERATOR = TS_DIR / "scripts" / "generate_events.py"


def test_generated_event_types_match_the_python_catalogue() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_node_test_suite_passes() -> None:
    """``npm test``'s runner on the built package; the conformance cases it would run are test_conformance's."""
    build_typescript()
    node = shutil.which("node")
    assert node, "node is not installed (scripts/install-system-deps.sh installs it)"
    tests = sorted(str(p) for p in (TS_DIR / "dist" / "test").glob("*.test.js"))
    assert tests, "no compiled tests in clients/typescript/dist/test"
    env = {**os.environ, "BOILERHOUSE_PYTHON": sys.executable, "BOILERHOUSE_CONFORMANCE_IN_PYTEST": "1"}
    # Its own session, so that a hung run is stopped whole (the runner and its per-file processes).
    proc = subprocess.Popen(
        [node, "--test", "--test-timeout=120000", *tests],
        cwd=TS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AssertionError(f"node --test still running after 240 s:\n{output[-20000:]}") from None
    assert proc.returncode == 0, output[-20000:]
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 10, output[-5000:]
    assert re.search(r"^# fail 0$", output, re.MULTILINE), output[-5000:]
