"""Read ``#define`` constants out of the C headers in ``bpf/``, without a compiler.

Values are integer constant expressions: literals, shifts such as
``(1U << 8)``, ``+ - * /`` (integer division, as in C for these positive
values) and names of ``BW_*`` constants defined before; anything else is
refused rather than guessed at.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BPF_DIR = REPO / "bpf"
PROTO_DIR = REPO / "proto"

_DEFINE = re.compile(r"^\s*#\s*define\s+(BW_[A-Z0-9_]+)\s+(.+?)\s*(?:/\*.*)?$")
_INT_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_OPS = {
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.floordiv,
}


def _eval(node: ast.AST, names: Mapping[str, int]) -> int:
    if isinstance(node, ast.Expression):
        return _eval(node.body, names)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.left, names), _eval(node.right, names)))
    raise ValueError(f"not an integer constant expression: {ast.dump(node)}")


def c_int(expr: str, names: Mapping[str, int] | None = None) -> int:
    """The value of a C integer constant expression like ``(1U << 8)`` or
    ``(BW_MAX_SIGS / 64)``, with ``names`` for the constants it refers to."""
    return _eval(ast.parse(_INT_SUFFIX.sub(r"\1", expr.strip()), mode="eval"), names or {})


def defines(header: str, names: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every ``#define BW_* <integer>`` of ``bpf/<header>`` (first definition
    wins); a value may use constants defined above it or given in ``names``."""
    out: dict[str, int] = {}
    for line in (BPF_DIR / header).read_text().splitlines():
        m = _DEFINE.match(line)
        if not m:
            continue
        name, value = m.groups()
        value = value.split("//", 1)[0].strip()
        try:
            out.setdefault(name, c_int(value, {**(names or {}), **out}))
        except (SyntaxError, ValueError):
            continue  # a string or macro body, e.g. BW_MAP(...)
    return out
