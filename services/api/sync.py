"""SyncCoordinator: moves tenant data with rclone per workload sync spec and publishes sync events.

One ``sync()`` call is one operation: it waits for a slot under the workload's concurrency limit,
runs one or two rclone processes (see docs/sync.md for what each mode/direction runs), and emits
exactly one ``sync.finished``. ``sync.state`` is emitted whenever running/queued/periodic_jobs change.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shared.events.emit import Emit
from shared.events.schema import DIRECTIONS
from shared.events.trace import untraced_context

from .clock import Clock, SystemClock
from .rclone import (
    LOG_FLAGS,
    PERMISSION_DENIED,
    RCLONE_ERROR,
    TIMEOUT,
    RcloneResult,
    classify_error,
    kill_pid,
    needs_resync,
    run_rclone,
    source_missing,
    stale_lock,
)
from .workloads import SyncSpec, Workload

logger = logging.getLogger(__name__)

#: Tenant ids become one path segment of the remote path: no slashes, no "..", no leading dot.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


class SyncError(Exception):
    """Base of every error this module raises."""


class SyncNotConfigured(SyncError, LookupError):
    """The workload is not registered or has no sync spec."""

    def __init__(self, workload_id: str) -> None:
        super().__init__(workload_id)
        self.workload_id = workload_id

    def __str__(self) -> str:
        return f"workload {self.workload_id!r} has no sync spec registered"


class InvalidSyncRequest(SyncError, ValueError):
    """A sync was asked for with an unusable argument (direction, tenant id)."""

    def __init__(self, field_name: str, value: object, reason: str) -> None:
        super().__init__(field_name, value, reason)
        self.field = field_name
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid {self.field} {self.value!r}: {self.reason}"


class SyncClosed(SyncError):
    """The coordinator was closed; no new operations are accepted."""

    def __str__(self) -> str:
        return "sync coordinator is closed"


class SyncFailed(SyncError):
    """One sync operation failed.

    ``error_type`` is ``rclone_error``, ``timeout``, ``permission_denied`` or ``network_error``;
    ``exit_code`` is rclone's (None if it never ran or was killed before exiting); ``errors`` are
    rclone's error messages (bounded), kept for diagnosis.
    """

    def __init__(
        self,
        workload_id: str,
        error_type: str,
        message: str,
        *,
        direction: str | None = None,
        mode: str | None = None,
        exit_code: int | None = None,
        errors: Sequence[str] = (),
    ) -> None:
        super().__init__(workload_id, error_type, message)
        self.workload_id = workload_id
        self.error_type = error_type
        self.message = message
        self.direction = direction
        self.mode = mode
        self.exit_code = exit_code
        self.errors = tuple(errors)

    @property
    def status(self) -> str:
        """The ``status`` label value of the operation: ``timeout`` or ``failure``."""
        return "timeout" if self.error_type == TIMEOUT else "failure"

    def __str__(self) -> str:
        what = f"{self.direction} " if self.direction else ""
        return f"{what}sync of workload {self.workload_id!r} failed ({self.error_type}): {self.message}"


@dataclass(frozen=True, slots=True)
class SyncResult:
    """A successful operation: what rclone reported transferring and how long it took."""

    bytes: int
    files: int
    duration_s: float
    resynced: bool = False
    direction: str = ""
    mode: str = ""


class TenantSync(ABC):
    """What a pool needs from a sync coordinator: one sync that raises on failure, and periodic jobs.

    Periodic jobs are an optional capability: the defaults run none, so a pool calls them without
    probing. :class:`SyncCoordinator` is the implementation.
    """

    @abstractmethod
    async def sync(
        self, workload_id: str, tenant_id: str, local_dir: Path, direction: str | None = None
    ) -> SyncResult: ...

    def start_periodic(self, workload_id: str, tenant_id: str, local_dir: Path) -> bool:
        """Sync this tenant every period of its workload until :meth:`stop_periodic`; False if not started."""
        return False

    async def stop_periodic(self, tenant_id: str) -> bool:
        """Stop the tenant's periodic job; False if it had none."""
        return False


