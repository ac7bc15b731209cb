"""Reading settings from the environment: booleans, bounded numbers and secrets, with errors naming the variable."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeVar


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable, never a secret."""


N = TypeVar("N", int, float)


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def env_number(
    environ: Mapping[str, str],
    name: str,
    default: N,
    kind: type[N],
    minimum: float = 0,
    maximum: float = math.inf,
) -> N:
    """``name`` as an int or float in ``minimum..maximum`` (unset or empty: ``default``)."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name}={raw!r}: expected {expected}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}={raw!r}: expected a finite number")
    if not minimum <= value <= maximum:
        upper = "" if maximum == math.inf else f" and <= {maximum:g}"
        raise SettingsError(f"{name}={raw!r}: must be >= {minimum:g}{upper}")
    return value


def env_secret(environ: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME``, or read from the file named by ``NAME_FILE`` (Docker/Kubernetes secrets).

    Unset means no secret. A variable or file that is set but empty is an error: an empty secret
    silently disabling authentication is worse than refusing to start. Messages name the variable and
    the file, never the value.
    """
    value = environ.get(name)
    path = environ.get(name + "_FILE")
    if value is not None and path:
        raise SettingsError(f"{name} and {name}_FILE are both set: give one")
    if value is not None:
        if not value.strip():
            raise SettingsError(f"{name} is set but empty: unset it, or give a value")
        return value
    if not path:
        if path is not None:
            raise SettingsError(f"{name}_FILE is set but empty: unset it, or name a file")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"{name}_FILE={path!r}: cannot read it ({exc.strerror})") from None
    if not value.strip():
        raise SettingsError(f"{name}_FILE={path!r}: the file is empty")
    return value
