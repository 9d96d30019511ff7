"""Who calls the API and why: the actor and reason of a call, from its
metadata.

``created_by`` and the actor of the audit log and of rule events is the
``x-breakwater-actor`` metadata (at most 256 characters) or else the
caller's peer address; the reason is ``x-breakwater-reason`` (at most
1024). The client (:mod:`controller.api.client`) sends both.
"""

from __future__ import annotations

from typing import Final

import grpc

from ..errors import InputError
from ..rules.model import MAX_COMMENT, MAX_CREATED_BY

__all__ = ["ACTOR_METADATA", "MAX_REASON", "REASON_METADATA", "caller"]

ACTOR_METADATA: Final = "x-breakwater-actor"
"""Metadata key naming who makes a change (else the peer address is the actor)."""
REASON_METADATA: Final = "x-breakwater-reason"
"""Metadata key saying why (the audit log's reason)."""
MAX_REASON: Final = MAX_COMMENT
"""Longest reason accepted, as long as a rule's comment."""


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


def caller(context: grpc.ServicerContext) -> tuple[str, str]:
    """``(actor, reason)`` of a call: the ``x-breakwater-actor`` metadata, else
    the peer, else "unknown"; and the ``x-breakwater-reason`` metadata."""
    md = _metadata(context)
    actor = md.get(ACTOR_METADATA, "").strip() or (context.peer() or "").strip() or "unknown"
    reason = md.get(REASON_METADATA, "").strip()
    if len(actor) > MAX_CREATED_BY:
        raise InputError(f"{ACTOR_METADATA}: {len(actor)} characters; at most {MAX_CREATED_BY}")
    if len(reason) > MAX_REASON:
        raise InputError(f"{REASON_METADATA}: {len(reason)} characters; at most {MAX_REASON}")
    return actor, reason
