"""Configuration files: the one TOML reader of the agent's and the
controller's configuration, and the step that names the file in every error.

A table is checked by the functions of :mod:`controller.validate`, which raise
:class:`~controller.errors.FieldError` with the key's path;
:func:`checked` turns that into a :class:`~controller.errors.ConfigError`
that also names the file (``/etc/breakwater/agent.toml: detect.interval: ...``).
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError, FieldError, InputError
from .validate import join

__all__ = ["checked", "parse_listen", "read_toml"]


def read_toml(path: Path) -> dict[str, Any] | None:
    """The TOML document at ``path``, or None if there is no such file;
    unreadable or invalid TOML is a :class:`ConfigError` naming the file."""
    src = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(src, "", f"cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(src, "", f"not valid TOML: {exc}") from None


@contextlib.contextmanager
def checked(source: str, key: str = "") -> Iterator[None]:
    """Errors raised inside as :class:`ConfigError` of ``source`` at ``key``
    (joined with a :class:`FieldError`'s own path)."""
    try:
        yield
    except ConfigError:
        raise
    except FieldError as exc:
        raise ConfigError(source, join(key, exc.path), exc.what) from None
    except InputError as exc:
        raise ConfigError(source, key, str(exc)) from None


def parse_listen(value: object, path: str, example: str) -> tuple[str, int] | None:
    """``"ADDR:PORT"`` (``[::1]:9611`` for IPv6) as (host, port), or None for
    ``""`` (disabled); a :class:`FieldError` at ``path`` otherwise."""
    if not isinstance(value, str):
        raise FieldError(path, f"expected \"ADDR:PORT\" or \"\" (disabled), got {value!r}")
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise FieldError(path, f"{value!r} is not ADDR:PORT (e.g. {example}; port 0..65535)")
    return host, int(port)
