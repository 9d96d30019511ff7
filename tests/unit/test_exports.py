"""The package tree's exports: every package says what it owns and lists its
public modules in ``__all__``; every module's ``__all__`` is its interface
(everything it names exists, none of it is borrowed from another Breakwater
module, and every name other code imports from it is there); the top-level
``controller`` re-exports only names its modules export."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import controller

ROOT = Path(controller.__file__).parent
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
MODULES = sorted(
    info.name for info in pkgutil.walk_packages([str(ROOT)], "controller.")
    if not info.ispkg and not info.name.rsplit(".", 1)[1].startswith("_")
)


REPO = ROOT.parent


def _imported_names() -> dict[str, set[str]]:
    """For each controller module, the names other code (the package, the
    tests, the benchmarks) imports from it by name."""
    out: dict[str, set[str]] = {}
    for top in ("controller", "tests", "bench", "scripts"):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            package = list(parts[:-1])
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom):
                    continue
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target.startswith("controller."):
                    out.setdefault(target, set()).update(a.name for a in node.names)
    return out


IMPORTED = _imported_names()


def test_every_package_lists_its_modules() -> None:
    assert PACKAGES == ["agent", "api", "cli", "dataplane", "detection", "fleet", "lab", "rules"]
    for name in PACKAGES:
        pkg = importlib.import_module(f"controller.{name}")
        assert pkg.__doc__ and len(pkg.__doc__) > 100, f"controller.{name} says what it owns"
        files = sorted(p.stem for p in (ROOT / name).glob("*.py") if not p.stem.startswith("_"))
        assert sorted(pkg.__all__) == files, f"controller.{name}.__all__"


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_what_it_defines(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item!r}, which it does not define"
        value = getattr(module, item)
        owner = getattr(value, "__module__", name) if callable(value) else name
        assert not owner.startswith("controller.") or owner == name, \
            f"{name}.__all__ re-exports {item!r}, which {owner} owns: import it from there"
    used = {n for n in IMPORTED.get(name, set()) if not n.startswith("_")}
    outside = used - set(exported)
    assert not outside, f"{sorted(outside)} are imported from {name} but not in its __all__"


def test_top_level_reexports_come_from_their_owners() -> None:
    for item in controller.__all__:
        if item == "__version__":
            continue
        value = getattr(controller, item)
        owners = [m for m in MODULES if item in importlib.import_module(m).__all__
                  and getattr(importlib.import_module(m), item) is value]
        assert owners, f"controller.{item} is not exported by any of its modules"
