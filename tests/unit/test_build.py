"""controller.dataplane.build without a compiler: the bundle bcc compiles holds
every header of ``bpf/`` once, so a changed header means a new build id."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from controller.dataplane.build import BPF_DIR, Build, bundle
from controller.dataplane.maps import MapSizes

ENTRY_SOURCE = "breakwater.c"
_LINE_ONE = re.compile(r'^#line 1 "(?P<path>[^"]+)"$', re.MULTILINE)


def inlined(source: str) -> list[str]:
    """File names the bundle inlined, in order (each opens with ``#line 1``)."""
    return [Path(m["path"]).name for m in _LINE_ONE.finditer(source)]


def test_bundle_inlines_every_header_once() -> None:
    names = inlined(bundle(BPF_DIR / ENTRY_SOURCE))
    assert names[0] == ENTRY_SOURCE
    assert sorted(names[1:]) == sorted(p.name for p in BPF_DIR.glob("*.h"))


def test_bundle_has_no_include_left() -> None:
    source = bundle(BPF_DIR / ENTRY_SOURCE)
    assert not re.search(r'^\s*#\s*include\s+"', source, re.MULTILINE)


def test_a_changed_header_changes_the_build_id(tmp_path: Path) -> None:
    bpf = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, bpf)
    flags = tuple(MapSizes().cflags())
    before = Build(bundle(bpf / ENTRY_SOURCE), flags).build_id
    assert Build(bundle(bpf / ENTRY_SOURCE), flags).build_id == before
    for header in sorted(bpf.glob("*.h")):
        text = header.read_text()
        header.write_text(text + "/* changed */\n")
        assert Build(bundle(bpf / ENTRY_SOURCE), flags).build_id != before, header.name
        header.write_text(text)


def test_the_build_id_does_not_depend_on_the_checkout_path(tmp_path: Path) -> None:
    """The same sources in another checkout are the same program: no absolute
    path reaches what the id hashes (#line markers, include flags)."""
    bpf = tmp_path / "elsewhere" / "bpf"
    shutil.copytree(BPF_DIR, bpf)
    here = Build(bundle(BPF_DIR / ENTRY_SOURCE), (*MapSizes().cflags(), f"-I{BPF_DIR}"))
    there = Build(bundle(bpf / ENTRY_SOURCE), (*MapSizes().cflags(), f"-I{bpf}"))
    assert str(tmp_path) not in there.source and str(BPF_DIR) not in here.source
    assert here.source == there.source and here.build_id == there.build_id
