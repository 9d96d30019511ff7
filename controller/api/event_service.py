"""EventService (``breakwater.v1.EventService``): the event log listed and
watched over an :class:`~controller.api.backends.EventBackend`.

ListEvents pages newest first (as :mod:`controller.api.pages` says, 50
by default, keyed by the sequence of the oldest event returned);
WatchEvents without ``after_sequence`` streams only new events, with it
replays what is kept after it first (FAILED_PRECONDITION if some of those
were pruned, or if the sequence is beyond the end of this log), and ends
when the client cancels or the server stops. Each WatchEvents holds one of
the server's :class:`~controller.api.limits.StreamLimits` while it is open
(per caller and in total: ``RESOURCE_EXHAUSTED`` past them), so idle
watchers cannot take every worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Final

import grpc

from breakwater.v1 import event_pb2, event_service_pb2, event_service_pb2_grpc

from ..errors import FailedPreconditionError, FieldError
from .backends import EventBackend
from .filtering import EVENT_FILTER, compile_filter
from .limits import StreamLimits, caller_key
from .pages import decode_page_token, encode_page_token, page_size, take_page

__all__ = ["DEFAULT_EVENT_PAGE", "EventServicer"]

DEFAULT_EVENT_PAGE: Final = 50
"""Events per ListEvents page when the request says 0."""
EVENT_SCAN_BATCH: Final = 500
"""Events read per step while looking for the ones a filter selects."""


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    """breakwater.v1.EventService over an :class:`~controller.api.backends.EventBackend`.
    Setting ``stopping`` ends every WatchEvents stream (cleanly) within the
    event log's poll interval: a server about to stop sets it."""

    def __init__(self, events: EventBackend, *, stopping: threading.Event | None = None,
                 limits: StreamLimits | None = None) -> None:
        self._events = events
        self._stopping = stopping or threading.Event()
        self.limits = limits or StreamLimits(what="WatchEvents streams")

    def _newest_first(self, before: int | None, step: int) -> Iterator[event_pb2.Event]:
        """Kept events older than ``before`` (None: all), newest first, read ``step`` at a time."""
        while True:
            batch = self._events.page(before_seq=before, limit=step, newest_first=True)
            yield from batch
            if len(batch) < step or not batch:
                return
            before = batch[-1].sequence

    def ListEvents(self, request: event_service_pb2.ListEventsRequest,
                   context: grpc.ServicerContext) -> event_service_pb2.ListEventsResponse:
        size = page_size(request.page_size, DEFAULT_EVENT_PAGE)
        selected = compile_filter(request.filter, EVENT_FILTER)
        before = decode_page_token(request.page_token, "event", selected.fingerprint)
        if before is not None and (not isinstance(before, int) or isinstance(before, bool) or before < 1):
            raise FieldError("page_token", "not a page token of event listings")
        step = size + 1 if selected.empty else max(EVENT_SCAN_BATCH, size + 1)
        page, more = take_page((e for e in self._newest_first(before, step) if selected(e)), size)
        token = encode_page_token("event", selected.fingerprint, page[-1].sequence) if more else ""
        return event_service_pb2.ListEventsResponse(events=page, next_page_token=token)

        token = encode_page_token("event", selected.fingerprint, page[-1].sequence) if more else ""
        return event_service_pb2.ListEventsResponse(events=page, next_page_token=token)

    def _start(self, request: event_service_pb2.WatchEventsRequest) -> int:
        last = self._events.last_sequence
        if not request.HasField("after_sequence"):
            return last
        after = request.after_sequence
        if after > last:
            raise FailedPreconditionError(
                f"after_sequence {after} is beyond the end of this event log ({last}); "
                "it comes from another log: watch without after_sequence, or from 0")
        oldest = self._events.page(limit=1)
        first = oldest[0].sequence if oldest else last + 1
        if after + 1 < first:
            raise FailedPreconditionError(
                f"events {after + 1}..{first - 1} have been pruned from the log; the oldest kept is "
                f"{first}: watch from after_sequence {first - 1} (or list what is kept with ListEvents)")
        return after

    def WatchEvents(self, request: event_service_pb2.WatchEventsRequest,
                    context: grpc.ServicerContext) -> Iterator[event_pb2.Event]:
        selected = compile_filter(request.filter, EVENT_FILTER)
        after = self._start(request)
        with self.limits.hold(caller_key(context)):
            for e in self._events.watch(after, lambda: self._stopping.is_set() or not context.is_active()):
                if selected(e):
                    yield e
