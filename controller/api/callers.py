"""Who calls the API and why: the actor and reason of a call, from its
metadata.

``created_by`` and the actor of the audit log and of rule events is the
authenticated principal (``user:alice``, from the verified client
certificate, :func:`controller.api.auth.principal_of`); an
``x-breakwater-actor`` metadata (at most 256 characters) is kept beside it
only as "on behalf of": ``user:alice (for bob)``, never instead of it. On
a plaintext server (no principals) the actor is that metadata or else the
caller's peer address, as before. Control characters and bidi overrides
are removed from what the caller sent before it is stored. The reason is
``x-breakwater-reason`` (at most 1024). The client
(:mod:`controller.api.client`) sends both.
"""

from __future__ import annotations

import unicodedata
from typing import Final

import grpc

from ..errors import InputError
from ..rules.model import MAX_COMMENT, MAX_CREATED_BY
from .auth import principal_of

__all__ = ["ACTOR_METADATA", "MAX_REASON", "REASON_METADATA", "caller", "printable"]

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


def printable(text: str) -> str:
    """``text`` without control characters (Cc), format characters (Cf: bidi
    overrides, zero-width) and other unassigned or private code points."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")


def caller(context: grpc.ServicerContext) -> tuple[str, str]:
    """``(actor, reason)`` of a call: the principal (with the
    ``x-breakwater-actor`` metadata as "for ..."), or on plaintext that
    metadata, else the peer, else "unknown"; and the ``x-breakwater-reason``
    metadata."""
    md = _metadata(context)
    claimed = printable(md.get(ACTOR_METADATA, "")).strip()
    principal = principal_of(context)
    if principal is not None:
        on_behalf = claimed and claimed != principal.name
        actor = f"{principal.name} (for {claimed})" if on_behalf else principal.name
    else:
        actor = claimed or (context.peer() or "").strip() or "unknown"
    reason = printable(md.get(REASON_METADATA, "")).strip()
    if len(actor) > MAX_CREATED_BY:
        raise InputError(f"{ACTOR_METADATA}: {len(actor)} characters; at most {MAX_CREATED_BY}")
    if len(reason) > MAX_REASON:
        raise InputError(f"{REASON_METADATA}: {len(reason)} characters; at most {MAX_REASON}")
    return actor, reason
