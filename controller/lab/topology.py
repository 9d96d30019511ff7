"""The demo's lab: its namespaces, links and addresses, and :func:`build`.

::

    client      198.18.0.10   --+
    botnet      198.18.1.1-12 --+  bridge       bw0 198.18.0.1/22      bw1 198.18.2.1/24
    reflectors  (raw frames)  --+-- ix0 ------- [edge: XDP + agent, forwarding] ------- [origin]
    spoofer     (raw frames)  --+  (internet)                               198.18.2.10, UDP :8053

Everything is in 198.18.0.0/15 and no namespace has a route out of the lab.
The edge forwards to the origin; its ingress veth (``EDGE_IN``) carries the
XDP program and the agent. The origin's prefix (``ORIGIN_NET``) is the
protected one, its service (``SERVICE``) the victim of every wave and the
legitimate client's destination. :class:`DemoError` is what every part of
the demo raises when it cannot go on.
"""

from __future__ import annotations

from typing import Final

from ..errors import BreakwaterError
from .netns import Lab

__all__ = [
    "BOTNET",
    "CLIENT",
    "EDGE_IN",
    "HOST_IF",
    "NAMESPACES",
    "ORIGIN_NET",
    "SERVICE",
    "SERVICE_PORT",
    "TOPOLOGY",
    "DemoError",
    "build",
]

EDGE_IN: Final = "bw0"  # the edge's ingress veth: XDP and the agent
EDGE_OUT: Final = "bw1"  # towards the origin
HOST_IF: Final = "eth0"  # every other namespace's interface
BRIDGE: Final = "ix0"  # the "internet": one bridge in its own namespace
LAN: Final = "198.18.0.0/22"
LAN_PLEN: Final = 22
EDGE_LAN: Final = "198.18.0.1"
CLIENT: Final = "198.18.0.10"
BOTNET_HOST: Final = "198.18.0.20"
BOTNET: Final = tuple(f"198.18.1.{i}" for i in range(1, 13))  # 12 bots in one /24: aggregated
ORIGIN_NET: Final = "198.18.2.0/24"  # the protected prefix
EDGE_ORIGIN: Final = "198.18.2.1"
SERVICE: Final = "198.18.2.10"  # the victim: every flood and the client aim at it
SERVICE_PORT: Final = 8053
NAMESPACES: Final = ("internet", "client", "botnet", "reflectors", "spoofer", "edge", "origin")

TOPOLOGY: Final = f"""\
  client      {CLIENT}   --+
  botnet      198.18.1.1-12 --+  bridge       {EDGE_IN} {EDGE_LAN}/{LAN_PLEN}      {EDGE_OUT} {EDGE_ORIGIN}/24
  reflectors  (raw frames)  --+-- {BRIDGE} ------- [edge: XDP + agent, forwarding] ------- [origin]
  spoofer     (raw frames)  --+  (internet)                               {SERVICE}, UDP :{SERVICE_PORT}"""


class DemoError(BreakwaterError):
    """The demo could not run: the agent died, a generator failed, ..."""


def build(lab: Lab, ns: dict[str, str]) -> str:
    """Make the lab's namespaces (into ``ns``, by role, as they are made),
    links, addresses, routes and neighbours; return the edge's ingress MAC."""
    for name in NAMESPACES:
        ns[name] = lab.namespace(name)
    ix = ns["internet"]
    lab.veth((ns["edge"], EDGE_IN, f"{EDGE_LAN}/{LAN_PLEN}"), (ix, "ix-edge", None))
    lab.veth((ns["client"], HOST_IF, f"{CLIENT}/{LAN_PLEN}"), (ix, "ix-client", None))
    lab.veth((ns["botnet"], HOST_IF, f"{BOTNET_HOST}/{LAN_PLEN}"), (ix, "ix-botnet", None))
    for addr in BOTNET:
        lab.add_address(ns["botnet"], HOST_IF, f"{addr}/{LAN_PLEN}")
    lab.veth((ns["reflectors"], HOST_IF, None), (ix, "ix-refl", None))
    lab.veth((ns["spoofer"], HOST_IF, None), (ix, "ix-spoof", None))
    lab.bridge(ix, BRIDGE, ["ix-edge", "ix-client", "ix-botnet", "ix-refl", "ix-spoof"])
    edge_mac = lab.mac(ns["edge"], EDGE_IN)
    lab.add_fdb(ix, "ix-edge", edge_mac)  # frames to the edge never go out of the other ports
    lab.veth((ns["edge"], EDGE_OUT, f"{EDGE_ORIGIN}/24"), (ns["origin"], HOST_IF, f"{SERVICE}/24"))
    lab.sysctl(ns["edge"], "net.ipv4.ip_forward", 1)
    # Spoofed and reflected sources have no route back: without this a
    # reverse-path check, not Breakwater, would drop them (a transit edge has none).
    for where, ifname in ((ns["edge"], EDGE_IN), (ns["origin"], HOST_IF)):
        for conf in ("all", "default", ifname):
            lab.sysctl(where, f"net.ipv4.conf.{conf}.rp_filter", 0)
    for who in ("client", "botnet"):
        lab.add_route(ns[who], ORIGIN_NET, EDGE_LAN)
        lab.add_neighbour(ns[who], HOST_IF, EDGE_LAN, edge_mac)
    lab.add_route(ns["origin"], LAN, EDGE_ORIGIN)
    lab.add_neighbour(ns["edge"], EDGE_OUT, SERVICE, lab.mac(ns["origin"], HOST_IF))
    lab.add_neighbour(ns["origin"], HOST_IF, EDGE_ORIGIN, lab.mac(ns["edge"], EDGE_OUT))
    return edge_mac
