"""The ``breakwater`` command line's grammar: every command, its flags and
its help, and the :class:`~controller.cli.dispatch.Command` it runs (local,
remote, or both with the flags each form takes).

One function per top-level command, called in the order ``breakwater
--help`` lists them; the rule's fields as flags are
:func:`controller.cli.ruleflags.add_rule_flags`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..agent.config import DEFAULT_CONFIG as DEFAULT_AGENT_CONFIG
from ..dataplane.attach import DEFAULT_PIN_ROOT
from ..rules.admission import OVERRIDABLE
from ..rules.enforce import DEFAULT_STATE_DIR
from . import daemons, dataplane, lab, local, pki, remote
from .dispatch import Command
from .ruleflags import add_rule_flags

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``breakwater`` parser; each command sets ``handler`` (a :class:`Command`)."""
    p = argparse.ArgumentParser(
        prog="breakwater",
        description="Breakwater: XDP edge DDoS mitigation. Local commands work on the "
                    "pinned maps of the interfaces Breakwater is attached to; rules, nodes, events, "
                    "top and stats talk to a controller (or an agent's API) with --server HOST:PORT "
                    "or $BREAKWATER_SERVER.",
    )
    p.add_argument("--pin-root", type=Path, default=DEFAULT_PIN_ROOT,
                   help="bpffs directory of the pinned programs and maps "
                        "(default %(default)s, or $BREAKWATER_PIN_ROOT)")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                   help="where the rule set in force is recorded (default %(default)s, "
                        "or $BREAKWATER_STATE_DIR)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (_dataplane, _lists, _rules, _top, _stats, _nodes, _agent, _events, _controller, _pki,
                  _demo, lab.register):
        group(sub)
    return p


def _common(sp: argparse.ArgumentParser) -> None:
    """``--json`` and ``-i/--interface``, the flags of every local command on the maps."""
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sp.add_argument("-i", "--interface", action="append",
                    help="interface to act on (repeatable; default: every attached one)")


def _override_flag(p: argparse.ArgumentParser, guards: str) -> None:
    p.add_argument("--override", action="append", metavar="GUARD", choices=OVERRIDABLE,
                   help=f"with a server, as an admin: override an admission guard ({guards}; "
                        "repeatable; docs/security.md)")


