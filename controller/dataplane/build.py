"""Build the XDP program with bcc.

bcc rewrites map method calls (``deny_v4.lookup(&k)``) only in its main
source file, not in included headers, so :func:`bundle` joins
``bpf/breakwater.c`` and the headers it includes from ``bpf/`` into one
translation unit (with ``#line`` markers, so compiler errors still name the
right file) and bcc compiles that file. The C stays in ``bpf/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BreakwaterError, HeadersMissingError, NotRootError, from_bcc_error
from . import netlink
from .maps import MapSizes

__all__ = ["BPF_DIR", "ENTRY", "Build", "LoadedProgram", "attach_pass", "bundle", "check_headers", "load"]

LOGGER = logging.getLogger("breakwater.program")

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
ENTRY = "breakwater_xdp"
MAIN_SOURCE = "breakwater.c"
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def bundle(path: Path, _seen: set[Path] | None = None, _root: Path | None = None) -> str:
    """``path`` with every ``#include "..."`` from its directory inlined once.

    ``#line`` markers name files relative to ``path``'s directory
    (``bpf/verdict.h``), so compiler messages point at the sources and the
    build id does not depend on where the checkout lives."""
    seen = _seen if _seen is not None else set()
    path = path.resolve()
    root = _root or path.parent
    name = f"bpf/{path.relative_to(root)}" if path.is_relative_to(root) else path.name
    out = [f'#line 1 "{name}"']
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        inc = (path.parent / m.group(1)).resolve()
        if inc not in seen:
            seen.add(inc)
            out.append(bundle(inc, seen, root))
        out.append(f'#line {lineno + 1} "{name}"')
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Build:
    """Everything that determines the compiled program."""

    source: str
    cflags: tuple[str, ...]

    @property
    def build_id(self) -> int:
        """64-bit id of source + flags: equal ids mean an identical program.
        Include paths are left out (everything of ours is inlined by
        :func:`bundle`), so the same sources in another checkout have the
        same id."""
        h = hashlib.sha256(self.source.encode())
        for flag in self.cflags:
            if not flag.startswith("-I"):
                h.update(b"\0" + flag.encode())
        return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)

    @classmethod
    def make(cls, sizes: MapSizes, pin_dir: Path | None, extra: tuple[str, ...] = ()) -> Build:
        flags = [*sizes.cflags(), f"-I{BPF_DIR}", "-Wno-macro-redefined",
                 "-Werror=implicit-function-declaration"]
        if pin_dir is not None:
            flags.append(f'-DBW_PIN_DIR="{pin_dir}"')
        return cls(bundle(BPF_DIR / MAIN_SOURCE), tuple(flags) + extra)


def check_headers() -> None:
    """Fail early, with the fix, when bcc would not find kernel headers."""
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build")
    if not (build / "include").is_dir():
        raise HeadersMissingError(
            f"no kernel headers for {release} at {build}: run `make setup` (installs Debian's "
            "closest linux-headers package and links it there), or set BCC_KERNEL_SOURCE"
        )


@dataclass
class LoadedProgram:
    """A compiled, verified program and its maps, held by bcc."""

    bpf: Any  # bcc.BPF
    fd: int
    build: Build

    @property
    def build_id(self) -> int:
        return self.build.build_id

    def close(self) -> None:
        """Release bcc's fds; pinned maps and attachments stay in the kernel."""
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


def _bcc() -> Any:
    """bcc's BPF class, once root and the kernel headers are checked."""
    if os.geteuid() != 0:
        raise NotRootError("loading an XDP program needs root: run as root (sudo)")
    check_headers()
    try:
        from bcc import BPF
    except ImportError as exc:
        raise BreakwaterError(
            "bcc is not importable: install Debian's python3-bpfcc and link it into the venv "
            "(`make setup` does both)"
        ) from exc
    return BPF


def load(build: Build) -> LoadedProgram:
    """Compile ``build`` with bcc and load it as an XDP program."""
    BPF = _bcc()
    with tempfile.NamedTemporaryFile("w", suffix=".c", prefix="breakwater-") as src:
        src.write(build.source)
        src.flush()
        captured = io.StringIO()
        try:
            with _capture_stderr(captured):
                bpf = BPF(src_file=src.name.encode(), cflags=list(build.cflags))
                fn = bpf.load_func(ENTRY.encode(), BPF.XDP)
        except Exception as exc:
            detail = captured.getvalue().strip()
            if detail:
                LOGGER.error("bcc output:\n%s", detail[-4000:])
            err = from_bcc_error(Exception(f"{exc}\n{detail}"), "build XDP program")
            raise err from exc
    return LoadedProgram(bpf, int(fn.fd), build)


PASS_SOURCE = "xdp_pass.c"


def attach_pass(ifname: str, netns: str | None = None) -> None:
    """Attach ``bpf/xdp_pass.c`` (every packet passed) natively to ``ifname``.

    For veth labs: veth delivers the frames its peer sends back with XDP_TX
    (challenge SYN-ACKs) only to a receiver running NAPI, which an XDP
    program switches on. The attachment outlives this call; deleting the
    interface or its namespace removes it."""
    BPF = _bcc()
    captured = io.StringIO()
    try:
        with _capture_stderr(captured):
            bpf = BPF(src_file=str(BPF_DIR / PASS_SOURCE).encode())
            fn = bpf.load_func(b"xdp_pass", BPF.XDP)
    except Exception as exc:
        raise from_bcc_error(Exception(f"{exc}\n{captured.getvalue().strip()}"),
                             "build the pass program") from exc
    try:
        netlink.attach_xdp(ifname, int(fn.fd), "native", netns)
    finally:
        with contextlib.suppress(Exception):
            bpf.cleanup()


@contextlib.contextmanager
def _capture_stderr(sink: io.StringIO) -> Any:
    """bcc and the verifier write to fd 2; keep it for the error message."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.write(tmp.read())
