"""One interface's XDP program: attach, adopt, upgrade, detach, status.

The program's maps are pinned under ``<pin root>/<interface>/`` (default
``/sys/fs/bpf/breakwater/``) together with the program itself (``prog``).
Restart safety rests on three facts:

* an XDP attachment made through netlink outlives the process that made it,
  and so do pinned maps: killing the loader changes nothing in the kernel;
* on start, :func:`attach` finds its own program still attached and adopts
  it without touching it (same build) or swaps in the new build atomically
  with ``XDP_FLAGS_REPLACE``, reusing the pinned maps, so policy and
  counters carry over and no packet ever meets an interface without policy;
* a pinned map whose layout differs from the build is never reused blindly:
  it is an error, or with ``replace_maps`` a logged replacement whose
  allow/deny entries are copied into the new map before the swap.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import (
    AttachConflictError,
    BpfFsError,
    BreakwaterError,
    NotAttachedError,
    NotRootError,
    PinnedMapMismatchError,
)
from . import abi, netlink
from . import build as program
from . import libbpf as lb
from .maps import MAP_SPECS, MapSizes, MapSpec, estimate_bytes, fdinfo_memlock
from .pinned import MapSet, layout_mismatches

__all__ = [
    "DEFAULT_PIN_ROOT",
    "AttachMode",
    "AttachResult",
    "InterfaceStatus",
    "MapStatus",
    "attach",
    "attached_interfaces",
    "detach",
    "ensure_bpffs",
    "memory_bytes",
    "open_maps",
    "pin_dir_for",
    "read_config",
    "remove_pin_tree",
    "require_root",
    "set_flags",
    "status",
    "write_config",
]

LOGGER = logging.getLogger("breakwater.dataplane")

DEFAULT_PIN_ROOT = Path(os.environ.get("BREAKWATER_PIN_ROOT", "/sys/fs/bpf/breakwater"))
PROG_PIN = "prog"
AttachMode = Literal["native", "generic", "auto"]


def pin_dir_for(ifname: str, pin_root: Path = DEFAULT_PIN_ROOT) -> Path:
    return pin_root / ifname


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("this needs root (CAP_BPF and CAP_NET_ADMIN): run as root (sudo)")


def ensure_bpffs(pin_root: Path) -> None:
    """The pin root must live on a bpf filesystem."""
    target = str(pin_root.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "bpf":
            mnt = parts[1]
            if target == mnt or target.startswith(mnt.rstrip("/") + "/"):
                return
    raise BpfFsError(
        f"{pin_root} is not on a bpf filesystem: run `mount -t bpf bpf /sys/fs/bpf` "
        "(`make setup` does this)"
    )


def _pinned_prog_id(pin_dir: Path) -> int:
    path = pin_dir / PROG_PIN
    if not path.exists():
        return 0
    fd = lb.obj_get(path)
    try:
        return lb.prog_info(fd).id
    finally:
        lb.close(fd)


def _is_ours(prog_id: int, pin_dir: Path) -> bool:
    """Whether program ``prog_id`` is Breakwater's for this pin directory: it
    uses the pinned config map. (The ``prog`` pin alone is not proof: a
    loader killed between an atomic swap and re-pinning leaves it stale.)"""
    if not prog_id:
        return False
    if prog_id == _pinned_prog_id(pin_dir):
        return True
    config = pin_dir / "config"
    if not config.exists():
        return False
    mfd = lb.obj_get(config)
    try:
        config_id = lb.map_info(mfd).id
    finally:
        lb.close(mfd)
    try:
        pfd = lb.prog_fd_by_id(prog_id)
    except BreakwaterError:
        return False
    try:
        return config_id in lb.prog_map_ids(pfd)
    finally:
        lb.close(pfd)


def _repin(pin_dir: Path, prog_id: int) -> None:
    """Point the ``prog`` pin at ``prog_id`` (after a swap, or to heal a stale pin)."""
    if _pinned_prog_id(pin_dir) == prog_id:
        return
    fd = lb.prog_fd_by_id(prog_id)
    try:
        path = pin_dir / PROG_PIN
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lb.obj_pin(fd, path)
    finally:
        lb.close(fd)


def remove_pin_tree(root: Path) -> None:
    """Remove ``root`` and everything pinned under it. bpffs has unlink and
    rmdir and nothing else, so the tree goes deepest first. Entries already
    gone are fine; a directory that will not go (something was pinned into
    it meanwhile) raises OSError."""
    if not root.exists():
        return
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                (Path(dirpath) / name).unlink()
        for name in dirnames:
            with contextlib.suppress(FileNotFoundError):
                (Path(dirpath) / name).rmdir()
    with contextlib.suppress(FileNotFoundError):
        root.rmdir()


def open_maps(ifname: str, pin_root: Path = DEFAULT_PIN_ROOT) -> MapSet:
    """The pinned maps of ``ifname``'s program (no compile, no netlink)."""
    pin_dir = pin_dir_for(ifname, pin_root)
    if not (pin_dir / "config").exists():
        raise NotAttachedError(
            f"no Breakwater maps for {ifname} under {pin_root}: "
            f"`breakwater dataplane attach {ifname}` first"
        )
    return MapSet.open(pin_dir)


