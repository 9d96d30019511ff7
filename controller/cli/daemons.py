"""``breakwater agent``, ``breakwater controller`` and ``breakwater demo``:
the long-running processes, each started from its flags and configuration
(``--check-config`` prints the effective configuration and exits).

Each imports its package when it runs, so the short commands never load
the daemons.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..output import emit_json

__all__ = ["cmd_agent", "cmd_controller", "cmd_demo"]


def _agent_overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.agent_interface:
        out["interfaces"] = [{"name": n, **({"netns": args.netns} if args.netns else {})}
                             for n in args.agent_interface]
    elif args.netns:
        raise InputError("--netns needs --interface (or set netns per interface in the config)")
    if args.interval is not None:
        out["interval"] = args.interval
    if args.monitor is not None:
        out["mode"] = "monitor" if args.monitor else "enforce"
    for key in ("agent_pin_root", "agent_state_dir"):
        value = getattr(args, key)
        if value is not None:
            out[key.removeprefix("agent_")] = str(value)
    if args.metrics is not None:
        out["metrics"] = args.metrics
    for key in ("controller", "node_id", "api"):
        value = getattr(args, f"agent_{key}")
        if value is not None:
            out[key] = value
    if args.agent_label:
        labels: dict[str, str] = {}
        for item in args.agent_label:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InputError(f"--label {item!r}: expected KEY=VALUE, e.g. --label site=fra1")
            labels[key] = value
        out["labels"] = labels
    return out


def cmd_agent(args: argparse.Namespace) -> int:
    from ..agent import config as agentconfig
    from ..agent import daemon as agent

    overrides = _agent_overrides(args)
    cfg = agentconfig.load(Path(args.config), overrides)
    if args.check_config:
        emit_json(cfg.to_dict())
        return 0
    return agent.run(cfg, config_path=Path(args.config), overrides=overrides)


def cmd_controller(args: argparse.Namespace) -> int:
    from ..config import checked
    from ..fleet import daemon as controlplane
    from ..fleet.config import load_config
    from ..fleet.syncconfig import check_config

    overrides = {"listen": args.listen, "state_dir": args.controller_state_dir, "metrics": args.metrics,
                 "reconcile_interval": args.reconcile_interval, "store": args.store,
                 "etcd_ca": args.etcd_ca, "etcd_cert": args.etcd_cert, "etcd_key": args.etcd_key,
                 "insecure": args.insecure or None}
    cfg = load_config(Path(args.config) if args.config else None, overrides)
    if args.check_config:
        with checked(cfg.source):
            check_config(cfg)
        emit_json(cfg.to_dict())
        return 0
    return controlplane.run(cfg)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab import demo

    return demo.run(json_out=args.json, agent_log=args.agent_log)
