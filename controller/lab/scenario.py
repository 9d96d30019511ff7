"""Scenario files (``scenarios/*.toml``): the lab's topology, its legitimate
users and its attack waves, read and checked (:func:`load`, :func:`parse`).

A scenario says::

    [scenario]   name, description, duration (seconds; every wave ends by then)
    [topology]   edges (1, 2 or 4), protected (the /N behind them, split evenly
                 between the edges), origins (addresses in it, each running an
                 HTTP and a UDP service), http_port, udp_port,
                 botnets.<name> = { pool, real }, proxies = { pool, count },
                 reflectors = { pool }, spoofed = { pool }
    [legit]      clients, http_rate (fresh TCP connections/s), udp_rate
                 (exchanges/s), timeout (seconds: a success answers within it)
    [agent]      interval, detect, mitigate: the agents' tables (lab-sized
                 thresholds), checked as the agent checks them; challenge =
                 { enabled, syn_pps, ack_pps, hold, verified_ttl }: the SYN
                 challenge of the origins' HTTP port on the protected prefix
                 (on unless enabled = false; the agent's defaults otherwise)
    [fleet]      the controller's cluster-wide detection (its ``[fleet]``
                 table, lab-sized), checked as the controller checks it
    [[waves]]    name, vector, botnet, rate, sources, spoof, target, port,
                 start, duration, pulse = { on, off }, reflect, sender
                 (``socket``, or ``trafgen`` for higher rates)

Vectors (:data:`VECTORS`): ``syn``, ``ack``, ``udp``, ``icmp``, ``gre``,
``fragment``, ``reflection`` (UDP from a service's port, :data:`REFLECT_PORTS`,
sent from the reflectors' pool) and ``http`` (real TCP connections and
requests from proxy addresses). Sources are ``random`` (spoofed, drawn from
the spoofed pool), ``pool`` (spoofed, from the botnet's pool but not
configured anywhere) or ``real`` (addresses configured in the botnet's or the
proxies' namespace: answers reach them). A target that is a prefix (the
protected /24) is carpet bombing: every packet to the next address of it.

Every address is inside 198.18.0.0/15 and the pools, the lab's LAN
(``LAN``) and the protected prefix do not overlap. Every error is a
:class:`~controller.errors.ConfigError` naming the file and the field path
(``x-spaces.toml: waves[3].rate: ...``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..config import checked, read_toml
from ..dataplane import challenge as chal
from ..detection.config import DetectConfig, MitigateConfig
from ..errors import ConfigError, FieldError
from ..fleet.detector import FleetConfig
from ..validate import at, check_choice, check_int, check_keys, check_number, check_str, check_table

__all__ = [
    "CONTROL",
    "INFRA",
    "LAB_NET",
    "LAN",
    "MAX_WAVE_PACKETS",
    "REFLECT_PORTS",
    "SENDERS",
    "SPOOFS",
    "VECTORS",
    "Botnet",
    "Legit",
    "Pool",
    "Pulse",
    "Scenario",
    "Topology",
    "Wave",
    "load",
    "parse",
    "vectors_of",
]

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address

LAB_NET: Final = ipaddress.IPv4Network("198.18.0.0/15")
LAN: Final = ipaddress.IPv4Network("198.18.0.0/24")
"""The lab's "internet" link: edges' ingress (.1-.4), the role namespaces
(.5-.9), the legitimate clients (.10 on)."""
FIRST_CLIENT: Final = 10
INFRA: Final = ipaddress.IPv4Network("198.18.3.0/24")
"""The edge-to-origin links (a /30 each)."""
CONTROL: Final = ipaddress.IPv4Network("198.19.255.0/24")
"""The controller's links to the edges (a /30 each)."""
VECTORS: Final = ("syn", "ack", "udp", "icmp", "gre", "fragment", "reflection", "http")
SPOOFS: Final = ("random", "pool", "real")
SENDERS: Final = ("socket", "trafgen")
REFLECT_PORTS: Final[Mapping[str, int]] = {
    "chargen": 19, "dns": 53, "ntp": 123, "snmp": 161, "cldap": 389, "ssdp": 1900, "memcached": 11211,
}
DEFAULT_PORTS: Final[Mapping[str, int]] = {"syn": 443, "ack": 443, "udp": 8053, "gre": 0, "icmp": 0,
                                           "fragment": 0}