def attached_interfaces(pin_root: Path = DEFAULT_PIN_ROOT) -> list[str]:
    """Interfaces with a pinned Breakwater program under ``pin_root``."""
    if not pin_root.is_dir():
        return []
    return sorted(p.name for p in pin_root.iterdir() if (p / PROG_PIN).exists())


@dataclass(frozen=True)
class AttachResult:
    """What :func:`attach` did."""

    ifname: str
    netns: str | None
    action: Literal["attached", "adopted", "upgraded"]
    mode: str
    prog_id: int
    build_id: int
    memory_bytes: int
    replaced_maps: tuple[str, ...] = ()
    fallback_reason: str = ""


@dataclass
class _Replacement:
    """A pinned map set aside for a new one, with the entries to copy over."""

    spec: MapSpec
    keys: bytes = b""
    values: bytes = b""
    count: int = 0
    old_fd: int = -1  # the replaced map, held while unpinned


def _plan_pins(pin_dir: Path, sizes: MapSizes, replace_maps: bool) -> list[_Replacement]:
    """Check every existing pin against the build; return what to replace."""
    problems: list[str] = []
    plan: list[_Replacement] = []
    for s in MAP_SPECS:
        path = pin_dir / s.name
        if not path.exists():
            continue
        fd = lb.obj_get(path)
        try:
            info = lb.map_info(fd)
            wrong = layout_mismatches(s, info, sizes)
            if not wrong:
                continue
            problems.append(f"{s.name}: {', '.join(wrong)}")
            rep = _Replacement(s)
            same_layout = info.key_size == s.key_size and info.value_size == s.value_size
            if s.role == "policy" and same_layout and replace_maps:
                rep.keys, rep.values, rep.count = _read_entries(fd, info, s)
            plan.append(rep)
        finally:
            lb.close(fd)
    if problems and not replace_maps:
        raise PinnedMapMismatchError(
            f"pinned maps in {pin_dir} do not match this build ({'; '.join(problems)}): "
            "pass --replace-maps to replace them (allow/deny entries are copied; "
            "counters restart), or use the sizes they were made with"
        )
    for rep in plan:
        LOGGER.warning(
            "replacing pinned map %s (%s)", rep.spec.name,
            f"copying {rep.count} entries" if rep.count else "contents not carried over",
        )
    return plan


def _read_entries(fd: int, info: lb.MapInfo, s: MapSpec) -> tuple[bytes, bytes, int]:
    keys, values = [], []
    key: bytes | None = None
    while True:
        key = lb.map_get_next_key(fd, key, s.key_size)
        if key is None:
            break
        value = lb.map_lookup_elem(fd, key, s.value_size)
        if value is not None:
            keys.append(key)
            values.append(value)
    return b"".join(keys), b"".join(values), len(keys)


def _set_aside(pin_dir: Path, plan: list[_Replacement]) -> None:
    """Unpin maps to be replaced, holding an fd so they can be pinned back.
    (bpffs has no rename.) The attached program keeps using them meanwhile."""
    for rep in plan:
        path = pin_dir / rep.spec.name
        rep.old_fd = lb.obj_get(path)
        path.unlink()


def _restore(pin_dir: Path, plan: list[_Replacement]) -> None:
    """Undo :func:`_set_aside` after a failed build or attach."""
    for rep in plan:
        if rep.old_fd < 0:
            continue
        path = pin_dir / rep.spec.name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lb.obj_pin(rep.old_fd, path)
        lb.close(rep.old_fd)
        rep.old_fd = -1


def _drop_old(plan: list[_Replacement]) -> None:
    for rep in plan:
        if rep.old_fd >= 0:
            lb.close(rep.old_fd)
            rep.old_fd = -1


def _copy_entries(maps: MapSet, plan: list[_Replacement]) -> None:
    for rep in plan:
        if not rep.count:
            continue
        m = maps[rep.spec.name]
        ksz, vsz = rep.spec.key_size, rep.spec.value_size
        m.insert_new(
            [rep.keys[i * ksz : (i + 1) * ksz] for i in range(rep.count)],
            [rep.values[i * vsz : (i + 1) * vsz] for i in range(rep.count)],
        )