def _server_flags(p: argparse.ArgumentParser, *, reason: bool = False) -> None:
    """``--server`` and ``--timeout`` (and ``--reason`` for changes)."""
    p.add_argument("--server", metavar="HOST:PORT",
                   help="the controller's (or an agent's) API; default $BREAKWATER_SERVER, then the "
                        "CLI config (~/.config/breakwater/cli.toml, /etc/breakwater/cli.toml)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="per-call timeout (default $BREAKWATER_TIMEOUT, the CLI config, or 10)")
    p.add_argument("--cert", metavar="FILE",
                   help="client certificate for mutual TLS (default $BREAKWATER_CERT or the CLI config; "
                        "made by breakwater pki issue operator)")
    p.add_argument("--key", metavar="FILE",
                   help="its private key (default $BREAKWATER_KEY or the CLI config)")
    p.add_argument("--ca", metavar="FILE",
                   help="the CA the server's certificate must chain to "
                        "(default $BREAKWATER_CA or the CLI config)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext to a server that is not on loopback (no TLS; never across a network "
                        "you do not control)")
    if reason:
        p.add_argument("--reason", default="", help="why: recorded in the audit log and rule events")


def _dataplane(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dataplane attach|detach|status|mode``."""
    dp = sub.add_parser("dataplane", help="attach, detach and inspect the XDP program")
    dsub = dp.add_subparsers(dest="dp_command", required=True, metavar="ACTION")

    a = dsub.add_parser("attach", help="attach to interfaces, or adopt/upgrade what is attached")
    a.add_argument("interfaces", nargs="+", metavar="IFACE")
    a.add_argument("--netns", help="network namespace of the interfaces")
    a.add_argument("--mode", choices=["auto", "native", "generic"], default="auto",
                   help="XDP mode; auto tries native and falls back to generic (default auto)")
    a.add_argument("--size", action="append", metavar="MAP=ENTRIES",
                   help="map size, e.g. deny_v4=2097152 (repeatable); see docs/dataplane.md")
    a.add_argument("--replace-maps", action="store_true",
                   help="replace pinned maps whose layout or size differs (allow/deny entries "
                        "are copied, counters restart)")
    a.add_argument("--force", action="store_true", help="replace a foreign XDP program")
    a.add_argument("--reload", action="store_true",
                   help="recompile and swap in atomically even if the same build is attached")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--monitor", dest="monitor", action="store_true", default=None,
                      help="count would-drop packets, drop nothing")
    mode.add_argument("--enforce", dest="monitor", action="store_false",
                      help="drop what the policy says (default for a new attachment)")
    a.add_argument("--foreground", action="store_true",
                   help="stay running as the loader until SIGTERM (program stays attached)")
    a.add_argument("--detach-on-exit", action="store_true",
                   help="with --foreground: detach when stopped")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.set_defaults(handler=Command(dataplane.cmd_attach))

    d = dsub.add_parser("detach", help="detach from interfaces (maps kept unless --purge)")
    d.add_argument("interfaces", nargs="+", metavar="IFACE")
    d.add_argument("--netns", help="network namespace of the interfaces")
    d.add_argument("--purge", action="store_true", help="also remove the pinned maps (policy!)")
    d.add_argument("--force", action="store_true", help="detach a foreign XDP program too")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.set_defaults(handler=Command(dataplane.cmd_detach))

    s = dsub.add_parser("status", help="interface, mode, program id, map sizes and fill")
    s.add_argument("interfaces", nargs="*", metavar="IFACE")
    s.add_argument("--netns", help="network namespace of the interfaces")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(handler=Command(dataplane.cmd_status))

    m = dsub.add_parser("mode", help="switch monitor/enforce at run time, without reloading")
    m.add_argument("policy", choices=["monitor", "enforce"])
    _common(m)
    m.set_defaults(handler=Command(dataplane.cmd_mode))


def _lists(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``deny`` and ``allow``: ``add``, ``del``, ``list``."""
    for which, helptext in (("deny", "denied sources (exact addresses and prefixes)"),
                            ("allow", "allowlist and management prefixes (always win)")):
        lp = sub.add_parser(which, help=helptext)
        lsub = lp.add_subparsers(dest="list_command", required=True, metavar="ACTION")
        add = lsub.add_parser("add", help=f"add {which} entries")
        add.add_argument("prefixes", nargs="*", metavar="PREFIX")
        add.add_argument("--file", action="append",
                         help="read prefixes from a file (plain CIDR, Spamhaus DROP, FireHOL)")
        add.add_argument("--rule", metavar="ID",
                         help=f"source-only rule to add them to (default cli-{which}; created if missing)")
        if which == "allow":
            add.add_argument("--management", action="store_true",
                             help="management prefix (reported as pass_mgmt)")
        _common(add)
        add.set_defaults(handler=Command(local.cmd_list_add), which=which)
        rm = lsub.add_parser("del", help=f"remove {which} entries")
        rm.add_argument("prefixes", nargs="*", metavar="PREFIX")
        rm.add_argument("--file", action="append", help="read prefixes from a file")
        _common(rm)
        rm.set_defaults(handler=Command(local.cmd_list_del), which=which)
        ls = lsub.add_parser("list", help=f"list {which} entries")
        ls.add_argument("--limit", type=int, default=0, help="show at most N entries")
        _common(ls)
        ls.set_defaults(handler=Command(local.cmd_list_show), which=which)


def _rules(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rules``: local (``apply``, ``preset``), remote (``create``, ``update``) or both."""
    rp = sub.add_parser("rules", help="the rule set: local (apply a file atomically, list, show, delete) "
                                      "or a server's (list, get, create, update, delete with --server)")
    rsub = rp.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    ra = rsub.add_parser("apply", help="make FILE (TOML, or .json) the whole rule set, atomically")
    ra.add_argument("file", metavar="FILE")
    ra.add_argument("--dry-run", action="store_true", help="compile and show the diff, change nothing")
    _common(ra)
    ra.set_defaults(handler=Command(local.cmd_rules_apply))
    rl = rsub.add_parser("list", help="rules in force with their counters (a server's: with --server)")
    _common(rl)
    _server_flags(rl)
    rl.add_argument("--filter", metavar="EXPR",
                    help='with a server: e.g. \'origin = RULE_ORIGIN_AUTO AND match.src: "198.51.100.7"\' '
                         "(docs/controlplane.md)")
    rl.add_argument("--show-expired", action="store_true",
                    help="with a server: also rules past their expiry that are not swept yet")
    rl.add_argument("--limit", type=int, default=0, help="with a server: at most N rules (default all)")
    rl.set_defaults(handler=Command(local.cmd_rules_list, remote.rules_list,
                                    remote_flags=("filter", "show_expired", "limit")))
    rs_ = rsub.add_parser("show", aliases=["get"], help="one rule in full (a server's: with --server)")
    rs_.add_argument("id", metavar="ID", help="the rule id (or rules/ID)")
    _common(rs_)
    _server_flags(rs_)
    rs_.set_defaults(handler=Command(local.cmd_rules_show, remote.rules_get))
    rd = rsub.add_parser("del", aliases=["delete"], help="delete rules by id (a server's: with --server)")
    rd.add_argument("ids", nargs="+", metavar="ID")
    rd.add_argument("--dry-run", action="store_true", help="local: show the diff, change nothing")
    _common(rd)
    _server_flags(rd, reason=True)
    rd.add_argument("--etag", help="with a server: delete only if the rule's etag is still this")
    rd.add_argument("--allow-missing", action="store_true",
                    help="with a server: succeed if the rule does not exist")
    _override_flag(rd, "reserved-id")
    rd.set_defaults(handler=Command(local.cmd_rules_del, remote.rules_delete,
                                    local_flags=("interface", "dry_run"),
                                    remote_flags=("etag", "allow_missing", "reason", "override")))
    rc = rsub.add_parser("create", help="create a rule on a server (needs --server or $BREAKWATER_SERVER)")
    rc.add_argument("id", metavar="ID", nargs="?", help="the new rule's id")
    rc.add_argument("--file", metavar="FILE",
                    help="create every rule of a rule file (TOML, or .json) at once, all or none")
    rc.add_argument("--dry-run", action="store_true", help="validate on the server, create nothing")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _server_flags(rc, reason=True)
    add_rule_flags(rc, update=False)
    _override_flag(rc, ", ".join(OVERRIDABLE))
    rc.set_defaults(handler=Command(remote=remote.rules_create))
    ru = rsub.add_parser("update", help="change fields of a rule on a server (only the flags given)")
    ru.add_argument("id", metavar="ID", help="the rule id (or rules/ID)")
    ru.add_argument("--etag", help="change only if the rule's etag is still this (else: aborted)")
    ru.add_argument("--dry-run", action="store_true", help="validate on the server, change nothing")
    ru.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _server_flags(ru, reason=True)
    add_rule_flags(ru, update=True)
    _override_flag(ru, ", ".join(OVERRIDABLE))
    ru.set_defaults(handler=Command(remote=remote.rules_update))
    rpre = rsub.add_parser("preset", help="add a built-in rule group (reflection)")
    rpre.add_argument("preset", choices=["reflection"])
    rpre.add_argument("--dst", action="append", required=True, metavar="PREFIX",
                      help="protected destination prefix (repeatable)")
    rpre.add_argument("--action", choices=["drop", "rate_limit", "monitor"], default="drop")
    rpre.add_argument("--pps", type=int, help="with --action rate_limit: packets/s per port")
    rpre.add_argument("--bps", type=int, help="with --action rate_limit: bits/s per port")
    rpre.add_argument("--scope", choices=["aggregate", "per_source"], default="aggregate")
    rpre.add_argument("--id", default="amp", help="id prefix of the rules (default amp: amp-ntp, ...)")
    rpre.add_argument("--fragments", action="store_true", help="also match UDP fragments to --dst")
    rpre.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    _common(rpre)
    rpre.set_defaults(handler=Command(local.cmd_rules_preset))


def _top(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``top``: local counters, or the fleet's with a server."""
    t = sub.add_parser("top", help="top sources by rate, from two counter reads (the fleet's: with --server, "
                                   "refreshed live)")
    t.add_argument("--interval", type=float, default=1.0,
                   help="seconds between reads, or between refreshes with a server (default 1)")
    t.add_argument("-n", "--count", type=int, default=20, help="rows (default 20)")
    t.add_argument("--by", choices=["packets", "bytes", "drops"], default="packets",
                   help="rank by (a server ranks by packets or bytes)")
    t.add_argument("--watch", action="store_true",
                   help="refresh until interrupted (a server's top always refreshes, unless --json or "
                        "--iterations)")
    _common(t)
    _server_flags(t)
    t.add_argument("--node", metavar="NODE_ID", help="with a server: one node (default: the cluster)")
    t.add_argument("--destinations", action="store_true",
                   help="with a server: rank protected destinations instead of sources")
    t.add_argument("--window", type=float, metavar="SECONDS",
                   help="with a server: the window, ending now (default 60, at most 3600)")
    t.add_argument("--iterations", type=int, metavar="N",
                   help="with a server: stop after N refreshes (default: until Ctrl-C; 1 with --json)")
    t.set_defaults(handler=Command(local.cmd_top, remote.top,
                                   remote_flags=("node", "destinations", "window", "iterations")))


def _stats(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``stats``: local counters, or the fleet's with a server."""
    st = sub.add_parser("stats", help="packets by action, reason and rule (the fleet's: with --server)")
    _common(st)
    _server_flags(st)
    st.add_argument("--node", metavar="NODE_ID", help="with a server: one node (default: the cluster)")
    st.add_argument("--window", type=float, metavar="SECONDS",
                    help="with a server: the window, ending now (default 60, at most 3600)")
    st.set_defaults(handler=Command(local.cmd_stats, remote.stats, remote_flags=("node", "window")))


def _nodes(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``nodes list|get|remove``: a controller's agents (needs a server)."""
    np_ = sub.add_parser("nodes", help="the agents registered with a controller (needs --server)")
    nsub = np_.add_subparsers(dest="nodes_command", required=True, metavar="ACTION")
    nl = nsub.add_parser("list", help="every node: health, applied and target version, lag")
    nl.add_argument("--filter", metavar="EXPR",
                    help='e.g. \'labels.site = "fra1" AND health != NODE_HEALTH_HEALTHY\'')
    nl.add_argument("--limit", type=int, default=0, help="at most N nodes (default all)")
    nl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _server_flags(nl)
    nl.set_defaults(handler=Command(remote=remote.nodes_list))
    ng = nsub.add_parser("get", help="one node in full")
    ng.add_argument("id", metavar="NODE_ID", help="the node id (or nodes/ID)")
    ng.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _server_flags(ng)
    ng.set_defaults(handler=Command(remote=remote.nodes_get))
    nr = nsub.add_parser("remove", help="remove a node (admin): end its stream, revoke its certificate")
    nr.add_argument("id", metavar="NODE_ID", help="the node id (or nodes/ID)")
    _server_flags(nr, reason=True)
    nr.set_defaults(handler=Command(remote=remote.nodes_remove))


def _agent(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``agent``: the edge daemon."""
    ag = sub.add_parser("agent", help="run the detection and mitigation daemon")
    ag.add_argument("--config", default=str(DEFAULT_AGENT_CONFIG),
                    help="agent configuration, TOML (default %(default)s; see docs/agent.toml)")
    ag.add_argument("-i", "--interface", dest="agent_interface", action="append", metavar="IFACE",
                    help="interface to protect (repeatable; replaces the config's interfaces)")
    ag.add_argument("--netns", help="with --interface: network namespace of the interfaces")
    ag.add_argument("--interval", type=float, help="seconds between detection intervals (min 0.1)")
    amode = ag.add_mutually_exclusive_group()
    amode.add_argument("--monitor", dest="monitor", action="store_true", default=None,
                       help="plan and report, never apply automatic rules")
    amode.add_argument("--enforce", dest="monitor", action="store_false",
                       help="apply automatic rules (the default)")
    ag.add_argument("--pin-root", dest="agent_pin_root", type=Path,
                    help="bpffs directory of the pins (default: the config's pin_root)")
    ag.add_argument("--state-dir", dest="agent_state_dir", type=Path,
                    help="state directory, holds agent.db (default: the config's state_dir)")
    ag.add_argument("--metrics", metavar="ADDR:PORT",
                    help='metrics listen address (default 127.0.0.1:9611; "" disables)')
    ag.add_argument("--controller", dest="agent_controller", metavar="HOST:PORT[,HOST:PORT...]",
                    help="the controller to sync rules with, or several (over one etcd: the agent fails over "
                         'in order); "" runs standalone; default: the config\'s')
    ag.add_argument("--node-id", dest="agent_node_id", metavar="ID",
                    help="this node's id at the controller (default: the config's, else the host name)")
    ag.add_argument("--label", dest="agent_label", action="append", metavar="KEY=VALUE",
                    help="a node label, e.g. site=fra1 (repeatable; replaces the config's labels)")
    ag.add_argument("--api", dest="agent_api", metavar="ADDR:PORT",
                    help='the local API listen address (default 127.0.0.1:9612; "" disables)')
    ag.add_argument("--check-config", action="store_true",
                    help="validate the configuration, print the effective one, exit (0 ok, 2 bad)")
    ag.set_defaults(handler=Command(daemons.cmd_agent))


def _events(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``events``: the agent's state database, or a server's event log."""
    ev = sub.add_parser("events", help="recent attack events from the agent's state database (a server's "
                                       "attack and rule events with --server; --follow streams them)")
    ev.add_argument("--limit", type=int, default=50, help="at most N events, newest first (default 50)")
    ev.add_argument("--json", action="store_true",
                    help="print JSON instead of a table (one object per line with --follow)")
    ev.add_argument("--state-dir", dest="events_state_dir", type=Path,
                    help="the agent's state directory (default: the global --state-dir)")
    _server_flags(ev)
    ev.add_argument("--filter", metavar="EXPR",
                    help="with a server: e.g. 'rule:*' or 'attack.phase = ATTACK_PHASE_STARTED'")
    ev.add_argument("-f", "--follow", action="store_true",
                    help="with a server: stream events as they are logged, until Ctrl-C")
    ev.add_argument("--after-sequence", type=int, metavar="SEQ",
                    help="with --follow: first replay the kept events after SEQ (0: all)")
    ev.set_defaults(handler=Command(local.cmd_events, remote.events,
                                    local_flags=("events_state_dir:--state-dir",),
                                    remote_flags=("filter", "follow", "after_sequence")))


def _controller(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``controller``: the control plane daemon."""
    ct = sub.add_parser("controller", help="run the control plane: the gRPC API and the agents' sync "
                                           "server, over a SQLite store or etcd")
    ct.add_argument("--config", metavar="FILE",
                    help="controller configuration, TOML (optional; keys in docs/controlplane.md)")
    ct.add_argument("--listen", metavar="HOST:PORT",
                    help="gRPC listen address (default 127.0.0.1:9610; [::]:9610 serves other hosts, "
                         "with tls_cert, tls_key and tls_ca in --config)")
    ct.add_argument("--insecure", action="store_true",
                    help="serve plaintext on a non-loopback --listen (logged as a warning at every start, "
                         "and breakwater_controller_insecure 1)")
    ct.add_argument("--state-dir", dest="controller_state_dir", metavar="DIR",
                    help="holds controller.db (default /var/lib/breakwater-controller)")
    ct.add_argument("--store", metavar="SPEC",
                    help='"sqlite" (default: controller.db under --state-dir) or '
                         'etcd://HOST:PORT[,HOST:PORT...] (several controllers; docs/controlplane.md)')
    for flag, what in (("--etcd-ca", "the CA of the etcd members' certificates (TLS)"),
                       ("--etcd-cert", "this controller's client certificate for etcd"),
                       ("--etcd-key", "the key of --etcd-cert")):
        ct.add_argument(flag, metavar="PEM", help=what)
    ct.add_argument("--metrics", metavar="ADDR:PORT",
                    help='Prometheus metrics address (default 127.0.0.1:9613; "" disables)')
    ct.add_argument("--reconcile-interval", type=float, metavar="SECONDS",
                    help="seconds between the reconciling snapshots agents get (default 30)")
    ct.add_argument("--check-config", action="store_true",
                    help="validate the configuration, print the effective one, exit (0 ok, 2 bad)")
    ct.set_defaults(handler=Command(daemons.cmd_controller))


def _pki(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``pki init|issue|revoke``: the small CA and the certificates of mutual TLS."""
    pp = sub.add_parser("pki", help="a small CA: certificates for the controller, nodes and operators",
                        description="Certificates for mutual TLS (docs/security.md). Every file is 0600 "
                                    "in a 0700 directory; the CA's key never leaves the CA's directory.")
    psub = pp.add_subparsers(dest="pki_command", required=True, metavar="ACTION")
    i = psub.add_parser("init", help="create the CA (ca.key, ca.crt) in --dir")
    i.add_argument("--dir", type=Path, required=True, help="the CA's directory (created 0700)")
    i.add_argument("--name", default="breakwater-ca", help="the CA's common name (default %(default)s)")
    i.add_argument("--days", type=int, default=3650, help="lifetime (default %(default)s)")
    i.add_argument("--force", action="store_true",
                   help="replace an existing CA (its certificates stop working)")
    i.set_defaults(handler=Command(pki.cmd_init))
    s = psub.add_parser("issue", help="issue a controller, node or operator certificate",
                        description="controller NAME: the controller's server certificate (--host for "
                                    "every name and address agents dial; localhost and 127.0.0.1 always). "
                                    "node ID: an agent's certificate; the controller takes the node id "
                                    "from it. operator NAME --role viewer|operator|admin: a person's or a "
                                    "tool's. Writes NAME.key, NAME.crt and ca.crt into --out.")
    s.add_argument("kind", choices=["controller", "node", "operator"])
    s.add_argument("name", help="the controller's name, the node id, or the operator's name")
    s.add_argument("--ca", dest="ca_dir", type=Path, required=True,
                   help="the CA's directory (pki init --dir)")
    s.add_argument("--out", type=Path, required=True, help="where to write (not the CA's directory)")
    s.add_argument("--role", choices=["viewer", "operator", "admin"], help="an operator certificate's role")
    s.add_argument("--host", action="append", default=[], metavar="NAME|ADDR",
                   help="a DNS name or address the certificate's server answers on (repeatable)")
    s.add_argument("--days", type=int, default=397, help="lifetime (default %(default)s)")
    s.set_defaults(handler=Command(pki.cmd_issue))
    r = psub.add_parser("revoke", help="add a certificate's serial to a revocation list",
                        description="Appends the serial to the list a controller checks every call "
                                    "against (its tls_revoked, default STATE_DIR/revoked.txt; re-read "
                                    "when it changes). A revoked certificate's calls are UNAUTHENTICATED.")
    r.add_argument("serial", metavar="SERIAL|CERT",
                   help="the serial in hex (openssl x509 -noout -serial), or the certificate file")
    r.add_argument("--list", type=Path, required=True, help="the revocation list file (created 0600)")
    r.add_argument("--note", help="why, kept as a comment on the line")
    r.set_defaults(handler=Command(pki.cmd_revoke))


def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``demo``: the agent against a flood in a namespace lab."""
    dm = sub.add_parser(
        "demo", help="the agent against a multi-vector flood in a namespace lab (~40 s, root)",
        description="Builds a namespace lab (a legitimate client, a botnet, reflectors and a spoofer "
                    "behind a bridge; an edge with XDP on its ingress veth, routing to an origin), runs "
                    "`breakwater agent` in it with a generated configuration, and floods the origin for "
                    "~30 s: a UDP flood from 12 real sources, a DNS reflection flood from 2000 sources, a "
                    "spoofed SYN flood. Shows live what the agent detects and mitigates, then a summary "
                    "per vector: time to detect and to mitigate (>= 99% of the flood dropped), flood "
                    "dropped, legitimate delivery. Removes everything it built, also on failure, "
                    "Ctrl-C or SIGTERM. Exit 0 when every vector was mitigated, 1 otherwise.")
    dm.add_argument("--json", action="store_true",
                    help="print the summary as JSON on stdout (the live view goes to stderr)")
    dm.add_argument("--agent-log", type=Path, metavar="FILE",
                    help="keep a copy of the agent's JSON log in FILE")
    dm.set_defaults(handler=Command(daemons.cmd_demo))
