"""``breakwater``: the operator's command line, and its entry point
:func:`main` (the console script; ``python -m controller.cli``).

Local mode (like xdp-filter): every command works on the pinned maps under
``--pin-root`` (default /sys/fs/bpf/breakwater); only ``dataplane attach``
compiles anything.

Remote mode: ``rules``, ``nodes``, ``events``, ``top`` and ``stats`` talk
gRPC to a controller (``breakwater controller``) or an agent's API when a
server is named: ``--server HOST:PORT``, else ``$BREAKWATER_SERVER``, else
the CLI config (:mod:`controller.api.client`); :mod:`controller.cli.remote` runs
them. ``rules list|show|del``, ``events``, ``top`` and ``stats`` stay local
when no server is named; ``rules create|update`` and ``nodes`` need one;
``rules apply|preset`` and the ``deny``/``allow`` lists are local only
(:mod:`controller.cli.dispatch` picks).

Tables by default, ``--json`` for machines. Errors are one line on stderr
and a non-zero exit: 2 for bad input (a remote ``INVALID_ARGUMENT``
included: the line names the field), 1 for the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import logs
from ..errors import BreakwaterError, InputError
from .dispatch import dispatch
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the command, return its exit code."""
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    try:
        return dispatch(args)
    except InputError as exc:
        print(f"breakwater: error: {exc}", file=sys.stderr)
        return 2
    except BreakwaterError as exc:
        print(f"breakwater: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
