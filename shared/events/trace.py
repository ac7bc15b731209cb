"""W3C Trace Context on the producer side: the trace id of the work in progress, carried to events.

A server that takes part in a trace (the API: ``services/api/middleware.py``) parses the request's
``traceparent`` header with :func:`parse_traceparent`, or starts a trace with :func:`new_trace_id`,
and sets :data:`TRACE_ID` for the time it serves the request. ``emit`` wrapped by :func:`traced` then
adds that trace id to every event it sends that has a ``trace_id`` field (the events that measure a
duration, shared/events/schema.py), so the aggregator can keep them as histogram exemplars. The
publisher itself is unchanged: an emitter made by ``Publisher.declare`` sends a trace id when
``trace_id`` is one of its declared fields and the caller passes :func:`current_trace_id`.

Background work started while serving a request (a pool's maintenance loop, a periodic sync) is not
part of that request: start it in :func:`untraced_context`.
"""

from __future__ import annotations

import contextvars
import os
import re
from typing import Any, NamedTuple

from .emit import Emit
from .schema import TRACE_FIELD, TRACED_TYPES

#: The trace id of the request being served in this context (None: no trace).
TRACE_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("boilerhouse_trace_id", default=None)


#: ``version-trace_id-parent_id-flags`` (https://www.w3.org/TR/trace-context/#traceparent-header),
#: lowercase hex only. Version 00 is exactly these 55 characters; a later version may append
#: ``-...`` (parsed as far as version 00 reaches).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_LEN = 55
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: The one flag of version 00: the caller may have recorded the trace.
SAMPLED = 0x01


class TraceParent(NamedTuple):
    """A valid ``traceparent``: the trace id, the caller's span (parent) id and the trace flags."""

    trace_id: str
    parent_id: str
    flags: int


def parse_traceparent(value: str | bytes | None) -> TraceParent | None:
    """The ``traceparent`` header value parsed as W3C Trace Context requires, or None if it is invalid.

    Version ``00``: exactly 55 characters. A later version (not ``ff``): at least 55, its version-00
    part parsed, and anything after it must start with ``-``. Hex digits are lowercase only; an all-zero
    trace id or parent id is invalid. Leading and trailing spaces and tabs (HTTP's optional whitespace)
    are ignored. Never raises: a caller that gets None starts a new trace.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if len(value) > 512:  # far longer than any version needs; not worth stripping
        return None
    value = value.strip(" \t")
    if len(value) < _TRACEPARENT_LEN:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff":
        return None
    if version == "00":
        if len(value) != _TRACEPARENT_LEN:
            return None
    elif len(value) > _TRACEPARENT_LEN and value[_TRACEPARENT_LEN] != "-":
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def _random_hex(n: int) -> str:
    while True:
        value = os.urandom(n).hex()
        if value.strip("0"):  # all zero is invalid (a chance of 2**-64 or less)
            return value


def new_trace_id() -> str:
    """A new random trace id: 16 random bytes as 32 lowercase hex digits, never all zero."""
    return _random_hex(16)


def new_span_id() -> str:
    """A new random span id: 8 random bytes as 16 lowercase hex digits, never all zero."""
    return _random_hex(8)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    """A version 00 ``traceparent`` value (only the flags version 00 defines are kept)."""
    return f"00-{trace_id}-{span_id}-{flags & SAMPLED:02x}"


def current_trace_id() -> str | None:
    """The trace id of the request served in this context, or None."""
    return TRACE_ID.get()


def untraced_context() -> contextvars.Context:
    """A copy of the current context without a trace id: for tasks that outlive the request that
    started them (``loop.create_task(coro, context=untraced_context())``)."""
    ctx = contextvars.copy_context()
    ctx.run(TRACE_ID.set, None)
    return ctx


def traced(emit: Emit) -> Emit:
    """``emit`` that adds the context's trace id to the events that have a ``trace_id`` field.

    An event that already carries one keeps it. Without a trace id in the context, or for other event
    types, the fields pass through untouched (one set lookup and, for timed events, one context read).
    """
    get, types = TRACE_ID.get, TRACED_TYPES

    def emit_traced(type_: str, fields: dict[str, Any] | None = None) -> None:
        if type_ in types and fields is not None:
            trace_id = get()
            if trace_id is not None and TRACE_FIELD not in fields:
                fields[TRACE_FIELD] = trace_id
        emit(type_, fields)

    return emit_traced
