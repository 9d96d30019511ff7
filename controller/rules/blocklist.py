"""Blocklist files: plain CIDR lists, Spamhaus DROP, FireHOL netsets.

One address or prefix per line; ``#`` and ``;`` start comments (Spamhaus
writes ``1.2.3.0/24 ; SBL123``, FireHOL ``# comments`` above bare
addresses); blank lines, Windows line ends and a leading byte-order mark are
ignored. A bad line is an error naming the file and the line, and nothing is
applied from a file with a bad line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..addresses import Prefix, parse_prefix
from ..errors import InputError

__all__ = ["parse_lines", "read_file"]


def parse_lines(lines: Iterable[str], source: str = "<input>") -> list[Prefix]:
    """The prefixes of a blocklist's lines, in order (``source`` names the
    file in errors: ``<source>:<line>: ...``)."""
    out: list[Prefix] = []
    for n, line in enumerate(lines, 1):
        text = line.lstrip("\ufeff").split("#", 1)[0].split(";", 1)[0].strip()
        if text:
            out.append(parse_prefix(text.split()[0], field=f"{source}:{n}"))
    return out


def read_file(path: Path) -> list[Prefix]:
    """The prefixes of the blocklist file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    return parse_lines(text.splitlines(), str(path))