@dataclass(frozen=True, slots=True)
class _Leg:
    """One rclone run of an operation."""

    verb: str
    src: str
    dst: str
    flags: tuple[str, ...] = ()
    download: bool = False


def plan(mode: str, direction: str, local: str, remote: str) -> tuple[str, tuple[_Leg, ...]]:
    """The rclone runs for (mode, direction) and the mode reported in events (pure)."""
    if mode == "bisync":
        if direction == "bidirectional":
            return "bisync", (_Leg("bisync", local, remote),)
        mode = "copy"  # bisync has no one-way form; a one-way request is a plain copy
    if direction == "upload":
        return mode, (_Leg(mode, local, remote),)
    if direction == "download":
        return mode, (_Leg(mode, remote, local, download=True),)
    # bidirectional with sync/copy: merge newer remote files in, then push local out
    up = _Leg("sync", local, remote) if mode == "sync" else _Leg("copy", local, remote, ("--update",))
    return mode, (_Leg("copy", remote, local, ("--update",), download=True), up)


@dataclass(slots=True)
class _WorkloadState:
    spec: SyncSpec
    running: int = 0
    queued: int = 0
    periodic_jobs: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


@dataclass(slots=True)
class _TenantTurn:
    """The lock that serialises one (workload, tenant)'s operations, and how many hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True, slots=True)
class _Transferred:
    """What one leg moved, and whether it had to resync to do it."""

    bytes: int
    files: int
    resynced: bool = False


@dataclass(slots=True)
class _PeriodicJob:
    workload_id: str
    tenant_id: str
    local_dir: Path
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    syncing: bool = False


class _OpFailed(Exception):
    def __init__(self, error_type: str, message: str, result: RcloneResult | None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.result = result


class SyncCoordinator(TenantSync):
    """Runs rclone for registered workloads and publishes ``sync.*`` events.

    Parameters:
        emit: ``Publisher.emit``-shaped callable; it takes ownership of each (fresh) dict.
        rclone: the rclone binary, or a command prefix ending with it (e.g. run under ``setpriv``).
        clock: measures durations and paces periodic jobs (the system clock if None).
        env: extra environment for rclone (e.g. ``RCLONE_CONFIG_<NAME>_TYPE`` remotes).
        bisync_workdir: bisync's ``--workdir`` (listings); rclone's default (~/.cache/rclone/bisync) if None.
        kill_grace_s: seconds between SIGTERM and SIGKILL when a run is stopped.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        rclone: str | Sequence[str] = "rclone",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        bisync_workdir: str | Path | None = None,
        kill_grace_s: float = 2.0,
    ) -> None:
        self._emit = emit
        self._rclone = (rclone,) if isinstance(rclone, str) else tuple(rclone)
        self._clock = clock or SystemClock()
        self._env = dict(env or {})
        self._workdir = Path(bisync_workdir) if bisync_workdir else None
        self._grace_s = kill_grace_s
        self._states: dict[str, _WorkloadState] = {}
        self._jobs: dict[str, _PeriodicJob] = {}
        self._pids: set[int] = set()
        self._inflight = 0
        self._idle: asyncio.Event | None = None
        self._closed = False
        self._turns: dict[tuple[str, str], _TenantTurn] = {}

    # ---- configuration ---------------------------------------------------------------------

    def register(self, workload: Workload) -> None:
        """Take a workload's sync spec (workloads without one are ignored); emits its first sync.state."""
        if workload.sync is None:
            return
        st = self._states.get(workload.id)
        if st is None:
            self._states[workload.id] = st = _WorkloadState(workload.sync)
        else:
            st.spec = workload.sync
            while st.waiters and st.running < st.spec.concurrency:  # a raised limit admits waiters now
                st.running += 1
                st.queued -= 1
                st.waiters.popleft().set_result(None)
        self._emit_state(workload.id, st)

    def spec(self, workload_id: str) -> SyncSpec:
        st = self._states.get(workload_id)
        if st is None:
            raise SyncNotConfigured(workload_id)
        return st.spec

    def remote_path(self, workload_id: str, tenant_id: str) -> str:
        """``{spec.remote}/{tenant_id}``: where a tenant's data lives."""
        _check_tenant(tenant_id)
        base = self.spec(workload_id).remote
        if base.endswith(":"):  # the root of a configured remote
            return f"{base}{tenant_id}"
        return f"{base.rstrip('/')}/{tenant_id}"

    # ---- state snapshots --------------------------------------------------------------------

    def emit_state(self) -> None:
        """Emit sync.state for every registered workload (the publisher heartbeat calls this)."""
        for workload_id, st in list(self._states.items()):
            self._emit_state(workload_id, st)

    def state(self, workload_id: str) -> dict[str, int]:
        st = self._states[workload_id]
        return {"running": st.running, "queued": st.queued, "periodic_jobs": st.periodic_jobs}

    def running_pids(self) -> list[int]:
        """Pids of the rclone processes running now."""
        return sorted(self._pids)

    def _emit_state(self, workload_id: str, st: _WorkloadState) -> None:
        self._emit(
            "sync.state",
            {
                "workload_id": workload_id,
                "running": st.running,
                "queued": st.queued,
                "periodic_jobs": st.periodic_jobs,
            },
        )

    # ---- one operation ----------------------------------------------------------------------

    async def sync(
        self, workload_id: str, tenant_id: str, local_dir: Path, direction: str | None = None
    ) -> SyncResult:
        """Run one sync operation for a tenant; raise :class:`SyncFailed` if it fails."""
        if self._closed:
            raise SyncClosed()
        spec = self.spec(workload_id)
        direction = direction or spec.direction
        if direction not in DIRECTIONS:
            raise InvalidSyncRequest("direction", direction, f"not one of {sorted(DIRECTIONS)}")
        remote = self.remote_path(workload_id, tenant_id)
        local = Path(local_dir)
        mode, legs = plan(spec.mode, direction, str(local), remote)
        st = self._states[workload_id]
        async with self._tenant_turn(workload_id, tenant_id, st):
            return await self._operation(workload_id, st, spec, direction, mode, legs, local)

    @contextlib.asynccontextmanager
    async def _tenant_turn(self, workload_id: str, tenant_id: str, st: _WorkloadState) -> AsyncIterator[None]:
        """One operation at a time per (workload, tenant): two rclones on the same paths would race
        (and bisync would fail on its lock). A waiting operation counts as queued."""
        key = (workload_id, tenant_id)
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _TenantTurn()
        lock = turn.lock
        turn.users += 1
        try:
            if lock.locked():
                st.queued += 1
                self._emit_state(workload_id, st)
                try:
                    await lock.acquire()
                except BaseException:
                    st.queued -= 1
                    self._emit_state(workload_id, st)
                    raise
                st.queued -= 1  # the slot acquisition right after emits the new state
            else:
                await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[key]

    async def _operation(
        self,
        workload_id: str,
        st: _WorkloadState,
        spec: SyncSpec,
        direction: str,
        mode: str,
        legs: tuple[_Leg, ...],
        local: Path,
    ) -> SyncResult:
        await self._acquire(workload_id, st)
        if self._closed:  # closed while this operation waited in the queue: it never runs
            self._release(workload_id, st)
            raise SyncClosed()
        self._enter()
        start = self._now()
        resynced = False
        total_bytes = total_files = 0
        try:
            try:
                deadline = asyncio.get_running_loop().time() + spec.timeout_s if spec.timeout_s > 0 else None
                if any(leg.download or leg.verb == "bisync" for leg in legs):
                    _make_local_dir(local)
                for leg in legs:
                    moved = await self._run_leg(workload_id, spec, leg, deadline)
                    total_bytes += moved.bytes
                    total_files += moved.files
                    resynced = resynced or moved.resynced
            except _OpFailed as exc:
                nbytes = exc.result.output.bytes if exc.result else 0
                nfiles = exc.result.output.files if exc.result else 0
                failed = SyncFailed(
                    workload_id,
                    exc.error_type,
                    exc.message,
                    direction=direction,
                    mode=mode,
                    exit_code=exc.result.exit_code if exc.result else None,
                    errors=exc.result.output.errors if exc.result else (),
                )
                self._finished(
                    workload_id,
                    direction,
                    mode,
                    failed.status,
                    start,
                    total_bytes + nbytes,
                    total_files + nfiles,
                    exc.error_type,
                )
                logger.warning("%s", failed)
                raise failed from None
            except BaseException:  # cancelled (or a bug): still exactly one sync.finished
                self._finished(
                    workload_id, direction, mode, "failure", start, total_bytes, total_files, RCLONE_ERROR
                )
                raise
            else:
                duration = self._finished(
                    workload_id, direction, mode, "success", start, total_bytes, total_files, None
                )
        finally:
            self._leave()
            self._release(workload_id, st)
        logger.info(
            "synced workload %s (%s, %s): %d bytes, %d files in %.3f s%s",
            workload_id,
            direction,
            mode,
            total_bytes,
            total_files,
            duration,
            " after resync" if resynced else "",
        )
        return SyncResult(total_bytes, total_files, duration, resynced, direction, mode)

    async def _run_leg(
        self, workload_id: str, spec: SyncSpec, leg: _Leg, deadline: float | None, retry_lock: bool = True
    ) -> _Transferred:
        if leg.verb == "bisync" and _is_empty_dir(Path(leg.src)):
            # An empty local dir is a first run or a wiped container: listings from an earlier run would
            # make bisync delete the tenant's remote files, and rclone refuses empty listings anyway.
            logger.info(
                "workload %s: local %s is empty; bisync --resync (union, never deletes)", workload_id, leg.src
            )
            return await self._resync(workload_id, spec, leg, deadline)
        started = time.time()
        result = await self._run(spec, (leg.verb, leg.src, leg.dst, *leg.flags), deadline)
        if result.ok:
            return _Transferred(result.output.bytes, result.output.files)
        if leg.verb == "bisync" and (
            result.exit_code is None or result.exit_code < 0 or result.deadline_exceeded
        ):
            _remove_partial_copies(workload_id, Path(leg.src), result, started)
        if leg.download and source_missing(result.exit_code, result.output.errors):
            logger.info("workload %s: %s does not exist yet; nothing to download", workload_id, leg.src)
            return _Transferred(0, 0)
        lock = stale_lock(result.output.errors) if leg.verb == "bisync" and retry_lock else None
        if lock is not None:
            # left by an rclone that was SIGKILLed (ours after the grace period, or a crash)
            logger.warning("workload %s: removing stale bisync lock %s", workload_id, lock)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return await self._run_leg(workload_id, spec, leg, deadline, retry_lock=False)
        if (
            leg.verb == "bisync"
            and needs_resync(result.output.errors)
            and classify_error(result.exit_code, result.output.errors, result.deadline_exceeded)
            == RCLONE_ERROR
        ):
            # not after a timeout, network or permission failure: the next operation resyncs instead
            logger.info(
                "workload %s: bisync needs --resync (%s); running it",
                workload_id,
                result.output.errors[0] if result.output.errors else "no listings",
            )
            return await self._resync(workload_id, spec, leg, deadline)
        raise self._failure(result)

    async def _resync(
        self, workload_id: str, spec: SyncSpec, leg: _Leg, deadline: float | None
    ) -> _Transferred:
        made = await self._run(spec, ("mkdir", leg.dst), deadline)  # bisync needs both sides to exist
        if not made.ok:
            raise self._failure(made)
        self._emit("sync.resynced", {"workload_id": workload_id})
        again = await self._run(spec, (leg.verb, leg.src, leg.dst, *leg.flags, "--resync"), deadline)
        if not again.ok:
            raise self._failure(again)
        return _Transferred(again.output.bytes, again.output.files, resynced=True)

    def _failure(self, result: RcloneResult) -> _OpFailed:
        error_type = classify_error(result.exit_code, result.output.errors, result.deadline_exceeded)
        message = result.describe()
        if self._closed and not result.deadline_exceeded:
            message = f"stopped by close(): {message}"
        return _OpFailed(error_type, message, result)

    async def _run(self, spec: SyncSpec, args: tuple[str, ...], deadline: float | None) -> RcloneResult:
        timeout: float | None = None
        if deadline is not None:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                raise _OpFailed(
                    TIMEOUT, f"deadline of {spec.timeout_s} s passed before rclone {args[0]}", None
                )
        argv = [*self._rclone, *args, *LOG_FLAGS]
        if timeout is not None:
            # rclone stops itself a little before our kill: a cancelled transfer removes its partial
            # file ("Removing partially written file on error"), which SIGTERM/SIGKILL would leave
            own = max(0.001, timeout - min(self._grace_s, 0.3 * timeout))
            argv += ["--max-duration", f"{int(own * 1000)}ms", "--cutoff-mode", "hard"]
        if spec.rclone_config:
            argv += ["--config", spec.rclone_config]
        if args[0] == "bisync" and self._workdir is not None:
            argv += ["--workdir", str(self._workdir)]
        argv += spec.extra_args  # last, so a workload can override any flag above
        try:
            return await run_rclone(
                argv,
                timeout_s=timeout,
                env=self._env,
                grace_s=self._grace_s,
                on_start=self._pids.add,
                on_exit=self._pids.discard,
                track_transfers=args[0] == "bisync",
            )
        except OSError as exc:  # the binary is missing or not executable
            raise _OpFailed(RCLONE_ERROR, f"cannot run {argv[0]}: {exc}", None) from exc

    def _finished(
        self,
        workload_id: str,
        direction: str,
        mode: str,
        status: str,
        start: float,
        nbytes: int,
        nfiles: int,
        error_type: str | None,
    ) -> float:
        duration = max(0.0, self._now() - start)
        self._emit(
            "sync.finished",
            {
                "workload_id": workload_id,
                "direction": direction,
                "mode": mode,
                "status": status,
                "duration_s": duration,
                "bytes": nbytes,
                "files": nfiles,
                "error_type": error_type,
            },
        )
        return duration

    def _now(self) -> float:
        return self._clock.monotonic()

    # ---- concurrency limit with a FIFO queue --------------------------------------------------

    async def _acquire(self, workload_id: str, st: _WorkloadState) -> None:
        if st.running < st.spec.concurrency and not st.waiters:
            st.running += 1
            self._emit_state(workload_id, st)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.waiters.append(fut)
        st.queued += 1
        self._emit_state(workload_id, st)
        try:
            await fut  # _release hands its slot over: running stays, queued drops
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(workload_id, st)  # the slot was already ours: pass it on
            else:
                with contextlib.suppress(ValueError):
                    st.waiters.remove(fut)
                st.queued -= 1
                self._emit_state(workload_id, st)
            raise

    def _release(self, workload_id: str, st: _WorkloadState) -> None:
        while st.waiters:
            fut = st.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                st.queued -= 1
                self._emit_state(workload_id, st)
                return
        st.running -= 1
        self._emit_state(workload_id, st)

    def _enter(self) -> None:
        self._inflight += 1

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    # ---- periodic jobs ------------------------------------------------------------------------

    def start_periodic(self, workload_id: str, tenant_id: str, local_dir: Path) -> bool:
        """Sync this tenant every ``period_s`` (spec direction) until :meth:`stop_periodic`.

        Returns False (and does nothing) when the spec has no period or the same job already runs.
        Must be called from the event loop's thread.
        """
        if self._closed:
            raise SyncClosed()
        spec = self.spec(workload_id)
        _check_tenant(tenant_id)
        if spec.period_s <= 0:
            return False
        old = self._jobs.get(tenant_id)
        if old is not None:
            if old.workload_id == workload_id and old.local_dir == Path(local_dir) and not old.stopping:
                return False
            self._drop_job(old)
            if old.task is not None and not old.syncing:
                old.task.cancel()
        job = _PeriodicJob(workload_id, tenant_id, Path(local_dir))
        job.task = asyncio.get_running_loop().create_task(
            self._periodic(job, spec.period_s),
            name=f"sync-periodic-{workload_id}",
            context=untraced_context(),
        )
        self._jobs[tenant_id] = job
        st = self._states[workload_id]
        st.periodic_jobs += 1
        self._emit_state(workload_id, st)
        logger.info("periodic sync of workload %s every %.3f s started", workload_id, spec.period_s)
        return True

    async def stop_periodic(self, tenant_id: str) -> bool:
        """Stop the tenant's periodic job; a sync it is running is allowed to finish. False if none."""
        job = self._jobs.get(tenant_id)
        if job is None:
            return False
        self._drop_job(job)
        if job.task is not None:
            if not job.syncing:
                job.task.cancel()
            await asyncio.wait([job.task])
        logger.info("periodic sync of workload %s stopped", job.workload_id)
        return True

    def _drop_job(self, job: _PeriodicJob) -> None:
        job.stopping = True
        if self._jobs.get(job.tenant_id) is job:
            del self._jobs[job.tenant_id]
            st = self._states.get(job.workload_id)
            if st is not None:
                st.periodic_jobs -= 1
                self._emit_state(job.workload_id, st)

    async def _periodic(self, job: _PeriodicJob, period_s: float) -> None:
        while not job.stopping:
            await self._clock.sleep(period_s)
            if job.stopping:
                return
            job.syncing = True
            try:
                await self.sync(job.workload_id, job.tenant_id, job.local_dir)
            except SyncError as exc:  # already counted in sync.finished; keep the schedule
                logger.warning("periodic sync of workload %s: %s", job.workload_id, exc)
            finally:
                job.syncing = False

    # ---- shutdown -----------------------------------------------------------------------------

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop every periodic job and every running rclone (by pid); wait for operations to end."""
        self._closed = True
        jobs = list(self._jobs.values())
        tasks = [j.task for j in jobs if j.task is not None]
        for job in jobs:
            self._drop_job(job)
        for task in tasks:
            task.cancel()
        pids = sorted(self._pids)
        for pid in pids:
            kill_pid(pid)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        if self._inflight:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        logger.info(
            "sync coordinator closed: %d periodic jobs stopped, %d rclone processes killed",
            len(jobs),
            len(pids),
        )


def _remove_partial_copies(workload_id: str, local: Path, result: RcloneResult, started_wall: float) -> int:
    """After a killed bisync, remove the local files it was still copying in.

    rclone 1.60 writes local files in place and only a graceful stop removes a partial one; the next
    run is a --resync, in which the local side wins, so a partial file would overwrite the tenant's
    good remote copy. A file qualifies only if bisync queued it for copying to the local side, never
    logged it as copied, and it was modified during the run (a copy in progress has no final mtime).
    """
    removed = 0
    for queued in result.output.queued_to_path1:
        path = Path(queued)
        try:
            rel = str(path.relative_to(local.absolute()))
        except ValueError:
            continue
        if rel in result.output.completed:
            continue
        try:
            if path.is_file() and path.stat().st_mtime >= started_wall - 1:
                path.unlink()
                removed += 1
        except OSError:
            logger.warning("workload %s: cannot remove partial copy %s", workload_id, path, exc_info=True)
    if removed:
        logger.warning(
            "workload %s: removed %d partial copies left by the killed bisync in %s",
            workload_id,
            removed,
            local,
        )
    return removed


def _is_empty_dir(path: Path) -> bool:
    try:
        return next(path.iterdir(), None) is None
    except OSError:
        return False  # let rclone report what is wrong with it


def _make_local_dir(local: Path) -> None:
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        kind = PERMISSION_DENIED if exc.errno in (errno.EACCES, errno.EPERM) else RCLONE_ERROR
        raise _OpFailed(kind, f"cannot create local directory {local}: {exc}", None) from exc


def _check_tenant(tenant_id: str) -> None:
    if not isinstance(tenant_id, str) or not TENANT_PATTERN.match(tenant_id):
        raise InvalidSyncRequest("tenant_id", tenant_id, f"must match {TENANT_PATTERN.pattern}")
