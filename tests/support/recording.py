"""An in-memory ``emit`` for component tests, and a process liveness check."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from shared.events.codec import validate_event

#: Every tenant id in the component tests holds this mark; no event may carry it.
TENANT_MARK = "tnt-"


class Events:
    """``emit`` that keeps every event, checks it against the catalogue and for leaked tenant ids.

    Every event is validated when it is emitted (the schema's own validator), and each fields dict
    must be a new object: ``emit`` takes ownership of it (the publisher adds the envelope in place).
    Iterating gives ``(type, fields)`` pairs. Thread-safe: the publisher's heartbeat calls snapshot
    callbacks from its flusher thread.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.threads: list[int] = []  # the thread each event was emitted from
        self._lock = threading.Lock()
        self._owned: dict[int, dict[str, Any]] = {}  # id -> the dict itself (kept alive: ids stay unique)

    def __call__(self, type_: str, fields: dict[str, Any] | None = None) -> None:
        if fields is not None:
            with self._lock:
                assert id(fields) not in self._owned, f"{type_}: the same fields dict was emitted twice"
                self._owned[id(fields)] = fields
        fields = fields or {}
        problem = validate_event({**fields, "type": type_, "seq": 1, "ts": time.time()})
        assert problem is None, f"{type_} {fields}: {problem}"
        assert not any(TENANT_MARK in str(v) for v in fields.values()), f"tenant id in {type_} {fields}"
        with self._lock:
            self.items.append((type_, dict(fields)))
            self.threads.append(threading.get_ident())

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(list(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        with self._lock:
            self.items.clear()
            self.threads.clear()

    def of(self, type_: str, **match: Any) -> list[dict[str, Any]]:
        return [f for t, f in self.items if t == type_ and all(f.get(k) == v for k, v in match.items())]

    def count(self, type_: str, **match: Any) -> int:
        return len(self.of(type_, **match))

    def types(self) -> list[str]:
        return [t for t, _ in self.items]

    def lifecycle(self) -> list[str]:
        """Event types without the pool.state snapshots."""
        return [t for t, _ in self.items if t != "pool.state"]

    def mark(self) -> int:
        return len(self.items)

    def since(self, mark: int) -> list[tuple[str, dict[str, Any]]]:
        return self.items[mark:]


def process_alive(pid: int | None) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) is not running."""
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped meanwhile
        return False