MAX_SECONDS: Final = 600.0
MAX_WAVES: Final = 200
MAX_WAVE_SECONDS: Final = 120.0  # a generator's own ceiling (traffic.MAX_SECONDS)
MAX_RATE: Final = 200_000.0
MAX_HTTP_RATE: Final = 2_000.0
MAX_WAVE_PACKETS: Final = 5_000_000
MAX_REAL: Final = 1024  # addresses configured on one namespace's interface
MAX_CLIENTS: Final = 32


@dataclass(frozen=True)
class Pool:
    """An address pool of a role (``count``: addresses configured from it)."""

    net: Net
    count: int = 0


@dataclass(frozen=True)
class Botnet:
    """One botnet: its pool and how many of its addresses are real bots."""

    name: str
    pool: Pool


@dataclass(frozen=True)
class Topology:
    edges: int
    protected: Net
    origins: tuple[Addr, ...]
    http_port: int
    udp_port: int
    botnets: Mapping[str, Botnet]
    proxies: Pool
    reflectors: Pool
    spoofed: Pool

    def edge_net(self, edge: int) -> Net:
        """The part of the protected prefix edge ``edge`` serves."""
        return list(self.protected.subnets(prefixlen_diff=(self.edges - 1).bit_length()))[edge]

    def edge_of(self, addr: Addr) -> int:
        return next(i for i in range(self.edges) if addr in self.edge_net(i))


@dataclass(frozen=True)
class Legit:
    """The audience: ``clients`` addresses making fresh HTTP connections and UDP exchanges."""

    clients: int
    http_rate: float
    udp_rate: float
    timeout: float

    def addresses(self) -> tuple[Addr, ...]:
        return tuple(LAN.network_address + FIRST_CLIENT + i for i in range(self.clients))


@dataclass(frozen=True)
class Pulse:
    on: float
    off: float


@dataclass(frozen=True)
class Wave:
    index: int
    name: str
    vector: str
    botnet: str  # "" for reflection and HTTP floods not tied to one
    rate: float  # packets/s (http: connections/s)
    sources: int
    spoof: str
    target: Net
    port: int
    start: float
    duration: float
    pulse: Pulse | None
    reflect: str
    sender: str = "socket"  # "trafgen": netsniff-ng's trafgen sends the crafted frames

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def ident(self) -> int:
        """The IPv4 identification of its crafted packets: the origin tells waves apart by it."""
        return 0xB000 + self.index

    @property
    def sport(self) -> int:
        return REFLECT_PORTS[self.reflect] if self.reflect else 0

    @property
    def carpet(self) -> bool:
        return self.target.prefixlen < 32

    def on_time(self) -> float:
        """Seconds it actually sends (pulses: the "on" parts)."""
        if self.pulse is None:
            return self.duration
        period = self.pulse.on + self.pulse.off
        full, rest = divmod(self.duration, period)
        return full * self.pulse.on + min(rest, self.pulse.on)

    def sending(self, t: float) -> bool:
        """Whether it sends ``t`` seconds after the run's start."""
        if not self.start <= t < self.end:
            return False
        if self.pulse is None:
            return True
        return (t - self.start) % (self.pulse.on + self.pulse.off) < self.pulse.on

    @property
    def packets(self) -> int:
        return int(self.rate * self.on_time())


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration: float
    topology: Topology
    legit: Legit
    waves: tuple[Wave, ...]
    agent: Mapping[str, Any]
    """interval, detect, mitigate and challenge (its ``[[challenge]]``
    tables, [] when off): written into each agent's configuration."""
    source: str
    fleet: Mapping[str, Any] = field(default_factory=dict)  # the controller's [fleet] table


# -- reading ---------------------------------------------------------------------------------

_TOP: Final = ("scenario", "topology", "legit", "agent", "fleet", "waves")


def load(path: Path) -> Scenario:
    """The scenario in ``path``; a :class:`ConfigError` naming the file and field otherwise."""
    doc = read_toml(path)
    if doc is None:
        raise ConfigError(str(path), "", "no such file")
    return parse(doc, str(path))


def parse(doc: Mapping[str, object], source: str = "<scenario>") -> Scenario:
    with checked(source):
        return _parse(doc, source)


def _net(value: object, path: str, *, host: bool = False) -> Net:
    text = check_str(value, path)
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise FieldError(path, f"{text!r} is not an IPv4 {'address' if host else 'prefix'} ({exc})") from None
    if not net.subnet_of(LAB_NET):
        raise FieldError(path, f"{text} is outside the lab's {LAB_NET}")
    return net


def _addr(value: object, path: str) -> Addr:
    text = check_str(value, path)
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise FieldError(path, f"{text!r} is not an IPv4 address") from None
    if addr not in LAB_NET:
        raise FieldError(path, f"{text} is outside the lab's {LAB_NET}")
    return addr


