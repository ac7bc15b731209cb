"""The range of every number the API accepts (request bodies, settings), declared once."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range of numbers; ``integer`` ranges refuse fractions (and booleans).

    Parameters:
        minimum, maximum: the bounds, both allowed.
        integer: only whole numbers (JSON integers, or integer environment values).
        unit: shown after the bounds (``s`` for seconds), empty for counts.
    """

    minimum: float
    maximum: float
    integer: bool = False
    unit: str = ""

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not in this range (a phrase to follow the field name), or None if it is."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {'an integer' if self.integer else 'a number'} in {self}"
        if self.integer and not isinstance(value, int):
            return f"must be an integer in {self}"
        if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            return f"must be in {self}"
        return None

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{_number(self.minimum)}..{_number(self.maximum)}{unit}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


#: Pool sizes: a pool may keep at most this many containers.
MAX_POOL_SIZE = 1000
DAY_S = 86_400.0

#: Fields of a pool-creation body (``POST /api/v1/pools``, and each entry of a pools file).
POOL_FIELDS: dict[str, Range] = {
    "min_size": Range(0, MAX_POOL_SIZE, integer=True),
    "max_size": Range(1, MAX_POOL_SIZE, integer=True),
    "affinity_timeout_s": Range(0.0, DAY_S, unit="s"),
    # A claim on an exhausted pool holds its HTTP request open this long.
    "acquire_timeout_s": Range(0.0, 300.0, unit="s"),
    "idle_timeout_s": Range(0.0, DAY_S, unit="s"),
    # Health checks run from the maintenance tick; below ~50 ms they would only spin.
    "health_interval_s": Range(0.05, 3600.0, unit="s"),
}

#: Numeric API settings by environment variable, with the ``ApiSettings`` field each one sets.
SETTINGS: dict[str, tuple[str, Range]] = {
    "BOILERHOUSE_API_PORT": ("port", Range(1, 65_535, integer=True)),
    "BOILERHOUSE_PARTITIONS": ("partitions", Range(1, 1024, integer=True)),
    "BOILERHOUSE_HEARTBEAT_INTERVAL_S": ("heartbeat_interval_s", Range(0.05, 300.0, unit="s")),
    "BOILERHOUSE_EVENT_BUFFER": ("buffer_size", Range(1, 10_000_000, integer=True)),
    # Acknowledged writes that survive a failover of the bus' master: WAIT for this many replicas.
    "BOILERHOUSE_PUBLISH_WAIT_REPLICAS": ("publish_wait_replicas", Range(0, 16, integer=True)),
    "BOILERHOUSE_PUBLISH_WAIT_TIMEOUT_MS": ("publish_wait_timeout_ms", Range(1, 60_000, integer=True)),
    "BOILERHOUSE_AFFINITY_TIMEOUT_S": ("affinity_timeout_s", POOL_FIELDS["affinity_timeout_s"]),
    "BOILERHOUSE_ACQUIRE_TIMEOUT_S": ("acquire_timeout_s", POOL_FIELDS["acquire_timeout_s"]),
    "BOILERHOUSE_IDLE_TIMEOUT_S": ("idle_timeout_s", POOL_FIELDS["idle_timeout_s"]),
    "BOILERHOUSE_HEALTH_INTERVAL_S": ("health_interval_s", POOL_FIELDS["health_interval_s"]),
    # The HTTP server: how long a client may take to send a whole request, and how many
    # connections it may hold open (also capped below the process's open-files limit).
    "BOILERHOUSE_HTTP_READ_TIMEOUT_S": ("http_read_timeout_s", Range(0.1, 300.0, unit="s")),
    "BOILERHOUSE_HTTP_MAX_CONNECTIONS": ("http_max_connections", Range(1, 100_000, integer=True)),
}
