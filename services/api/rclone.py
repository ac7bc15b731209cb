"""Running the real ``rclone`` binary: argv, JSON log parsing, deadline kill by pid, failure classes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Flags on every run: JSON log lines on stderr, INFO level so the final stats object is printed.
LOG_FLAGS = ("--use-json-log", "-v", "--stats-one-line")

#: rclone's exit code for "directory not found" (docs: "Exit Code" section of rclone's manual).
EXIT_DIR_NOT_FOUND = 3

RCLONE_ERROR, TIMEOUT, PERMISSION_DENIED, NETWORK_ERROR = (
    "rclone_error",
    "timeout",
    "permission_denied",
    "network_error",
)

# Order matters: the first class whose pattern appears in any error message wins.
_PERMISSION = re.compile(
    r"permission denied|operation not permitted|\beacces\b|\beperm\b|\b401 unauthorized"
    r"|\b403 forbidden|access denied",
    re.IGNORECASE,
)
_TIMEOUT = re.compile(
    r"i/o timeout|context deadline exceeded|timeout awaiting|tls handshake timeout|client\.timeout exceeded"
    r"|connection timed out|\btimed out\b|max transfer duration reached",
    re.IGNORECASE,
)
_NETWORK = re.compile(
    r"connection refused|connection reset|no route to host|network is unreachable|\bdial tcp\b|\bdial udp\b"
    r"|no such host|broken pipe|server misbehaving",
    re.IGNORECASE,
)
#: rclone's plain (non-JSON) log format, used for its final "Failed to ..." / "Fatal error" line.
_PLAIN_LOG = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ")
_QUEUED_TO_PATH1 = re.compile(r"Queue copy to Path1\s+- (.+)$")
_LOCK = re.compile(r"prior lock file found: (\S+\.lck)")
_RESYNC = re.compile(r"must run --resync", re.IGNORECASE)
_SOURCE_MISSING = re.compile(r"error reading source root directory: directory not found", re.IGNORECASE)


def classify_error(exit_code: int | None, messages: Iterable[str], deadline_exceeded: bool = False) -> str:
    """Failure class of one failed rclone run (pure).

    ``messages`` are the run's error-level log messages plus any non-JSON lines (rclone prints its
    final fatal error as plain text). ``deadline_exceeded`` means our own deadline killed rclone.
    """
    if deadline_exceeded:
        return TIMEOUT
    text = "\n".join(messages)
    if _PERMISSION.search(text):
        return PERMISSION_DENIED
    if _TIMEOUT.search(text):
        return TIMEOUT
    if _NETWORK.search(text):
        return NETWORK_ERROR
    return RCLONE_ERROR


def needs_resync(messages: Iterable[str]) -> bool:
    """True when bisync refused to run without ``--resync`` (first run, lost or empty listings)."""
    return any(_RESYNC.search(m) for m in messages)


def stale_lock(messages: Iterable[str]) -> Path | None:
    """bisync's lock file named in a "prior lock file found" error, if its owner (pid inside) is gone."""
    for m in messages:
        found = _LOCK.search(m)
        if found is None:
            continue
        lock = Path(found.group(1))
        try:
            pid = int(lock.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return lock
        except PermissionError:  # alive, someone else's
            return None
        return None
    return None


def source_missing(exit_code: int | None, messages: Iterable[str]) -> bool:
    """True when rclone failed only because the source directory does not exist (yet)."""
    return exit_code == EXIT_DIR_NOT_FOUND and any(_SOURCE_MISSING.search(m) for m in messages)


@dataclass(slots=True)
class RcloneOutput:
    """What we keep of one run's log: the last stats object, error messages and a short tail.

    Feed it lines with :meth:`feed`; memory stays bounded however many files rclone logs.
    """

    max_errors: int = 50
    #: bisync only: remember copies queued to Path1 (the local side) and every completed copy
    track_transfers: bool = False
    stats: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    queued_to_path1: list[str] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)

    def feed(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        self.tail.append(line)
        record = _json_record(line)
        if record is None:
            if _PLAIN_LOG.match(line) or line.startswith("panic:"):  # the final fatal message, or a crash
                self._error(line)
            return  # usage text and the like stay in the tail only
        stats = record.get("stats")
        if isinstance(stats, dict):
            self.stats = stats
            last = stats.get("lastError")
            if isinstance(last, str) and last:
                self._error(last)
        level = str(record.get("level", "")).lower()
        if self.track_transfers and level == "info":
            msg = str(record.get("msg", ""))
            queued = _QUEUED_TO_PATH1.search(msg)
            if queued:
                self.queued_to_path1.append(queued.group(1))
            elif msg.startswith("Copied (") and record.get("object"):
                self.completed.add(str(record["object"]))
        if level in ("error", "critical", "fatal", "panic"):
            msg = str(record.get("msg", ""))
            obj = record.get("object")
            self._error(f"{obj}: {msg}" if obj else msg)

    def _error(self, message: str) -> None:
        if len(self.errors) < self.max_errors:
            self.errors.append(message)

    @property
    def bytes(self) -> int:
        return int((self.stats or {}).get("bytes") or 0)

    @property
    def files(self) -> int:
        return int((self.stats or {}).get("transfers") or 0)


def _json_record(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def parse_output(text: str) -> RcloneOutput:
    """Parse a whole captured rclone log (pure; used by tests and for post-mortems)."""
    out = RcloneOutput()
    for line in text.splitlines():
        out.feed(line)
    return out


@dataclass(frozen=True, slots=True)
class RcloneResult:
    """One finished (or killed) rclone process."""

    argv: tuple[str, ...]
    exit_code: int | None
    output: RcloneOutput
    deadline_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.deadline_exceeded

    def describe(self) -> str:
        """A one-paragraph explanation of a failure, for SyncFailed messages and logs."""
        why = "killed at our deadline" if self.deadline_exceeded else f"exit code {self.exit_code}"
        errors = self.output.errors[-5:]
        detail = "; ".join(dict.fromkeys(errors)) or "; ".join(list(self.output.tail)[-3:])
        return f"rclone {self.argv[1] if len(self.argv) > 1 else ''} {why}: {detail[:1500]}".strip()


async def run_rclone(
    argv: Sequence[str],
    *,
    timeout_s: float | None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 2.0,
    on_start: Callable[[int], None] | None = None,
    on_exit: Callable[[int], None] | None = None,
    track_transfers: bool = False,
) -> RcloneResult:
    """Run rclone to completion, killing it by pid at ``timeout_s`` (SIGTERM, then SIGKILL).

    ``on_start``/``on_exit`` receive the pid so an owner can kill running processes on shutdown.
    If the calling task is cancelled, the process is killed the same way before re-raising.
    """
    full_env = {**os.environ, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=full_env,
        start_new_session=True,
        limit=1 << 20,
    )
    pid = proc.pid
    if on_start:
        on_start(pid)
    output = RcloneOutput(track_transfers=track_transfers)
    deadline_exceeded = False
    logger.debug("rclone pid %d: %s", pid, " ".join(argv))

    async def pump() -> None:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            output.feed(raw.decode("utf-8", "replace"))
        await proc.wait()

    try:
        try:
            await asyncio.wait_for(pump(), timeout_s if timeout_s and timeout_s > 0 else None)
        except TimeoutError:
            deadline_exceeded = True
            logger.warning("rclone pid %d exceeded its %.3f s deadline; killing it", pid, timeout_s)
            await _kill(proc, grace_s)
    except BaseException:
        await asyncio.shield(_kill(proc, grace_s))
        raise
    finally:
        if on_exit:
            on_exit(pid)
    return RcloneResult(tuple(argv), proc.returncode, output, deadline_exceeded)


async def _kill(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """Stop one rclone by pid: SIGTERM (lets it remove lock files), SIGKILL after ``grace_s``."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
    if proc.stdout is not None:  # drain so the transport closes cleanly
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.stdout.read(), 1.0)


def kill_pid(pid: int) -> None:
    """SIGTERM one rclone by pid (used on shutdown; its runner escalates to SIGKILL)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
