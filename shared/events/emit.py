"""The producer-side ``emit`` contract: the one callable every component publishes events through."""

from __future__ import annotations

from typing import Any, Protocol


class Emit(Protocol):
    """``Publisher.emit`` and anything shaped like it.

    ``type_`` is an event type of the catalogue (``container.acquired``); ``fields`` its fields. The
    callee takes ownership of the dict, so every call passes a fresh one. Never blocks, never raises
    for a full buffer (the publisher counts what it drops).
    """

    def __call__(self, type_: str, fields: dict[str, Any] | None = None) -> None: ...