def _pool(value: object, path: str, *, count: bool, max_count: int = MAX_REAL) -> Pool:
    table = check_table(value, path)
    check_keys(table, ("pool", "count") if count else ("pool",), path)
    if "pool" not in table:
        raise FieldError(f"{path}.pool", "missing; e.g. \"198.18.16.0/20\"")
    net = _net(table["pool"], f"{path}.pool")
    n = check_int(table.get("count", 0), f"{path}.count", 0, min(max_count, net.num_addresses))
    return Pool(net, n)


def _parse(doc: Mapping[str, object], source: str) -> Scenario:
    check_keys(doc, _TOP)
    for key in ("scenario", "topology", "legit", "waves"):
        if key not in doc:
            raise FieldError(key, "missing")
    head = check_table(doc["scenario"], "scenario")
    check_keys(head, ("name", "description", "duration"), "scenario")
    name = check_str(head.get("name", Path(source).stem), "scenario.name")
    description = check_str(head.get("description", ""), "scenario.description")
    if "duration" not in head:
        raise FieldError("scenario.duration", "missing (seconds)")
    duration = check_number(head["duration"], "scenario.duration", 1, MAX_SECONDS)
    with at("topology"):
        topo = _topology(check_table(doc["topology"]))
    with at("legit"):
        legit = _legit(check_table(doc["legit"]))
    with at("agent"):
        agent = _agent(check_table(doc.get("agent", {})), topo)
    with at("fleet"):
        fleet = _fleet(check_table(doc.get("fleet", {})))
    raw = doc["waves"]
    if not isinstance(raw, list) or not raw:
        raise FieldError("waves", "expected a non-empty array of tables ([[waves]])")
    if len(raw) > MAX_WAVES:
        raise FieldError("waves", f"{len(raw)} waves; at most {MAX_WAVES}")
    waves = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        with at(f"waves[{i}]"):
            w = _wave(i, check_table(item), topo, duration)
        if w.name in names:
            raise FieldError(f"waves[{i}].name", f"{w.name!r} is already the name of another wave")
        names.add(w.name)
        waves.append(w)
    return Scenario(name, description, duration, topo, legit, tuple(waves), agent, source, fleet)


def _topology(t: Mapping[str, object]) -> Topology:
    check_keys(t, ("edges", "protected", "origins", "http_port", "udp_port", "botnets", "proxies",
                   "reflectors", "spoofed"))
    for key in ("protected", "origins", "botnets", "proxies", "reflectors", "spoofed"):
        if key not in t:
            raise FieldError(key, "missing")
    edges = check_int(t.get("edges", 2), "edges", 1, 4)
    if edges not in (1, 2, 4):
        raise FieldError("edges", f"{edges} is not 1, 2 or 4 (the protected prefix is split evenly)")
    protected = _net(t["protected"], "protected")
    for other, onet in (("the lab's LAN", LAN), ("the edge-origin links", INFRA),
                        ("the control links", CONTROL)):
        if protected.overlaps(onet):
            raise FieldError("protected", f"{protected} overlaps {other} ({onet})")
    if not 16 <= protected.prefixlen <= 28:
        raise FieldError("protected", f"/{protected.prefixlen} is out of range /16../28")
    origins_raw = t["origins"]
    if not isinstance(origins_raw, list) or not origins_raw:
        raise FieldError("origins", "expected a non-empty array of addresses")
    origins = []
    for i, item in enumerate(origins_raw):
        a = _addr(item, f"origins[{i}]")
        if a not in protected or a in (protected.network_address, protected.broadcast_address):
            raise FieldError(f"origins[{i}]", f"{a} is not a host of the protected {protected}")
        if a in origins:
            raise FieldError(f"origins[{i}]", f"{a} is listed twice")
        origins.append(a)
    http_port = check_int(t.get("http_port", 80), "http_port", 1, 65535)
    udp_port = check_int(t.get("udp_port", 8053), "udp_port", 1, 65535)
    if udp_port in REFLECT_PORTS.values():
        raise FieldError("udp_port", f"{udp_port} is a reflection source port; the service's replies "
                                     "would look like reflection")
    bots = check_table(t["botnets"], "botnets")
    if not bots:
        raise FieldError("botnets", "expected at least one botnet")
    botnets = {}
    for name, value in bots.items():
        botnets[name] = Botnet(name, _pool(value, f"botnets.{name}", count=True))
    proxies = _pool(t["proxies"], "proxies", count=True)
    reflectors = _pool(t["reflectors"], "reflectors", count=False)
    spoofed = _pool(t["spoofed"], "spoofed", count=False)
    topo = Topology(edges, protected, tuple(origins), http_port, udp_port, botnets, proxies, reflectors,
                    spoofed)
    for e in range(edges):
        if not any(topo.edge_of(o) == e for o in origins):
            raise FieldError("origins", f"no origin in {topo.edge_net(e)}, the part edge {e} serves")
    taken: list[tuple[str, Net]] = [("the lab's LAN", LAN), ("the edge-origin links", INFRA),
                                     ("the control links", CONTROL), ("protected", protected)]
    named = [*((f"botnets.{b.name}.pool", b.pool.net) for b in botnets.values()),
             ("proxies.pool", proxies.net), ("reflectors.pool", reflectors.net),
             ("spoofed.pool", spoofed.net)]
    for path, net in named:
        for other, onet in taken:
            if net.overlaps(onet):
                raise FieldError(path, f"{net} overlaps {other} ({onet})")
        taken.append((path, net))
    return topo


