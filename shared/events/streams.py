"""Redis key names and partitioning. Every key of a partition shares one Redis Cluster hash tag."""

from __future__ import annotations

import zlib

DEFAULT_PREFIX = "boilerhouse"
DEFAULT_GROUP = "aggregator"


def partition_of(src: str, partitions: int) -> int:
    """The partition a source writes to: CRC-32 (IEEE) of its UTF-8 bytes modulo the partition count."""
    return zlib.crc32(src.encode()) % partitions if partitions > 1 else 0


def stream_key(partition: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:events:{{{partition}}}"


def dead_letter_key(partition: int, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:deadletter:{{{partition}}}"


def checkpoint_key(partition: int, group: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}:checkpoint:{{{partition}}}:{group}"


#: A stream entry id as (milliseconds, sequence).
StreamId = tuple[int, int]


def parse_id(raw: bytes | str) -> StreamId:
    """``b"1764201600000-3"`` (or a bare ``"1764201600000"``) as ``(1764201600000, 3)``."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"
