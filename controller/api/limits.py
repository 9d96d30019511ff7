"""Bounds on what callers may hold open: long-lived server streams
(WatchEvents) per caller and in total.

An open stream of a sync servicer holds a worker thread for as long as it
is open, idle or not; without a bound, a few idle watchers lock a server
with few workers (an agent's local API has 8) out of every other call,
health included. :class:`StreamLimits` counts the streams each caller holds
(:func:`caller_key`: the authenticated principal, or on a plaintext server
the peer's address without its port) and refuses one more past
``per_caller`` or ``total`` with a :class:`~controller.errors.CapacityError`:
``RESOURCE_EXHAUSTED``, before the stream takes anything.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Final

from ..errors import CapacityError
from .auth import principal_of

__all__ = ["DEFAULT_STREAMS_PER_CALLER", "StreamLimits", "caller_key"]

DEFAULT_STREAMS_PER_CALLER: Final = 16
"""Open WatchEvents streams one caller may hold (a dashboard needs one or two)."""


def caller_key(context: Any) -> str:
    """Who holds a stream: the principal's name, else the peer without its port."""
    principal = principal_of(context)
    if principal is not None:
        return principal.name
    peer = str(context.peer() or "unknown")
    return peer.rpartition(":")[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class StreamLimits:
    """Counts open streams by caller; :meth:`hold` one for as long as it is open."""

    def __init__(self, *, per_caller: int = DEFAULT_STREAMS_PER_CALLER, total: int = 256,
                 what: str = "streams") -> None:
        self.per_caller = per_caller
        self.total = total
        self.what = what
        self.refused = 0
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        with self._lock:
            return sum(self._held.values())

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One stream of ``key``'s, released on exit; CapacityError past a bound."""
        with self._lock:
            mine = self._held.get(key, 0)
            everyone = sum(self._held.values())
            if mine >= self.per_caller or everyone >= self.total:
                self.refused += 1
                which = (f"{key} holds {mine} open {self.what}; at most {self.per_caller} per caller"
                         if mine >= self.per_caller else
                         f"{everyone} open {self.what} on this server; at most {self.total}")
                raise CapacityError(f"{which}: close one first")
            self._held[key] = mine + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[key] - 1
                if left:
                    self._held[key] = left
                else:
                    del self._held[key]