def _legit(t: Mapping[str, object]) -> Legit:
    check_keys(t, ("clients", "http_rate", "udp_rate", "timeout"))
    clients = check_int(t.get("clients", 2), "clients", 1, MAX_CLIENTS)
    http_rate = check_number(t.get("http_rate", 20.0), "http_rate", 0, 1000)
    udp_rate = check_number(t.get("udp_rate", 50.0), "udp_rate", 0, 10_000)
    if not http_rate and not udp_rate:
        raise FieldError("http_rate", "both http_rate and udp_rate are 0: nobody to count")
    timeout = check_number(t.get("timeout", 1.0), "timeout", 0.05, 10)
    return Legit(clients, http_rate, udp_rate, timeout)


def _agent(t: Mapping[str, object], topo: Topology) -> dict[str, Any]:
    check_keys(t, ("interval", "detect", "mitigate", "challenge"))
    out: dict[str, Any] = {"interval": check_number(t.get("interval", 0.25), "interval", 0.05, 10)}
    for key, build in (("detect", DetectConfig.from_dict), ("mitigate", MitigateConfig.from_dict)):
        table = dict(check_table(t.get(key, {}), key))
        with at(key):
            try:
                build(table)
            except TypeError as exc:  # a wrongly typed sub-table reaching a dataclass
                raise FieldError("", str(exc)) from None
        out[key] = table
    with at("challenge"):
        out["challenge"] = _challenge(check_table(t.get("challenge", {})), topo)
    return out


_CHALLENGE_KEYS: Final = ("enabled", "syn_pps", "ack_pps", "hold", "verified_ttl")


def _challenge(t: Mapping[str, object], topo: Topology) -> list[dict[str, Any]]:
    """The agents' ``[[challenge]]`` tables: the origins' HTTP port on the
    protected prefix, the thresholds given (the agent's defaults otherwise);
    [] when ``enabled = false``."""
    check_keys(t, _CHALLENGE_KEYS)
    enabled = t.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FieldError("enabled", f"expected true or false, got {enabled!r}")
    table: dict[str, Any] = {"prefix": str(topo.protected), "ports": [topo.http_port]}
    for key, default in (("syn_pps", chal.DEFAULT_SYN_PPS), ("ack_pps", chal.DEFAULT_ACK_PPS)):
        table[key] = check_int(t.get(key, default), key, 0, 0xFFFFFFFF)
    for key, default_s in (("hold", chal.DEFAULT_HOLD), ("verified_ttl", chal.DEFAULT_VERIFIED_TTL)):
        table[key] = check_number(t.get(key, default_s), key, 0, 86400, above=True)
    return [table] if enabled else []
def _fleet(t: Mapping[str, object]) -> dict[str, Any]:
    table = dict(t)
    try:
        FleetConfig.from_dict(table)
    except TypeError as exc:  # a wrongly typed sub-table reaching a dataclass
        raise FieldError("", str(exc)) from None
    return table


_WAVE_KEYS: Final = ("name", "vector", "botnet", "rate", "sources", "spoof", "target", "port", "start",
                     "duration", "pulse", "reflect", "sender")