def _carried_config(pin_dir: Path) -> tuple[int, int] | None:
    """(flags, gen) of the pinned config map, whatever its layout version,
    so a replaced config map keeps the generation every other map's
    entries are relative to. None when there is no config pin."""
    path = pin_dir / "config"
    if not path.exists():
        return None
    fd = lb.obj_get(path)
    try:
        info = lb.map_info(fd)
        raw = lb.map_lookup_elem(fd, bytes(4), info.value_size) or bytes(info.value_size)
    finally:
        lb.close(fd)
    flags = int.from_bytes(raw[0:4], "little")
    gen = int.from_bytes(raw[16:20], "little") if len(raw) >= 20 else 0
    return flags, gen


def read_config(maps: MapSet) -> abi.Config:
    return maps.config()


def write_config(maps: MapSet, cfg: abi.Config) -> None:
    maps.write_config(cfg)


def memory_bytes(maps: MapSet) -> int:
    """Kernel-accounted memory of the maps (fdinfo memlock), or the estimate."""
    total = 0
    for m in maps.maps.values():
        mem = fdinfo_memlock(m.fd)
        total += mem if mem is not None else estimate_bytes(m.spec, m.max_entries)
    return total


def attach(
    ifname: str,
    mode: AttachMode = "auto",
    sizes: MapSizes | None = None,
    *,
    pin_root: Path = DEFAULT_PIN_ROOT,
    netns: str | None = None,
    replace_maps: bool = False,
    force: bool = False,
    reload: bool = False,
) -> AttachResult:
    """Attach Breakwater to ``ifname``, or adopt/upgrade the program already there.

    * Breakwater already attached with this very build: adopted, untouched.
    * Breakwater attached with another build (or ``reload``): the new build is
      compiled against the same pinned maps and swapped in atomically.
    * Nothing attached: compiled, then attached in ``mode`` (``auto`` tries
      native and falls back to generic, logging why).
    * A foreign program attached: refused unless ``force``.
    """
    require_root()
    sizes = sizes or MapSizes()
    ensure_bpffs(pin_root)
    state = netlink.xdp_state(ifname, netns)
    pin_dir = pin_dir_for(ifname, pin_root)
    ours = state.prog_id if _is_ours(state.prog_id, pin_dir) else 0
    where = f"{ifname} (netns {netns})" if netns else ifname

    if state.prog_id and state.prog_id != ours and not force:
        raise AttachConflictError(
            f"{where}: a program that is not Breakwater's (id {state.prog_id}, {state.mode}) is "
            "attached; pass --force to replace it"
        )
    if state.prog_id and mode != "auto" and state.mode != mode:
        raise AttachConflictError(
            f"{where}: Breakwater runs in {state.mode} mode; switching to {mode} means detaching "
            f"first, which leaves the interface unprotected for a moment: "
            f"`breakwater dataplane detach {ifname}` then attach"
        )

    build = program.Build.make(sizes, pin_dir)
    if state.prog_id and state.prog_id == ours and not reload:
        try:
            with MapSet.open(pin_dir, sizes) as maps:
                if read_config(maps).build_id == build.build_id:
                    _repin(pin_dir, ours)
                    LOGGER.info("adopted program %d on %s (%s)", ours, where, state.mode)
                    return AttachResult(ifname, netns, "adopted", str(state.mode), ours,
                                        build.build_id, memory_bytes(maps))
        except PinnedMapMismatchError:
            pass  # the upgrade path below reports or replaces the mismatch

    plan = _plan_pins(pin_dir, sizes, replace_maps)
    carried = _carried_config(pin_dir) if any(r.spec.name == "config" for r in plan) else None
    pin_dir.mkdir(parents=True, exist_ok=True)
    _set_aside(pin_dir, plan)
    try:
        loaded = program.load(build)
    except BaseException:
        _restore(pin_dir, plan)
        raise
    try:
        with MapSet.open(pin_dir, sizes) as maps, maps.locked():
            _copy_entries(maps, plan)
            if carried is not None:
                cfg = read_config(maps)
                cfg.flags, cfg.gen = carried
                write_config(maps, cfg)
            mem = memory_bytes(maps)
        action: Literal["attached", "upgraded"]
        fallback = ""
        if state.prog_id:
            old_fd = lb.prog_fd_by_id(state.prog_id)
            try:
                same: netlink.Mode = "generic" if state.mode == "generic" else "native"
                netlink.attach_xdp(ifname, loaded.fd, same, netns, replace_fd=old_fd)
                used: str = same
            finally:
                lb.close(old_fd)
            action = "upgraded"
        else:
            used, fallback = _attach_new(ifname, loaded.fd, mode, netns)
            action = "attached"
    except BaseException:
        loaded.close()
        _restore(pin_dir, plan)
        raise
    _drop_old(plan)
    prog_id = lb.prog_info(loaded.fd).id
    _repin(pin_dir, prog_id)
    # Only now, with the new program attached, does config name its build: a
    # failure or kill before this leaves the old build id, so the next
    # attach upgrades again instead of adopting the wrong program.
    with MapSet.open(pin_dir, sizes) as maps, maps.locked():
        cfg = read_config(maps)
        cfg.abi = abi.ABI_VERSION
        cfg.build_id = build.build_id
        write_config(maps, cfg)
    loaded.close()
    LOGGER.info("%s program %d on %s (%s mode), maps %.1f MiB", action, prog_id, where, used,
                mem / 2**20)
    return AttachResult(ifname, netns, action, used, prog_id, build.build_id, mem,
                        tuple(r.spec.name for r in plan), fallback)


