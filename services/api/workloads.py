"""Workload definitions (YAML files): what a pool's containers run and how tenant data is synced."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.events.schema import DIRECTIONS, ID_PATTERN, MODES

DEFAULT_WORKLOADS_DIR = Path(__file__).parent / "workloads"
DEFAULT_COMMAND = ("sleep", "infinity")
DEFAULT_IMAGE = "localhost/boilerhouse-busybox:latest"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class SyncSpec:
    """How a workload's tenant data is synced with rclone.

    ``remote`` is an rclone remote path prefix (``/srv/backup`` for a local directory, or
    ``name:bucket/path`` for a configured remote); each tenant's data lives at ``{remote}/{tenant_id}``.
    ``period_s`` > 0 starts a periodic job per claimed tenant; ``concurrency`` caps running syncs of
    the workload (more are queued); ``timeout_s`` bounds one rclone run.
    """

    remote: str
    mode: str = "sync"
    direction: str = "bidirectional"
    period_s: float = 0.0
    concurrency: int = 2
    timeout_s: float = 300.0
    rclone_config: str | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Workload:
    """What a pool runs.

    ``command`` is the container's process (argv); ``image`` is used by OCI runtimes (podman);
    ``health_command`` (argv, run inside the container) must exit 0 for a healthy container; without
    one a container is healthy while its process runs.
    """

    id: str
    command: tuple[str, ...] = DEFAULT_COMMAND
    image: str = DEFAULT_IMAGE
    health_command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    sync: SyncSpec | None = None
    source: str = ""


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string such as ``500ms``, ``30s``, ``5m``, ``1h``."""
    if isinstance(value, bool):
        raise WorkloadError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise WorkloadError(f"{where}: duration must be >= 0")
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise WorkloadError(f"{where}: {value!r} is not a duration like 30s, 5m, 500ms")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def _argv(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return ("sh", "-c", value)
    if isinstance(value, list) and value and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise WorkloadError(f"{where}: expected a command string or a non-empty list of strings")


def workload_from_dict(doc: Any, source: str = "<dict>") -> Workload:
    if not isinstance(doc, dict):
        raise WorkloadError(f"{source}: a workload is a mapping, got {type(doc).__name__}")
    known = {"id", "command", "image", "health_command", "env", "sync"}
    unknown = set(doc) - known
    if unknown:
        raise WorkloadError(f"{source}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    wid = doc.get("id")
    if not isinstance(wid, str) or not ID_PATTERN.match(wid):
        raise WorkloadError(f"{source}: id {wid!r} must match {ID_PATTERN.pattern}")
    env = doc.get("env") or {}
    if not isinstance(env, dict):
        raise WorkloadError(f"{source}: env must be a mapping")
    sync = None
    if doc.get("sync") is not None:
        sync = _sync_from_dict(doc["sync"], f"{source}: sync")
    return Workload(
        id=wid,
        command=_argv(doc["command"], f"{source}: command") if "command" in doc else DEFAULT_COMMAND,
        image=str(doc.get("image", DEFAULT_IMAGE)),
        health_command=_argv(doc["health_command"], f"{source}: health_command")
        if doc.get("health_command")
        else (),
        env={str(k): str(v) for k, v in env.items()},
        sync=sync,
        source=source,
    )


def _sync_from_dict(doc: Any, where: str) -> SyncSpec:
    if not isinstance(doc, dict):
        raise WorkloadError(f"{where}: expected a mapping")
    known = {"remote", "mode", "direction", "period", "concurrency", "timeout", "rclone_config", "extra_args"}
    unknown = set(doc) - known
    if unknown:
        raise WorkloadError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    remote = doc.get("remote")
    if not isinstance(remote, str) or not remote:
        raise WorkloadError(f"{where}: remote is required (an rclone path such as /srv/data or s3:bucket)")
    mode = doc.get("mode", "sync")
    if mode not in MODES:
        raise WorkloadError(f"{where}: mode {mode!r} not one of {sorted(MODES)}")
    direction = doc.get("direction", "bidirectional" if mode == "bisync" else "upload")
    if direction not in DIRECTIONS:
        raise WorkloadError(f"{where}: direction {direction!r} not one of {sorted(DIRECTIONS)}")
    concurrency = doc.get("concurrency", 2)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise WorkloadError(f"{where}: concurrency must be an integer >= 1")
    extra = doc.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise WorkloadError(f"{where}: extra_args must be a list of strings")
    return SyncSpec(
        remote=remote,
        mode=mode,
        direction=direction,
        period_s=parse_duration(doc.get("period", 0), f"{where}: period"),
        concurrency=concurrency,
        timeout_s=parse_duration(doc.get("timeout", 300), f"{where}: timeout"),
        rclone_config=doc.get("rclone_config"),
        extra_args=tuple(extra),
    )


def load_workloads(directory: str | Path | None = None) -> dict[str, Workload]:
    """Load every ``*.yaml``/``*.yml`` in ``directory`` (the shipped examples by default)."""
    root = Path(directory) if directory else DEFAULT_WORKLOADS_DIR
    if not root.is_dir():
        raise WorkloadError(f"{root}: workloads directory does not exist")
    out: dict[str, Workload] = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise WorkloadError(f"{path}: not valid YAML: {exc}") from exc
        w = workload_from_dict(doc, str(path))
        if w.id in out:
            raise WorkloadError(f"{path}: workload id {w.id!r} already defined in {out[w.id].source}")
        out[w.id] = w
    return out
