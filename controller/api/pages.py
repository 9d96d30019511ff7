"""Pagination of the API's listings: page sizes, page tokens, and taking
one page off what a filter selects.

``page_size`` 0 is the listing's documented default (rules and nodes 100,
events 50), larger than :data:`MAX_PAGE_SIZE` is the maximum, negative is
refused. A page token is opaque (URL-safe base64 of JSON) and carries the
resource, the position (the last rule id or node id returned, or the
sequence of the oldest event returned) and the fingerprint of the filter
(and of ``show_expired``): a token offered with another filter, for
another resource, or mangled, is ``INVALID_ARGUMENT`` at ``page_token``.
Pages are keyed by position, not offset, so rules created or deleted
between pages neither repeat nor skip the others; ``next_page_token`` is
empty exactly when nothing more matches. A page also ends before its
messages pass :data:`MAX_PAGE_BYTES` (3 MiB), so it always fits a client's
default 4 MiB receive limit.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any, Final, TypeVar

from ..errors import FieldError

__all__ = ["MAX_PAGE_BYTES", "MAX_PAGE_SIZE", "decode_page_token", "encode_page_token", "page_size",
           "take_page"]

MAX_PAGE_BYTES: Final = 3 * 1024 * 1024
"""A page ends early (with a next_page_token) before its messages pass this
many bytes: a client's default receive limit is 4 MiB, and 1000 rules of
1024 prefixes each, or 1000 large node records, would not fit."""
MAX_PAGE_SIZE: Final = 1000
"""The largest page any listing returns."""
_TOKEN_VERSION: Final = 1  # the layout of a token's JSON; a token of another is refused

_T = TypeVar("_T")


def page_size(value: int, default: int, path: str = "page_size") -> int:
    """A request's page size: 0 is ``default``, above :data:`MAX_PAGE_SIZE` is the maximum."""
    if value < 0:
        raise FieldError(path, f"{value} is negative; give 0 (default {default}) to {MAX_PAGE_SIZE}")
    return min(value or default, MAX_PAGE_SIZE)


def encode_page_token(resource: str, fingerprint: str, position: str | int) -> str:
    """An opaque token for the page after ``position`` of ``resource`` listed with a filter of
    this ``fingerprint``."""
    doc = json.dumps({"v": _TOKEN_VERSION, "r": resource, "f": fingerprint, "p": position},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(doc.encode()).decode().rstrip("=")


def decode_page_token(token: str, resource: str, fingerprint: str, path: str = "page_token") -> Any:
    """The position a token of :func:`encode_page_token` holds; None for an empty token."""
    if not token:
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or doc.get("v") != _TOKEN_VERSION or "p" not in doc:
        raise FieldError(path, "not a page token of this server; pass the next_page_token of a "
                               "previous response, or none for the first page")
    if doc.get("r") != resource:
        raise FieldError(path, f"a page token of {doc.get('r')} listings, not of {resource} listings")
    if doc.get("f") != fingerprint:
        raise FieldError(path, "issued for another filter (or show_expired); a token only works with "
                               "the request it came from; start again without page_token")
    return doc["p"]


def take_page(items: Iterable[_T], size: int, max_bytes: int = MAX_PAGE_BYTES) -> tuple[list[_T], bool]:
    """The first ``size`` of ``items`` and whether more follow (reading one
    item past the page at most, so a lazy listing stops there). Items with
    a ``ByteSize()`` (messages) also end the page before it passes
    ``max_bytes`` (one item always goes)."""
    page: list[_T] = []
    total = 0
    for item in items:
        if len(page) == size:
            return page, True
        measure = getattr(item, "ByteSize", None)
        if measure is not None:
            total += int(measure()) + 8
            if page and total > max_bytes:
                return page, True
        page.append(item)
    return page, False