def _attach_new(ifname: str, fd: int, mode: AttachMode, netns: str | None) -> tuple[str, str]:
    if mode != "auto":
        netlink.attach_xdp(ifname, fd, mode, netns)
        return mode, ""
    try:
        netlink.attach_xdp(ifname, fd, "native", netns)
        return "native", ""
    except AttachConflictError:
        raise
    except BreakwaterError as exc:
        reason = str(exc)
        LOGGER.warning("%s: native XDP failed (%s); falling back to generic mode", ifname, reason)
        netlink.attach_xdp(ifname, fd, "generic", netns)
        return "generic", reason


def detach(
    ifname: str,
    *,
    pin_root: Path = DEFAULT_PIN_ROOT,
    netns: str | None = None,
    purge: bool = False,
    force: bool = False,
) -> bool:
    """Detach Breakwater from ``ifname``. Pinned maps (policy, counters) stay for
    the next attach unless ``purge``. Returns whether a program was detached."""
    require_root()
    pin_dir = pin_dir_for(ifname, pin_root)
    detached = False
    try:
        state = netlink.xdp_state(ifname, netns)
    except BreakwaterError:
        if not purge:
            raise
        state = None  # the interface is gone: only the pins are left to clean
    if state and state.prog_id:
        if not _is_ours(state.prog_id, pin_dir) and not force:
            raise AttachConflictError(
                f"{ifname}: the attached program (id {state.prog_id}) is not Breakwater's; "
                "pass --force to detach it anyway"
            )
        netlink.detach_xdp(ifname, str(state.mode), netns)
        detached = True
    with contextlib.suppress(FileNotFoundError):
        (pin_dir / PROG_PIN).unlink()
    if purge and pin_dir.is_dir():
        for p in pin_dir.iterdir():
            p.unlink()
        pin_dir.rmdir()
    return detached


@dataclass(frozen=True)
class MapStatus:
    name: str
    type: str
    max_entries: int
    entries: int
    memory_bytes: int
    purpose: str


@dataclass(frozen=True)
class InterfaceStatus:
    ifname: str
    netns: str | None
    attached: bool
    ours: bool
    mode: str | None
    prog_id: int
    oper_state: str
    monitor: bool = False
    pass_malformed: bool = False
    build_id: int = 0
    maps: list[MapStatus] = field(default_factory=list)

    @property
    def memory_bytes(self) -> int:
        return sum(m.memory_bytes for m in self.maps)


def status(
    ifname: str, *, pin_root: Path = DEFAULT_PIN_ROOT, netns: str | None = None,
    count_entries: bool = True,
) -> InterfaceStatus:
    """Interface, mode, program id, and each map's size, fill and memory."""
    state = netlink.xdp_state(ifname, netns)
    pin_dir = pin_dir_for(ifname, pin_root)
    ours = _is_ours(state.prog_id, pin_dir) if pin_dir.exists() else False
    maps_status: list[MapStatus] = []
    cfg = abi.Config()
    if (pin_dir / "config").exists():
        with MapSet.open(pin_dir) as maps:
            cfg = read_config(maps)
            for m in maps.maps.values():
                entries = m.count() if count_entries else -1
                mem = fdinfo_memlock(m.fd)
                if mem is None:
                    mem = estimate_bytes(m.spec, m.max_entries)
                maps_status.append(MapStatus(m.name, m.spec.type_name, m.max_entries, entries, mem,
                                             m.spec.purpose))
    return InterfaceStatus(
        ifname, netns, bool(state.prog_id), ours, state.mode,
        state.prog_id, state.oper_state, bool(cfg.flags & abi.CFG_MONITOR),
        bool(cfg.flags & abi.CFG_PASS_MALFORMED), cfg.build_id, maps_status,
    )


def set_flags(maps: MapSet, *, monitor: bool | None = None, pass_malformed: bool | None = None) -> abi.Config:
    """Switch monitor mode / malformed policy at run time (no reload). Takes
    the pin directory's lock: the same word holds the trie bits."""
    with maps.locked():
        cfg = read_config(maps)
        for flag, on in ((abi.CFG_MONITOR, monitor), (abi.CFG_PASS_MALFORMED, pass_malformed)):
            if on is True:
                cfg.flags |= flag
            elif on is False:
                cfg.flags &= ~flag
        write_config(maps, cfg)
    return cfg

