"""The checks every configuration table and request field goes through.

One wording for each kind of mistake, wherever the operator makes it (a rule
file, the agent's or the controller's TOML, an API request): a
:class:`~controller.errors.FieldError` whose path names the field, built by
:func:`join` from the table's path and the key, and whose text is one of

* ``expected an integer, got "x"`` / ``expected a number, got ...``
  (:func:`check_int`, :func:`check_number`);
* ``5 is out of range 0..3``;
* ``unknown key (did you mean 'dport'?); known: a, b, c``
  (:func:`check_keys`, at the unknown key's own path).

:func:`at` prefixes the path of any error raised inside it, so nested tables
report ``rules[2].match.dport`` without threading paths through every call.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast

from .errors import FieldError

__all__ = [
    "at",
    "check_bool",
    "check_choice",
    "check_int",
    "check_keys",
    "check_number",
    "check_str",
    "check_table",
    "join",
    "show",
    "suggest",
]


def join(outer: str, inner: str) -> str:
    """The path of ``inner`` inside ``outer``: ``a.b``, ``a[0]``, or either
    alone when the other is empty."""
    if not inner:
        return outer
    if not outer:
        return inner
    return outer + inner if inner.startswith("[") else f"{outer}.{inner}"


@contextlib.contextmanager
def at(segment: str) -> Iterator[None]:
    """Prefix the path of any :class:`FieldError` raised inside with ``segment``."""
    try:
        yield
    except FieldError as exc:
        raise FieldError(join(segment, exc.path), exc.what) from None


def show(value: object) -> str:
    """A value as the operator wrote it (JSON/TOML spelling), for messages."""
    if value is None or isinstance(value, str | int | float | bool):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def check_bool(value: object, path: str) -> bool:
    """``value`` if it is true or false, else a :class:`FieldError` at ``path``."""
    if not isinstance(value, bool):
        raise FieldError(path, f"expected true or false, got {show(value)}")
    return value


def check_str(value: object, path: str) -> str:
    """``value`` if it is a string, else a :class:`FieldError` at ``path``."""
    if not isinstance(value, str):
        raise FieldError(path, f"expected a string, got {show(value)}")
    return value


def check_choice(value: object, path: str, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a :class:`FieldError` at ``path``."""
    if not isinstance(value, str) or value not in choices:
        raise FieldError(path, f"{show(value)} is not one of {', '.join(choices)}")
    return value


def check_table(value: object, path: str = "", what: str = "a table") -> Mapping[str, object]:
    """``value`` if it is a table (a mapping), else a :class:`FieldError` at ``path``."""
    if not isinstance(value, Mapping):
        raise FieldError(path, f"expected {what}, got {show(value)}")
    return cast(Mapping[str, object], value)


def check_int(value: object, path: str, lo: int, hi: int) -> int:
    """``value`` if it is an integer (not a bool) in ``lo..hi``, else a
    :class:`FieldError` at ``path``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(path, f"expected an integer, got {show(value)}")
    if not lo <= value <= hi:
        raise FieldError(path, f"{value} is out of range {lo}..{hi}")
    return value


def check_number(value: object, path: str, lo: float, hi: float, *, above: bool = False) -> float:
    """``value`` as a float if it is a finite number (not a bool) in
    ``lo..hi`` (``above``: strictly greater than ``lo``), else a
    :class:`FieldError` at ``path``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError(path, f"expected a number, got {show(value)}")
    if above and not lo < value <= hi:
        raise FieldError(path, f"{value:g} is out of range; must be above {lo:g} and at most {hi:g}")
    if not lo <= value <= hi:
        raise FieldError(path, f"{value:g} is out of range {lo:g}..{hi:g}")
    return float(value)


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _shown_key(key: str) -> str:
    """A key as a path names it: bare, or quoted as TOML quotes it (an empty
    key, dots, spaces, control characters) so the path names it at all and
    no escape code reaches a terminal."""
    return key if key and set(key) <= _BARE_KEY else json.dumps(key)


def check_keys(table: Iterable[object], known: Iterable[str], path: str = "", *,
               elsewhere: Mapping[str, str] | None = None, what: str = "key") -> None:
    """Refuse the first key of ``table`` that is not ``known``, at the key's
    own path, suggesting the closest known key, or the table where the key
    belongs (``elsewhere``: key → table name)."""
    names = list(known)
    other = elsewhere or {}
    for key in table:
        if key in names:
            continue
        text = str(key)
        close = difflib.get_close_matches(text, [*names, *other], n=1)
        if text in other:
            hint = f" ({text!r} belongs in {other[text]})"
        elif close and close[0] in other:
            hint = f" (did you mean {close[0]!r} in {other[close[0]]}?)"
        else:
            hint = suggest(text, names)
        raise FieldError(join(path, _shown_key(text)),
                         f"unknown {what}{hint}; known: {', '.join(sorted(names))}")
