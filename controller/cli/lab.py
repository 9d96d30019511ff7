"""``breakwater lab run SCENARIO`` and ``breakwater lab down``: the fleet lab
(:mod:`controller.lab.run`) from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .dispatch import Command

__all__ = ["cmd_lab_down", "cmd_lab_run", "register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``lab`` command group."""
    lp = sub.add_parser("lab", help="replay an attack scenario against a controller and agents in a "
                                    "namespace lab (root)")
    lsub = lp.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")
    r = lsub.add_parser(
        "run", help="run a scenario (scenarios/*.toml) and report per wave",
        description="Builds a namespace lab from SCENARIO (a controller, edge nodes each running a real "
                    "agent with XDP on its ingress veth, origins with an HTTP and a UDP service, "
                    "legitimate clients, botnets, reflectors, proxies; addresses from 198.18.0.0/15, no "
                    "route out), replays its waves while the legitimate users connect, shows a live view, "
                    "then reports per wave: vector, offered pps, detected, time to mitigate, attack "
                    "dropped, legitimate HTTP (fresh TCP) and UDP success during the wave. Removes "
                    "everything it built, also on failure, Ctrl-C or SIGTERM. Exit 0 when every wave was "
                    "detected and mitigated (with --monitor: when the lab was removed), 3 when the run went "
                    "through but a wave was not, 1 on an error or when something was left behind.")
    r.add_argument("scenario", type=Path, metavar="SCENARIO", help="the scenario file")
    r.add_argument("--chart", type=Path, metavar="PNG", help="write the chart of traffic by verdict there")
    r.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (the live view goes to stderr)")
    r.add_argument("--monitor", action="store_true",
                   help="the agents in monitor mode (they detect and plan rules but apply none) and the "
                        "controller's fleet detection off: a baseline, what the waves do unmitigated; exit 0 "
                        "when the lab was removed")
    r.set_defaults(handler=Command(cmd_lab_run))
    d = lsub.add_parser("down", help="remove what a crashed or killed lab run left (processes, namespaces, "
                                     "pins, files)")
    d.add_argument("--json", action="store_true", help="what was removed, as JSON")
    d.set_defaults(handler=Command(cmd_lab_down))


def cmd_lab_run(args: argparse.Namespace) -> int:
    from ..lab import run

    code, _ = run.run(args.scenario, json_out=args.json, chart=args.chart,
                      mode="monitor" if args.monitor else "enforce")
    return code


def cmd_lab_down(args: argparse.Namespace) -> int:
    from ..dataplane.attach import require_root
    from ..lab import fleet
    from ..output import emit_json

    require_root()
    removed, left = fleet.down()
    if args.json:
        emit_json({"removed": removed, "left_behind": left})
    else:
        print(f"removed: {', '.join(removed) or 'nothing'}")
        if left:
            print(f"could not remove: {', '.join(left)}", file=sys.stderr)
    return 1 if left else 0