def _wave(i: int, t: Mapping[str, object], topo: Topology, total: float) -> Wave:
    check_keys(t, _WAVE_KEYS)
    for key in ("vector", "rate", "target", "start", "duration"):
        if key not in t:
            raise FieldError(key, "missing")
    name = check_str(t.get("name", f"w{i + 1}"), "name")
    if not name or len(name) > 32:
        raise FieldError("name", "expected 1 to 32 characters")
    vector = check_choice(t["vector"], "vector", VECTORS)
    http = vector == "http"
    botnet = check_str(t.get("botnet", ""), "botnet")
    if botnet and botnet not in topo.botnets:
        raise FieldError("botnet", f"{botnet!r} is not a botnet of topology.botnets; known: "
                                   f"{', '.join(sorted(topo.botnets))}")
    if not botnet and vector not in ("reflection", "http"):
        raise FieldError("botnet", f"missing: a {vector} wave comes from one of "
                                   f"{', '.join(sorted(topo.botnets))}")
    rate = check_number(t["rate"], "rate", 0, MAX_HTTP_RATE if http else MAX_RATE, above=True)
    spoof = check_choice(t.get("spoof", "real" if http else "pool" if vector == "reflection" else "random"),
                         "spoof", SPOOFS)
    if http and spoof != "real":
        raise FieldError("spoof", "an http wave makes real TCP connections: its sources are \"real\"")
    if vector == "reflection" and spoof != "pool":
        raise FieldError("spoof", "reflection comes from the reflectors' pool: \"pool\"")
    if http:
        limit, where = topo.proxies.count, "topology.proxies.count"
    elif vector == "reflection":
        limit, where = topo.reflectors.net.num_addresses, "topology.reflectors.pool"
    elif spoof == "real":
        limit, where = topo.botnets[botnet].pool.count, f"topology.botnets.{botnet}.count"
    elif spoof == "pool":
        limit, where = topo.botnets[botnet].pool.net.num_addresses, f"topology.botnets.{botnet}.pool"
    else:
        limit, where = topo.spoofed.net.num_addresses, "topology.spoofed.pool"
    sources = t.get("sources", min(limit, 1000))
    if isinstance(sources, int) and not isinstance(sources, bool) and limit and sources > limit:
        raise FieldError("sources", f"{sources} is more than the {limit} addresses of {where}")
    sources = check_int(sources, "sources", 1, max(limit, 1))
    target = _net(t["target"], "target")
    if not target.subnet_of(topo.protected):
        raise FieldError("target", f"{target} is outside the protected {topo.protected}")
    if http and target.prefixlen != 32:
        raise FieldError("target", "an http wave targets one origin (an address)")
    if http and target.network_address not in topo.origins:
        raise FieldError("target", f"{target.network_address} runs no HTTP service; origins: "
                                   f"{', '.join(map(str, topo.origins))}")
    port = check_int(t.get("port", topo.http_port if http else DEFAULT_PORTS.get(vector, topo.udp_port)),
                     "port", 0, 65535)
    start = check_number(t["start"], "start", 0, total)
    duration = check_number(t["duration"], "duration", 0, MAX_WAVE_SECONDS, above=True)
    if start + duration > total:
        raise FieldError("duration", f"the wave ends at {start + duration:g} s, after the scenario's "
                                     f"{total:g} s")
    pulse = None
    if "pulse" in t:
        p = check_table(t["pulse"], "pulse")
        check_keys(p, ("on", "off"), "pulse")
        for key in ("on", "off"):
            if key not in p:
                raise FieldError(f"pulse.{key}", "missing (seconds)")
        pulse = Pulse(check_number(p["on"], "pulse.on", 0, 60, above=True),
                      check_number(p["off"], "pulse.off", 0, 60, above=True))
    reflect = ""
    if vector == "reflection":
        if "reflect" not in t:
            raise FieldError("reflect",
                             f"missing: which service is abused; one of {', '.join(REFLECT_PORTS)}")
        reflect = check_choice(t["reflect"], "reflect", tuple(REFLECT_PORTS))
    elif "reflect" in t:
        raise FieldError("reflect", f"only a reflection wave has it (this one is {vector})")
    sender = check_choice(t.get("sender", "socket"), "sender", SENDERS)
    if sender == "trafgen" and http:
        raise FieldError("sender", "an http wave makes real TCP connections: its sender is \"socket\"")
    if sender == "trafgen" and pulse is not None:
        raise FieldError("sender", "trafgen sends at one rate from start to end: a pulsed wave's sender is "
                                   "\"socket\"")
    wave = Wave(i, name, vector, botnet, rate, sources, spoof, target, port, start, duration, pulse, reflect,
                sender)
    if wave.packets > MAX_WAVE_PACKETS:
        raise FieldError("rate", f"{wave.packets} packets in all; at most {MAX_WAVE_PACKETS} per wave")
    return wave


def vectors_of(waves: Sequence[Wave]) -> list[str]:
    """The vectors the waves use, in :data:`VECTORS` order."""
    used = {w.vector for w in waves}
    return [v for v in VECTORS if v in used]
