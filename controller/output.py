"""Aligned tables and JSON for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["emit_json", "human_bytes", "human_rate", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None,
          right: Sequence[int] = ()) -> None:
    """Print ``rows`` under ``headers``, columns aligned; ``right`` columns right-aligned."""
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        parts = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.write("  ".join(parts).rstrip() + "\n")
        if n == 0 and not rows:
            break


def emit_json(obj: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(n: float, unit: str = "") -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f}{unit}" if prefix == "" else f"{n:.1f}{prefix}{unit}"
        n /= 1000
    return f"{n:.1f}T{unit}"
