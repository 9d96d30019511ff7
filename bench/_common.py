"""Helpers shared by the benchmarks: output, packets, reference programs, CPU time.

Nothing here touches a real interface. Packets are bytes for
BPF_PROG_TEST_RUN or trafgen configs; reference programs are compiled with
bcc from ``bench/progs/``; CPU time comes from ``/proc/stat``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from controller.dataplane import attach as dataplane

__all__ = [
    "PROGS_DIR",
    "CpuTimes",
    "RefProgram",
    "emit",
    "ensure_tool",
    "ipv4_tcp",
    "ipv4_udp",
    "ipv6_udp",
    "load_ref",
    "median",
    "print_table",
    "proc_stat",
    "quietly",
    "remove_tree",
    "set_bench",
    "terminate_cleanly",
]

PROGS_DIR = Path(__file__).resolve().parent / "progs"
FRAME_BYTES = 64  # every test frame is padded to this many bytes
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")

_LINES: list[dict[str, Any]] = []
_BENCH = {"name": "dataplane"}  # the "bench" field of every line (set_bench)


def set_bench(name: str) -> None:
    """Name the benchmark in every line :func:`emit` prints from now on."""
    _BENCH["name"] = name


def emit(**fields: Any) -> dict[str, Any]:
    """Print one JSON result line on stdout (and keep it for the table)."""
    line = {"bench": _BENCH["name"], **fields}
    _LINES.append(line)
    sys.stdout.write(json.dumps(line, sort_keys=False) + "\n")
    sys.stdout.flush()
    return line


def log(msg: str) -> None:
    """Progress on stderr: stdout carries only JSON lines."""
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------- packets
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pad(frame: bytes) -> bytes:
    return frame + b"\x42" * max(0, FRAME_BYTES - len(frame))


def _eth(ethertype: int, dst: bytes = DST_MAC, src: bytes = SRC_MAC) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def _ipv4(src: bytes, dst: bytes, proto: int, payload_len: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]


def ipv4_udp(src: bytes, dst: bytes, sport: int = 40000, dport: int = 9,
             dst_mac: bytes = DST_MAC, src_mac: bytes = SRC_MAC) -> bytes:
    """A 64-byte Ethernet/IPv4/UDP frame with a valid IP checksum (UDP checksum 0)."""
    payload_len = FRAME_BYTES - 14 - 20 - 8
    udp = struct.pack("!HHHH", sport, dport, 8 + payload_len, 0) + b"\x42" * payload_len
    return _eth(ETH_P_IP, dst_mac, src_mac) + _ipv4(src, dst, 17, len(udp)) + udp


def ipv4_tcp(src: bytes, dst: bytes, sport: int = 40000, dport: int = 80,
             flags: int = 0x02) -> bytes:
    """A 64-byte Ethernet/IPv4/TCP frame (SYN by default) with valid checksums."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    return _pad(_eth(ETH_P_IP) + _ipv4(src, dst, 6, len(tcp)) + tcp)


def ipv6_udp(src: bytes, dst: bytes, sport: int = 40000, dport: int = 9) -> bytes:
    """A 64-byte Ethernet/IPv6/UDP frame with a valid UDP checksum."""
    payload_len = max(0, FRAME_BYTES - 14 - 40 - 8)
    udp_len = 8 + payload_len
    body = b"\x42" * payload_len
    pseudo = src + dst + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + body
    csum = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, src, dst)
    return _eth(ETH_P_IPV6) + ip6 + udp


# ---------------------------------------------------- reference programs
@dataclass
class RefProgram:
    """A reference XDP program compiled by bcc (bench/progs/<name>.c)."""

    name: str
    bpf: Any  # bcc.BPF
    fd: int

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bpf.cleanup()


def load_ref(name: str, cflags: Sequence[str] = ()) -> RefProgram:
    """Compile and load ``bench/progs/<name>.c``; its entry is ``<name>_xdp``.

    ``-I bench/progs`` lets a program include the product's headers as
    ``"../../bpf/parsing.h"``: bcc resolves quoted includes against the
    include path, not against the source file's directory.
    """
    from bcc import BPF

    flags = [f"-I{PROGS_DIR}", "-Wno-macro-redefined", *cflags]
    bpf = BPF(src_file=str(PROGS_DIR / f"{name}.c").encode(), cflags=flags)
    fn = bpf.load_func(f"{name}_xdp".encode(), BPF.XDP)
    return RefProgram(name, bpf, int(fn.fd))


# ------------------------------------------------------------- CPU time
@dataclass(frozen=True)
class CpuTimes:
    """Busy time (user+nice+system+irq+softirq), seconds, per CPU and in total."""

    total: float
    per_cpu: tuple[float, ...]

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.total - other.total,
                        tuple(a - b for a, b in zip(self.per_cpu, other.per_cpu, strict=True)))


