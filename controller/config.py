"""Configuration files: the one TOML reader of the agent's and the
controller's configuration, the step that names the file in every error, and
the one TOML writer (``tomllib`` only reads) for the rule files, the lab's and
the tests' generated configurations.

A table is checked by the functions of :mod:`controller.validate`, which raise
:class:`~controller.errors.FieldError` with the key's path;
:func:`checked` turns that into a :class:`~controller.errors.ConfigError`
that also names the file (``/etc/breakwater/agent.toml: detect.interval: ...``).
"""

from __future__ import annotations

import contextlib
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .errors import ConfigError, FieldError, InputError
from .validate import join

__all__ = ["checked", "parse_listen", "read_toml", "toml_document", "toml_value"]


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


# --- writing ----------------------------------------------------------------------------

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES: Final = {
    '"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def toml_value(value: object) -> str:
    """One TOML value: booleans, integers, finite floats, strings, arrays and
    inline tables (what ``tomllib`` reads back to an equal value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cannot write {value!r} as TOML")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_document(doc: Mapping[str, object], table: str = "") -> str:
    """A TOML document: ``doc``'s plain keys, then each mapping value as a
    ``[table]`` of its own (nested ones as ``[table.sub]``)."""
    plain = [f"{_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, Mapping)]
    lines = ([f"[{table}]"] if table else []) + plain
    for k, v in doc.items():
        if isinstance(v, Mapping):
            lines += ["", toml_document(v, f"{table}.{_key(k)}" if table else _key(k)).rstrip("\n")]
    return "\n".join(lines) + "\n"
