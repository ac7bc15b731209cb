"""Redis refusing a value over ``proto-max-bulk-len``, however the client notices."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis


def assert_too_long_refused(client: redis.Redis, call: Callable[[], object]) -> None:
    """``call()`` sends a value longer than Redis' ``proto-max-bulk-len``. Redis answers "invalid bulk
    length" as soon as it reads the length and closes the connection, so the client sees that answer or,
    when it is still sending the value, a reset connection. Either is the refusal; the connection is
    gone either way, so the client's pool is emptied for the next command."""
    try:
        # A reset: the value was still being written when Redis, having refused it, closed the connection.
        with pytest.raises((redis.ResponseError, redis.ConnectionError)) as refused:
            call()
    finally:
        client.connection_pool.disconnect()
    if isinstance(refused.value, redis.ResponseError):
        assert "invalid bulk length" in str(refused.value), refused.value
