"""The ``boilerhouse`` command rejects bad configuration with a message and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.aggregator.settings import AggregatorSettings, SettingsError
from services.api.settings import ApiSettings


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["aggregator", "--redis-url", "nonsense://x"], {}, "got scheme 'nonsense'"),
        (["api", "--redis-url", "localhost:6379"], {}, "Redis URL must start with redis://"),
        (
            ["aggregator"],
            {"BOILERHOUSE_METRICS_PORT": "abc"},
            "BOILERHOUSE_METRICS_PORT='abc': expected an integer",
        ),
        (["aggregator"], {"BOILERHOUSE_METRICS_ENABLED": "maybe"}, "expected true or false"),
        (["aggregator", "--shard", "3", "--shards", "2"], {}, "shard 3 is not in 0..1"),
        (["aggregator", "--port", "70000"], {}, "70000 is not in 1..65535"),
        (["up", "--metrics-port", "x"], {}, "'x' is not a port number"),
        (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_configuration_is_a_message_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run(args, env)
    assert result.returncode == 2, result
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_subcommand() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    for command in ("up", "api", "aggregator", "events", "replay"):
        assert command in result.stdout


def test_settings_validate_the_redis_url_without_echoing_credentials() -> None:
    with pytest.raises(SettingsError) as err:
        AggregatorSettings(redis_url="http://user:s3cret@host:6379")
    assert "s3cret" not in str(err.value)
    assert ApiSettings(redis_url="unix:///run/redis.sock").redis_url == "unix:///run/redis.sock"
    assert AggregatorSettings(redis_url="rediss://h:6380/1").redis_url == "rediss://h:6380/1"


def test_an_empty_redis_url_variable_counts_as_unset() -> None:
    """``BOILERHOUSE_REDIS_URL=`` (an env file's blank line) means the default, as for the numbers."""
    for settings in (AggregatorSettings, ApiSettings):
        assert settings.from_env({"BOILERHOUSE_REDIS_URL": ""}).redis_url == settings().redis_url
        assert settings.from_env({"BOILERHOUSE_REDIS_URL": "redis://h:1/2"}).redis_url == "redis://h:1/2"
