"""Blocklist files: plain CIDR lists, Spamhaus DROP, FireHOL netsets.

One prefix per line; ``#`` and ``;`` start comments (Spamhaus writes
``1.2.3.0/24 ; SBL123``). A bad line is an error naming the file and line:
nothing is applied from a file with a bad line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..addresses import Prefix, parse_prefix
from ..errors import InputError

__all__ = ["parse_lines", "read_file"]


def parse_lines(lines: Iterable[str], source: str = "<input>") -> list[Prefix]:
    out: list[Prefix] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].split(";", 1)[0].strip()
        if not text:
            continue
        token = text.split()[0]
        try:
            out.append(parse_prefix(token, field=f"{source}:{n}"))
        except InputError:
            raise
    return out


def read_file(path: Path) -> list[Prefix]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    return parse_lines(text.splitlines(), str(path))