def proc_stat() -> CpuTimes:
    """Read ``/proc/stat`` (USER_HZ ticks: 10 ms resolution)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    per: list[float] = []
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        f = line.split()
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f[1:8])
        busy = (user + nice + system + irq + softirq) / hz
        if f[0] == "cpu":
            total = busy
        else:
            per.append(busy)
    return CpuTimes(total, tuple(per))


@dataclass
class QuietGate:
    """Wait, before a measurement, for a moment when the rest of the machine
    is idle: the bench shares a 2-core VM with other work, which inflates
    CPU-time figures and evicts caches. The total wait is capped by
    ``budget_s`` so a machine that never gets quiet still finishes."""

    budget_s: float
    waited_s: float = 0.0

    def wait(self, window_s: float = 1.0, max_busy: float = 0.1, max_wait_s: float = 15.0) -> float:
        """Returns the background load (CPUs busy) of the last window."""
        start = time.monotonic()
        while True:
            t0 = proc_stat()
            time.sleep(window_s)
            busy = (proc_stat() - t0).total / window_s
            spent = time.monotonic() - start
            if (busy <= max_busy or spent >= max_wait_s
                    or self.waited_s + spent >= self.budget_s):
                self.waited_s += max(0.0, spent - window_s)
                return busy


def ksoftirqd_seconds() -> float:
    """user+system time of every ksoftirqd/N thread: softirq work deferred
    out of the context that raised it (tick-based accounting charges it there)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("ksoftirqd/"):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / hz


# ------------------------------------------------------------- the host
def ensure_tool(binary: str, package: str) -> str:
    """Path of ``binary``, installing Debian's ``package`` when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    log(f"{binary} missing: apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    rc = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                        stdout=subprocess.DEVNULL, check=False).returncode
    if rc != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                       stdout=subprocess.DEVNULL, check=True)
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} still missing after installing {package}")
    return found


def remove_tree(path: Path) -> None:
    """Remove a bpffs directory of pins (controller.dataplane.attach.remove_pin_tree)."""
    dataplane.remove_pin_tree(path)


def owned(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a cleanup that runs only in the process that registered it,
    never in a forked child unwinding a copy of the parent's stack."""
    pid = os.getpid()

    def run(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() == pid:
            return fn(*args, **kwargs)
        return None

    return run


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C (KeyboardInterrupt), so every
    cleanup of the body runs."""
    main_pid = os.getpid()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != main_pid:
            # A forked helper (pyroute2 and controller.lab.traffic fork) inherits
            # this handler: it must die quietly, never unwind the parent's
            # cleanups (which would delete the lab under the parent).
            os._exit(128 + signum)
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def quietly(fn: Callable[[], Any]) -> None:
    """Run a cleanup step that must not mask the error being unwound: a
    failure is logged and the next step goes on."""
    try:
        fn()
    except Exception as exc:  # cleanup reports and goes on
        log(f"cleanup: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def cpu_affinity(cpus: set[int]) -> Iterator[None]:
    """Run the body pinned to ``cpus``; restore the old mask after."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# ---------------------------------------------------------------- table
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def print_table(lines: Sequence[dict[str, Any]] | None = None) -> None:
    """The closing table, on stderr: case, entries, value, ratio, target."""
    rows = [("case", "entries", "value", "unit", "ratio", "target", "ok")]
    for line in lines if lines is not None else _LINES:
        case = str(line.get("case", ""))
        entries = line.get("entries", line.get("packets", ""))
        if "ns_per_pkt" in line:
            value, unit = line["ns_per_pkt"], "ns/pkt"
        elif "percent_of_core" in line:
            value, unit = line["percent_of_core"], "% core"
        elif "cpu_ns_per_pkt" in line:
            value, unit = line["cpu_ns_per_pkt"], "cpu ns/pkt"
        elif "seconds" in line:
            value, unit = line["seconds"], "s"
        elif "bytes" in line:
            value, unit = line["bytes"] / 2**20, "MiB"
        elif "xdp_over_nft" in line:
            value, unit = line["xdp_over_nft"], "ratio"
        else:
            value, unit = "", ""
        ratio = line.get("ratio_to_floor", line.get("over_floor_ns_per_pkt", ""))
        target = line.get("target", "")
        ok = line.get("ok", "")
        rows.append((case, _fmt(entries), _fmt(value), unit, _fmt(ratio), _fmt(target),
                     "" if ok == "" else ("yes" if ok else "NO")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stderr.write("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(r, widths, strict=True))) + "\n")
    sys.stderr.flush()
