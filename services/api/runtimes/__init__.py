"""Container runtimes behind one base class; ``make_runtime`` builds one by name (``process`` or ``podman``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ContainerRuntime, ContainerRuntimeError, clear_directory
from .podman import PodmanRuntime
from .process import ProcessRuntime

RUNTIMES = ("process", "podman")

__all__ = [
    "RUNTIMES",
    "ContainerRuntime",
    "ContainerRuntimeError",
    "PodmanRuntime",
    "ProcessRuntime",
    "UnknownRuntime",
    "clear_directory",
    "make_runtime",
]


class UnknownRuntime(ValueError):
    """A runtime name that is not one of :data:`RUNTIMES`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown container runtime {self.name!r}; choose one of {', '.join(RUNTIMES)}"


def make_runtime(name: str, data_dir: str | Path, **options: Any) -> ContainerRuntime:
    """Build the runtime called ``name``; ``data_dir`` is the data root (process logs go to ``_logs``)."""
    if name == "process":
        return ProcessRuntime(log_dir=Path(data_dir) / "_logs", **options)
    if name == "podman":
        return PodmanRuntime(**options)
    raise UnknownRuntime(name)
