"""Boilerhouse lifecycle events: the wire contract, its codec and the non-blocking publisher."""

from .codec import Batch, EventDecodeError, decode_batch, encode_batch, validate_event
from .schema import EVENT_TYPES, EVENT_TYPES_BY_NAME, SCHEMA_VERSION, EventType, Field

__all__ = [
    "EVENT_TYPES",
    "EVENT_TYPES_BY_NAME",
    "SCHEMA_VERSION",
    "Batch",
    "EventDecodeError",
    "EventType",
    "Field",
    "decode_batch",
    "encode_batch",
    "validate_event",
]
