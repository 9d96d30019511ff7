"""The controller's event log: attack and rule events, stored and streamed.

:meth:`EventLog.publish` stores ``breakwater.v1.Event`` s (their sequence,
name and time are set here) in the :class:`~controller.fleet.store.FleetStore`
and wakes every watcher; :meth:`EventLog.watch` yields the events after a
sequence, first from the store (so a watcher that reconnects with the last
sequence it saw misses nothing that is still kept), then live as they are
published, until the caller's ``stop`` says so. ``EventService.ListEvents``
and ``WatchEvents`` are both served from here; so are the events agents
stream up through ``SyncService`` and the rule events of ``RuleService``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Final

from breakwater.v1 import event_pb2

from ..errors import FieldError
from .storeapi import Store

__all__ = ["EventLog", "check_events", "event_name"]

# How long a watcher sleeps between checks of its stop condition.
WATCH_POLL_SECONDS: Final = 0.5
# Events read from the store per step of a catch-up.
CATCH_UP_BATCH: Final = 500


def event_name(seq: int) -> str:
    """The resource name of event ``seq``: ``events/{seq}``."""
    return f"events/{seq}"


def _kind(event: event_pb2.Event) -> str:
    return event.WhichOneof("payload") or "unknown"


def check_events(events: Sequence[event_pb2.Event], path: str) -> None:
    """FieldError naming the first event (``path[i].time``) whose time no
    datetime holds (a Timestamp a node sent: seconds or nanos out of range);
    :meth:`EventLog.publish` stores only times it can read back."""
    for i, e in enumerate(events):
        if e.HasField("time"):
            try:
                e.time.ToDatetime(UTC)
            except (ValueError, OverflowError) as exc:
                raise FieldError(f"{path}[{i}].time", f"not a valid time ({exc})") from None


class EventLog:
    """Stored events plus live fan-out. Thread-safe."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._last = store.last_event_seq()

    @property
    def last_sequence(self) -> int:
        with self._cond:
            return self._last

    def publish(self, events: Sequence[event_pb2.Event], *, node: str = "") -> list[event_pb2.Event]:
        """Store ``events`` (``node``: the node name they came from, unless
        an event names its own) and wake the watchers; returns them as
        stored, with sequence, name and time set."""
        if not events:
            return []
        now = datetime.now(UTC)
        rows = []
        prepared = []
        for e in events:
            out = event_pb2.Event()
            out.CopyFrom(e)
            if node and not out.node:
                out.node = node
            if not out.HasField("time"):
                out.time.FromDatetime(now)
            prepared.append(out)
        with self._cond:
            for out in prepared:
                out.ClearField("sequence")
                out.ClearField("name")
                rows.append((out.time.ToDatetime(UTC), out.node, _kind(out), out.SerializeToString()))
            seqs = self._store.add_events(rows)
            for seq, out in zip(seqs, prepared, strict=True):
                out.sequence = seq
                out.name = event_name(seq)
            self._last = max(self._last, *seqs)
            self._cond.notify_all()
        return prepared

    def _decode(self, seq: int, payload: bytes) -> event_pb2.Event:
        out = event_pb2.Event.FromString(payload)
        out.sequence = seq
        out.name = event_name(seq)
        return out

    def page(self, *, after_seq: int = 0, before_seq: int | None = None, limit: int = 100,
             newest_first: bool = False) -> list[event_pb2.Event]:
        """Stored events (see :meth:`FleetStore.events`), decoded."""
        return [self._decode(r.seq, r.payload)
                for r in self._store.events(after_seq=after_seq, before_seq=before_seq, limit=limit,
                                            newest_first=newest_first)]

    def watch(self, after_seq: int, stop: Callable[[], bool]) -> Iterator[event_pb2.Event]:
        """Every event with a sequence above ``after_seq``, in order: the
        stored ones, then live ones, until ``stop()`` is true (checked at
        least every :data:`WATCH_POLL_SECONDS`)."""
        seen = after_seq
        while not stop():
            batch = self.page(after_seq=seen, limit=CATCH_UP_BATCH)
            for e in batch:
                seen = e.sequence
                yield e
            if len(batch) == CATCH_UP_BATCH:
                continue
            self._wait_after(seen)

    def _wait_after(self, seq: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._last > seq, timeout=WATCH_POLL_SECONDS)
