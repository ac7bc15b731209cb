"""Which events the ``events`` commands show: a type glob, a pool, a workload, a source."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from shared.events.schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, ID_PATTERN

from .times import ArgumentError


@dataclass(frozen=True)
class EventFilter:
    """A glob over event types, a pool id, a workload id, a source substring (all optional)."""

    type_pattern: str | None = None
    pool: str | None = None
    workload: str | None = None
    source: str | None = None
    types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        known = [t.name for t in EVENT_TYPES]
        if self.type_pattern is None:
            types = frozenset(known)
        else:
            types = frozenset(fnmatch.filter(known, self.type_pattern))
            if not types:
                raise ArgumentError(
                    f"--type {self.type_pattern!r} matches no event type; known types: " + ", ".join(known)
                )
        for flag, value, name in (
            ("--pool", self.pool, "pool_id"),
            ("--workload", self.workload, "workload_id"),
        ):
            if value is not None and not ID_PATTERN.match(value):
                raise ArgumentError(f"{flag} {value!r} is not a valid identifier")
            if value is not None and not any(
                name in {f.name for f in EVENT_TYPES_BY_NAME[t].fields} for t in types
            ):
                raise ArgumentError(f"{flag} given, but none of the selected event types has a {name}")
        if self.source is not None and not self.source:
            raise ArgumentError("--source must not be empty")
        object.__setattr__(self, "types", types)

    def matches(self, src: str, ev: Any) -> bool:
        if type(ev) is not dict:
            return False
        if self.type_pattern is not None:
            type_ = ev.get("type")
            if not isinstance(type_, str) or type_ not in self.types:
                return False
        if self.pool is not None and ev.get("pool_id") != self.pool:
            return False
        if self.workload is not None and ev.get("workload_id") != self.workload:
            return False
        return self.source is None or self.source in src
