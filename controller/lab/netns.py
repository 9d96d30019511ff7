"""Network namespaces and veth pairs for the lab, tests, benchmarks and demo.

Everything a :class:`Lab` creates is removed by :meth:`Lab.close` (also on
error, as a context manager). Lab namespaces get only connected routes, so
nothing in them can reach beyond the veth links the lab made. Addresses come
from 198.18.0.0/15, the benchmarking range (and 2001:db8::/32 for IPv6).

IPv6 addresses are added without duplicate address detection (no address in
a lab is ever duplicated), so they are usable at once; :meth:`Lab.add_neighbour`
pins a neighbour entry so that no ARP or ND runs while traffic is counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NUD_NOARP, NUD_PERMANENT

from ..errors import BreakwaterError, from_os_error

__all__ = [
    "Lab",
    "Veth",
    "in_netns",
    "sigterm_as_interrupt",
]

LOGGER = logging.getLogger("breakwater.netns")


@dataclass(frozen=True)
class Veth:
    """One end of a veth pair."""

    netns: str
    ifname: str
    address: str | None  # CIDR, e.g. 198.18.0.1/24


@dataclass
class Lab:
    """Creates namespaces and veth pairs; removes all of them on close."""

    tag: str = "lab"
    namespaces: list[str] = field(default_factory=list)
    prefix: str = ""

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = f"bw{self.tag[:6]}{secrets.token_hex(2)}"

    def namespace(self, name: str) -> str:
        """Create namespace ``<prefix>-<name>`` with loopback up; returns its name."""
        full = f"{self.prefix}-{name}"
        try:
            netns.create(full)
        except OSError as exc:
            raise from_os_error(exc.errno or 1, f"create network namespace {full}") from exc
        self.namespaces.append(full)
        with IPRoute(netns=full) as ipr:
            lo = ipr.link_lookup(ifname="lo")
            if lo:
                ipr.link("set", index=lo[0], state="up")
        return full

    def veth(
        self,
        a: tuple[str, str, str | None],
        b: tuple[str, str, str | None],
        mtu: int = 1500,
    ) -> tuple[Veth, Veth]:
        """A veth pair between (netns, ifname, cidr) ``a`` and ``b``, both up."""
        (ns_a, if_a, addr_a), (ns_b, if_b, addr_b) = a, b
        tmp = f"bwt{secrets.token_hex(4)}"
        try:
            with IPRoute(netns=ns_a) as ipr:
                ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": tmp})
                idx = ipr.link_lookup(ifname=tmp)[0]
                ipr.link("set", index=idx, net_ns_fd=ns_b)
            with IPRoute(netns=ns_b) as ipr:
                idx = ipr.link_lookup(ifname=tmp)[0]
                ipr.link("set", index=idx, ifname=if_b)
        except NetlinkError as exc:
            raise from_os_error(int(exc.code), f"create veth {if_a}/{if_b}") from exc
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            self.configure(ns, ifname, addr, mtu)
        return Veth(ns_a, if_a, addr_a), Veth(ns_b, if_b, addr_b)

    def configure(self, ns: str, ifname: str, addr: str | None, mtu: int = 1500) -> None:
        with IPRoute(netns=ns) as ipr:
            idx = _index(ipr, ns, ifname)
            ipr.link("set", index=idx, mtu=mtu)
            if addr:
                _add_addr(ipr, idx, addr)
            ipr.link("set", index=idx, state="up")

    def add_address(self, ns: str, ifname: str, addr: str) -> None:
        """Another address on an interface (e.g. one per simulated source)."""
        with IPRoute(netns=ns) as ipr:
            _add_addr(ipr, _index(ipr, ns, ifname), addr)

    def mac(self, ns: str, ifname: str) -> str:
        """The interface's link-layer address, e.g. ``ca:b3:34:a4:72:00``."""
        with IPRoute(netns=ns) as ipr:
            link = ipr.get_links(_index(ipr, ns, ifname))[0]
        return str(link.get_attr("IFLA_ADDRESS"))

    def add_neighbour(self, ns: str, ifname: str, address: str, lladdr: str) -> None:
        """A permanent neighbour entry (IPv4 or IPv6): traffic to ``address``
        then needs no ARP or ND, and nothing but the caller's packets crosses
        the link."""
        with IPRoute(netns=ns) as ipr:
            idx = _index(ipr, ns, ifname)
            try:
                ipr.neigh("add", dst=address, lladdr=lladdr, ifindex=idx, state=NUD_PERMANENT)
            except NetlinkError as exc:
                raise from_os_error(int(exc.code), f"add neighbour {address} on {ifname}") from exc

    def add_route(self, ns: str, dst: str, gateway: str) -> None:
        """A route inside the lab (never a default route)."""
        if dst in ("0.0.0.0/0", "default", "::/0"):
            raise BreakwaterError("lab namespaces get no default route")
        with IPRoute(netns=ns) as ipr:
            ipr.route("add", dst=dst, gateway=gateway)

    def bridge(self, ns: str, name: str, ports: Sequence[str]) -> None:
        """A bridge ``name`` in ``ns`` (no STP: ports forward at once) with
        the existing interfaces ``ports`` as its ports, up: one link for
        several namespaces' veths."""
        try:
            with IPRoute(netns=ns) as ipr:
                ipr.link("add", ifname=name, kind="bridge")
                br = _index(ipr, ns, name)
                for port in ports:
                    ipr.link("set", index=_index(ipr, ns, port), master=br)
                ipr.link("set", index=br, state="up")
        except NetlinkError as exc:
            raise from_os_error(int(exc.code), f"create bridge {name} in {ns}") from exc

    def add_fdb(self, ns: str, port: str, lladdr: str) -> None:
        """A static forwarding entry on a bridge port: frames to ``lladdr``
        leave through ``port`` only, from the first one (an unknown unicast
        address would be flooded to every port until learned). It replaces
        an entry the bridge may have learned already. NUD_NOARP is static;
        NUD_PERMANENT would mean the bridge's own address."""
        with IPRoute(netns=ns) as ipr:
            idx = _index(ipr, ns, port)
            try:
                ipr.fdb("replace", ifindex=idx, lladdr=lladdr, state=NUD_NOARP, flags=NTF_MASTER)
            except NetlinkError as exc:
                raise from_os_error(int(exc.code), f"add fdb entry {lladdr} on {port}") from exc

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """Set ``net.*`` sysctl ``key`` (``net.ipv4.ip_forward``) inside ``ns``
        only: /proc/sys/net is the opening thread's namespace."""
        if not key.startswith("net."):
            raise BreakwaterError(f"{key}: a lab sets only per-namespace net.* sysctls")
        path = "/proc/sys/" + key.replace(".", "/")
        with in_netns(ns):
            try:
                with open(path, "w") as f:
                    f.write(f"{value}\n")
            except OSError as exc:
                raise from_os_error(exc.errno or 1, f"sysctl {key}={value} in {ns}") from exc

    def close(self) -> None:
        """Remove every namespace (and so every veth in it) this lab made."""
        for ns in reversed(self.namespaces):
            try:
                netns.remove(ns)
            except OSError as exc:
                LOGGER.warning("could not remove namespace %s: %s", ns, exc)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _index(ipr: IPRoute, ns: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise BreakwaterError(f"interface {ifname} not found in namespace {ns}")
    return int(found[0])


def _add_addr(ipr: IPRoute, idx: int, addr: str) -> None:
    """Add ``addr`` (CIDR); IPv6 without DAD, so it is not left tentative."""
    ip, _, plen = addr.partition("/")
    v6 = ":" in ip
    prefixlen = int(plen) if plen else (128 if v6 else 32)
    flags = IFA_F_NODAD if v6 else 0
    try:
        ipr.addr("add", index=idx, address=ip, prefixlen=prefixlen, flags=flags)
    except NetlinkError as exc:
        raise from_os_error(int(exc.code), f"add address {addr}") from exc


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``name``."""
    if not name:
        yield
        return
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM runs the same cleanup as Ctrl-C, in this process only: a
    forked helper (pyroute2 forks to create namespaces and stops its child
    with SIGTERM) must die of it, not unwind into the lab's cleanup."""
    owner = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
