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
