"""The sync hub's per-agent state: one agent's open stream as the hub drives
it (:class:`Stream`: its labels, the views it targets, holds, has in
flight and refused, and the outbox its writer drains) and what the hub
sent a node id across its streams (:class:`Memory`), so a stream that
breaks can resume with a delta.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..api.convert import node_name
from .ruleindex import LabelsKey, View

__all__ = ["Memory", "Stream"]


class Stream:
    """One agent's open stream, as the hub drives it (loop thread only)."""

    __slots__ = ("acked", "deltas", "ended", "error", "labels", "last_touch", "nacked", "name", "node_id",
                 "outbox", "outstanding", "peer", "reconcile_due", "sent_at", "target", "timer", "waiter")

    def __init__(self, node_id: str, labels: LabelsKey, deltas: bool, peer: str) -> None:
        self.node_id = node_id
        self.name = node_name(node_id)
        self.labels = labels
        self.deltas = deltas
        self.peer = peer
        self.target: View | None = None
        self.acked: View | None = None
        """What the node holds, as far as the hub knows (None: unknown, send a snapshot)."""
        self.outstanding: View | None = None
        self.nacked: View | None = None
        self.reconcile_due = False
        self.outbox: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        """Set while the stream's writer waits for the outbox (cheaper than an Event)."""
        self.ended = False
        self.error: BaseException | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent_at = 0.0
        self.last_touch = 0.0

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def put(self, message: bytes) -> None:
        self.outbox.append(message)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if not self.ended:
            self.ended = True
            self.error = error
            if self.timer is not None:
                self.timer.cancel()
            self._wake()


class Memory:
    """What the hub sent a node id (across its streams): the view it last
    ACKed and the one it had in flight last, and the highest version it was
    given."""

    __slots__ = ("acked", "last_version", "sent")

    def __init__(self) -> None:
        self.acked: View | None = None
        self.sent: View | None = None
        self.last_version = 0

    def view(self, version: int) -> View | None:
        for v in (self.acked, self.sent):
            if v is not None and v.version == version:
                return v
        return None
