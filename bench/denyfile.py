#!/usr/bin/env python3
"""``breakwater deny add --file`` with a million exact addresses (issue 11).

usage: sudo .venv/bin/python bench/denyfile.py [--entries N]

The real program from ``bpf/`` is built with the shipped map sizes and its
maps are pinned under a fresh ``/sys/fs/bpf/bw-bench-<uuid>/<ifname>/``
(no interface: the CLI works on the pinned maps, named with ``-i``); the
state directory is a fresh temporary one. Everything is removed on exit.

Cases (one JSON line each on stdout, a table on stderr):

``deny_file_1m``
    ``breakwater deny add --file F -i IF`` (``controller.cli`` run as a
    process), F holding N distinct IPv4 addresses one a line: wall time and
    the process's peak RSS (``VmHWM`` read at its exit), and that
    ``deny_v4`` then holds N entries. Targets: <= 2 s and <= 300 MB.
``deny_file_floor``
    In the same run, the least any path pays: the same N keys written into
    ``deny_v4`` with batch updates (``PinnedMap.insert_new``) in this
    process, after the CLI's entries are removed.
``cli_start``
    The same command with a one-line file: the CLI's own start (imports)
    and one swap, time and RSS, so the figures above can be read as
    start + per-entry cost.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as c

from controller.dataplane import abi
from controller.dataplane import build as program
from controller.dataplane.maps import MapSizes
from controller.dataplane.pinned import MapSet

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0
TARGET_MB = 300.0
BASE = 0x0A00_0000  # 10.0.0.0: map content only, nothing is sent
IFNAME = "bwbench0"
TIMEOUT = 600.0


class BenchError(RuntimeError):
    pass


@contextlib.contextmanager
def pinned_program(sizes: MapSizes) -> Iterator[tuple[Path, MapSet]]:
    root = Path(f"/sys/fs/bpf/bw-bench-{uuid.uuid4().hex[:12]}")
    pin = root / IFNAME
    pin.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        stack.callback(c.owned(c.remove_tree), root)
        loaded = program.load(program.Build.make(sizes, pin))
        stack.callback(loaded.close)
        maps = MapSet.open(pin, sizes)
        stack.callback(maps.close)
        yield root, maps


def write_file(path: Path, n: int) -> None:
    a = np.arange(n, dtype=np.uint64) + BASE
    octets = [(a >> np.uint64(s)) & np.uint64(255) for s in (24, 16, 8, 0)]
    lines = np.char.add(np.char.add(np.char.add(np.char.add(octets[0].astype(str), "."),
                                                np.char.add(octets[1].astype(str), ".")),
                                    np.char.add(octets[2].astype(str), ".")), octets[3].astype(str))
    path.write_text("\n".join(lines.tolist()) + "\n")


# Runs the CLI and writes its peak RSS (VmHWM: the high-water mark of the
# process's own memory since exec) to argv[1] at exit. wait4's ru_maxrss
# would also count the pages the child shared with the bench before exec.
WRAPPER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            open(out, 'w').write(line.split()[1])
atexit.register(hwm)
sys.argv[0] = 'breakwater'
runpy.run_module('controller.cli', run_name='__main__', alter_sys=True)
"""


def run_cli(root: Path, state: Path, path: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stderr) of one `deny add --file`."""
    hwm = state.with_suffix(".hwm")
    cmd = [sys.executable, "-c", WRAPPER, str(hwm), "--pin-root", str(root), "--state-dir", str(state),
           "deny", "add", "--file", str(path), "-i", IFNAME]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        deadline = t0 + TIMEOUT
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise BenchError(f"{' '.join(cmd)}: no exit within {TIMEOUT:g} s")
            time.sleep(0.01)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"deny add --file exited {proc.returncode}: {text[-500:]}")
    try:
        peak_kb = int(hwm.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"no peak RSS from the CLI process ({exc})") from exc
    return wall, peak_kb / 1024, text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=1_000_000, help="addresses in the file (default 1M)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        c.log("needs root (pinned maps)")
        return 2
    c.set_bench("denyfile")
    program.check_headers()
    n = a.entries
    status = 0
    try:
        with c.terminate_cleanly(), pinned_program(MapSizes()) as (root, maps), \
                tempfile.TemporaryDirectory(prefix="bw-bench-") as tmp:
            big, one = Path(tmp) / "deny.txt", Path(tmp) / "one.txt"
            write_file(big, n)
            write_file(one, 1)
            deny = maps["deny_v4"]
            c.log("cli_start: deny add --file with 1 address")
            s_wall, s_mb, _ = run_cli(root, Path(tmp) / "state-one", one)
            c.emit(case="cli_start", entries=1, seconds=round(s_wall, 3), peak_rss_mb=round(s_mb, 1),
                   method="controller.cli deny add --file (1 line) -i IF as a process, VmHWM at exit")
            c.log(f"deny_file_1m: deny add --file with {n} addresses")
            wall, mb, err = run_cli(root, Path(tmp) / "state", big)
            held = deny.count()
            if held < n:
                raise BenchError(f"deny_v4 holds {held} entries after deny add --file of {n}")
            keys, _, got = deny.read_all()
            deny.delete_packed(keys, got)
            value = bytes(abi.DenyEntry(0, abi.RULE_ABSENT, 0, abi.GEN_INF, 0, 0))
            packed = (np.arange(n, dtype=np.uint64) + BASE).astype(">u4").tobytes()
            t0 = time.process_time()
            deny.insert_new([packed[i : i + 4] for i in range(0, 4 * n, 4)], [value] * n)
            floor = time.process_time() - t0
            c.emit(case="deny_file_floor", entries=n, seconds=round(floor, 3),
                   method="PinnedMap.insert_new of the same keys (BPF_MAP_UPDATE_BATCH), CPU time")
            c.emit(case="deny_file_1m", entries=n, seconds=round(wall, 2), peak_rss_mb=round(mb, 1),
                   ratio_to_floor=round(wall / floor, 1) if floor else None,
                   over_start_seconds=round(wall - s_wall, 2), over_start_mb=round(mb - s_mb, 1),
                   progress_lines=sum(1 for line in err.splitlines() if line.strip()),
                   target=f"<= {TARGET_SECONDS:g} s, <= {TARGET_MB:g} MB",
                   ok=wall <= TARGET_SECONDS and mb <= TARGET_MB,
                   method="controller.cli deny add --file F -i IF as a process: wall time, "
                          "VmHWM at exit")
    except BenchError as exc:
        c.log(f"FAILED: {exc}")
        status = 1
    except KeyboardInterrupt:
        c.log("interrupted; cleaned up")
        status = 130
    c.print_table()
    return status


if __name__ == "__main__":
    sys.exit(main())
