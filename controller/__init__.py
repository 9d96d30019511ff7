"""Breakwater: an eBPF/XDP edge DDoS-mitigation controller.

The public API, re-exported from the modules that own it:

* :mod:`controller.dataplane`: attach, adopt, upgrade, detach, status;
* :mod:`controller.policy`: allow and deny entries;
* :mod:`controller.counters`: per-source, per-reason, per-rule counters;
* :mod:`controller.errors`: every error Breakwater raises.
"""

from __future__ import annotations

from .addresses import Prefix, parse_prefix
from .counters import (
    Sources,
    TopRow,
    Totals,
    action_totals,
    read_sources,
    reason_totals,
    rule_totals,
    top_sources,
)
from .dataplane import (
    DEFAULT_PIN_ROOT,
    AttachResult,
    InterfaceStatus,
    attach,
    attached_interfaces,
    detach,
    open_maps,
    set_flags,
    status,
)
from .errors import (
    AttachConflictError,
    BpfFsError,
    BpfUnsupportedError,
    BreakwaterError,
    HeadersMissingError,
    InputError,
    InterfaceError,
    InterfaceNotFoundError,
    MapError,
    MapFullError,
    MapOperationError,
    NotAttachedError,
    NotRootError,
    PinnedMapMismatchError,
    ProgramLoadError,
    SetupError,
)
from .maps import MapSizes
from .policy import ApplyResult, Entry
from .reasons import Action, Reason

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIN_ROOT",
    "Action",
    "ApplyResult",
    "AttachConflictError",
    "AttachResult",
    "BpfFsError",
    "BpfUnsupportedError",
    "BreakwaterError",
    "Entry",
    "HeadersMissingError",
    "InputError",
    "InterfaceError",
    "InterfaceNotFoundError",
    "InterfaceStatus",
    "MapError",
    "MapFullError",
    "MapOperationError",
    "MapSizes",
    "NotAttachedError",
    "NotRootError",
    "PinnedMapMismatchError",
    "Prefix",
    "ProgramLoadError",
    "Reason",
    "SetupError",
    "Sources",
    "TopRow",
    "Totals",
    "action_totals",
    "attach",
    "attached_interfaces",
    "detach",
    "open_maps",
    "parse_prefix",
    "read_sources",
    "reason_totals",
    "rule_totals",
    "set_flags",
    "status",
    "top_sources",
]
