"""``breakwater.v1.SyncService`` over the :class:`~controller.fleet.synchub.SyncHub`:
the servicer (:class:`SyncServicer`, coroutine methods for grpc.aio) and
its registration as a :class:`~controller.api.server.Service`
(:func:`sync_service`), whose serializer passes the hub's bytes through.

On a TLS server the node is the one the peer's certificate names
(``breakwater://node/<id>``, :func:`controller.api.auth.principal_of`): a
Register for another node id is ``PERMISSION_DENIED``, so one node can
neither take another's stream nor report telemetry or events in its name
(everything a stream carries is recorded for the stream's node).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from breakwater.v1 import sync_service_pb2

from ..api.auth import principal_of
from ..api.handlers import decoded
from ..api.server import Service
from ..errors import FieldError, PermissionDeniedError
from .synchub import SyncHub

__all__ = ["SYNC_SERVICE", "SyncServicer", "sync_service"]

SYNC_SERVICE: Final = "breakwater.v1.SyncService"


class SyncServicer:
    """``breakwater.v1.SyncService`` over a :class:`SyncHub` (coroutine
    methods: serve it on grpc.aio). Responses are yielded serialized, so
    every stream of a group sends the same bytes; :func:`sync_service`
    registers it with a serializer that passes bytes through."""

    def __init__(self, hub: SyncHub) -> None:
        self.hub = hub

    async def Sync(self, request_iterator: AsyncIterator[sync_service_pb2.SyncRequest],
                   context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        hub = self.hub
        first = await context.read()  # the request iterator wraps read(): skip a layer per message
        if first is grpc.aio.EOF:
            return
        first = decoded(first)  # a message that did not parse: INVALID_ARGUMENT
        if first.WhichOneof("message") != "register":
            raise FieldError("register", "the first message of a stream must be register (got "
                                         f"{first.WhichOneof('message') or 'an empty message'})")
        principal = principal_of(context)
        if principal is not None and first.register.node_id != principal.node_id:
            raise PermissionDeniedError(
                f"register.node_id: {first.register.node_id!r} is not this certificate's node "
                f"({principal.name}); a node registers only as itself")
        st = await hub.open(first.register, principal.name if principal else context.peer(),
                            principal.serial if principal else 0)
        loop = asyncio.get_running_loop()
        reader = loop.create_task(hub.read(st, context))
        try:
            while True:
                while st.outbox:
                    yield st.outbox.popleft()
                if st.ended:
                    break
                st.waiter = loop.create_future()
                await st.waiter
                st.waiter = None
            if st.error is not None:
                raise st.error
        finally:
            reader.cancel()
            hub.close_stream(st)


def _serialize(message: bytes | Any) -> bytes:
    if isinstance(message, bytes):
        return message
    out: bytes = message.SerializeToString()
    return out


def sync_service(servicer: SyncServicer) -> Service:
    """The servicer as a :class:`~controller.api.server.Service` (for any grpc.aio server)."""
    def add(server: grpc.Server) -> None:
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.Sync, request_deserializer=sync_service_pb2.SyncRequest.FromString,
            response_serializer=_serialize)
        generic = grpc.method_handlers_generic_handler(SYNC_SERVICE, {"Sync": handler})
        server.add_generic_rpc_handlers((generic,))

    return Service(SYNC_SERVICE, add)
