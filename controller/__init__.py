"""Breakwater: an eBPF/XDP edge DDoS-mitigation controller.

The public API, re-exported from the modules that own it:

* :mod:`controller.dataplane.attach`: attach, adopt, upgrade, detach, status;
* :mod:`controller.dataplane.entries`: allow and deny entries;
* :mod:`controller.dataplane.counters`: per-source, per-reason, per-rule counters;
* :mod:`controller.errors`: every error Breakwater raises.
"""

from __future__ import annotations

from .addresses import Prefix, parse_prefix
from .dataplane.attach import (
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
from .dataplane.counters import (
    Sources,
    TopRow,
    Totals,
    action_totals,
    read_sources,
    reason_totals,
    rule_totals,
    top_sources,
)
from .dataplane.entries import ApplyResult, Entry
from .dataplane.maps import MapSizes
from .dataplane.reasons import Action, Reason
from .errors import (
    AlreadyExistsError,
    AttachConflictError,
    BpfFsError,
    BpfUnsupportedError,
    BreakwaterError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    HeadersMissingError,
    InputError,
    InterfaceError,
    InterfaceNotFoundError,
    MapError,
    MapFullError,
    MapOperationError,
    NotAttachedError,
    NotFoundError,
    NotRootError,
    PinnedMapMismatchError,
    ProgramLoadError,
    RemoteError,
    SetupError,
    UnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_PIN_ROOT",
    "Action",
    "AlreadyExistsError",
    "ApplyResult",
    "AttachConflictError",
    "AttachResult",
    "BpfFsError",
    "BpfUnsupportedError",
    "BreakwaterError",
    "CapacityError",
    "Entry",
    "EtagMismatchError",
    "FailedPreconditionError",
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
    "NotFoundError",
    "NotRootError",
    "PinnedMapMismatchError",
    "Prefix",
    "ProgramLoadError",
    "Reason",
    "RemoteError",
    "SetupError",
    "Sources",
    "TopRow",
    "Totals",
    "UnavailableError",
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
