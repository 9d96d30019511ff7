"""Interfaces and XDP attachments through netlink (pyroute2).

Every call takes an optional network namespace name; pyroute2 opens the
netlink socket inside it, so nothing here changes the caller's namespace.
pyroute2 errors are converted here, once.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import (
    AttachConflictError,
    BpfUnsupportedError,
    BreakwaterError,
    InterfaceNotFoundError,
    from_os_error,
)

__all__ = [
    "Mode",
    "XdpState",
    "attach_xdp",
    "detach_xdp",
    "ipr",
    "xdp_state",
]

Mode = Literal["native", "generic"]

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
MODE_FLAGS: dict[str, int] = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED values (include/uapi/linux/if_link.h), raw or as pyroute2 names them.
ATTACHED_NAMES: dict[object, str | None] = {
    0: None, 1: "native", 2: "generic", 3: "offload", 4: "multi",
    None: None, "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi",
}


@contextlib.contextmanager
def ipr(netns: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute socket, in ``netns`` when given."""
    try:
        sock = IPRoute(netns=netns) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or errno.EINVAL
        if code == errno.ENOENT and netns:
            raise InterfaceNotFoundError(f"network namespace {netns!r} does not exist") from exc
        raise from_os_error(int(code), f"open netlink socket (netns {netns})") from exc
    try:
        yield sock
    finally:
        sock.close()


def _where(ifname: str, netns: str | None) -> str:
    return f"{ifname} (netns {netns})" if netns else ifname


def ifindex(sock: IPRoute, ifname: str, netns: str | None = None) -> int:
    found = sock.link_lookup(ifname=ifname)
    if not found:
        raise InterfaceNotFoundError(
            f"interface {_where(ifname, netns)} not found: `ip link` lists the interfaces"
        )
    return int(found[0])


@dataclass(frozen=True)
class XdpState:
    """An interface and the XDP program attached to it, if any."""

    ifname: str
    ifindex: int
    netns: str | None
    oper_state: str
    prog_id: int  # 0 when nothing is attached
    mode: str | None  # native, generic, offload, multi, or None


def xdp_state(ifname: str, netns: str | None = None) -> XdpState:
    """Read back which XDP program is attached to ``ifname``, and in which mode."""
    with ipr(netns) as sock:
        idx = ifindex(sock, ifname, netns)
        link = sock.get_links(idx)[0]
    xdp = link.get_attr("IFLA_XDP")
    attrs: dict[str, Any] = dict(xdp.get("attrs", [])) if xdp else {}
    mode = ATTACHED_NAMES.get(attrs.get("IFLA_XDP_ATTACHED"), "unknown")
    prog_id = int(
        attrs.get("IFLA_XDP_PROG_ID")
        or attrs.get("IFLA_XDP_DRV_PROG_ID")
        or attrs.get("IFLA_XDP_SKB_PROG_ID")
        or 0
    )
    return XdpState(ifname, idx, netns, str(link.get_attr("IFLA_OPERSTATE") or "UNKNOWN"), prog_id, mode)


def attach_xdp(
    ifname: str,
    prog_fd: int,
    mode: Mode,
    netns: str | None = None,
    replace_fd: int | None = None,
) -> None:
    """Attach ``prog_fd`` in ``mode``.

    With ``replace_fd`` the kernel swaps programs atomically, and only if
    ``replace_fd`` is still the one attached (XDP_FLAGS_REPLACE): no packet
    sees the interface without a program. Without it, the attach fails if
    any program is attached (XDP_FLAGS_UPDATE_IF_NOEXIST).
    """
    flags = MODE_FLAGS[mode]
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", prog_fd)]
    if replace_fd is not None:
        flags |= XDP_FLAGS_REPLACE
        attrs.append(("IFLA_XDP_EXPECTED_FD", replace_fd))
    else:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    attrs.append(("IFLA_XDP_FLAGS", flags))
    where = _where(ifname, netns)
    with ipr(netns) as sock:
        idx = ifindex(sock, ifname, netns)
        try:
            sock.link("set", index=idx, xdp={"attrs": attrs})
        except NetlinkError as exc:
            raise _attach_error(exc, where, mode) from exc


def detach_xdp(ifname: str, mode: str, netns: str | None = None) -> None:
    """Remove the XDP program attached in ``mode`` (no-op if none)."""
    flags = MODE_FLAGS.get(mode, 0)
    with ipr(netns) as sock:
        idx = ifindex(sock, ifname, netns)
        try:
            sock.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as exc:
            raise _attach_error(exc, _where(ifname, netns), mode) from exc


def _attach_error(exc: NetlinkError, where: str, mode: str) -> BreakwaterError:
    code = int(exc.code)
    if code == errno.EBUSY or code == errno.EEXIST:
        return AttachConflictError(
            f"{where}: another XDP program is attached (or one in another mode); "
            "`breakwater dataplane status` shows it"
        )
    if code == errno.EOPNOTSUPP and mode == "native":
        return BpfUnsupportedError(f"{where}: the driver has no native XDP; use --mode generic or auto")
    if code == errno.ENODEV:
        return InterfaceNotFoundError(f"{where}: interface disappeared")
    return from_os_error(code, f"attach XDP to {where}")
