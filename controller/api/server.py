"""The thread-pool gRPC server Breakwater serves its APIs on: its services,
health, reflection and the error mapping around every method.

:func:`create_server` builds a ``grpc.Server`` with the given
:class:`Service` s, the standard health service (``grpc.health.v1``, every
service and the server as a whole ``SERVING``) and server reflection, so
``grpcurl -plaintext HOST:PORT list`` works. It returns ``(server, port)``
unstarted, so tests bind ``127.0.0.1:0`` and talk over a real channel.

Every method of those services runs inside :class:`ErrorInterceptor`: a
servicer raises Breakwater errors and never touches status codes; the
mapping is :mod:`controller.api.status`'s. The grpc.aio server
(:mod:`controller.api.aio`) shares this one's checks of the services, its
reflection and its listening (:func:`service_names`, :func:`add_reflection`,
:func:`listen`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import InputError, SetupError
from .auth import AuthInterceptor, Authorizer
from .handlers import decoded, decoding
from .status import is_cancelled, report_failure

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "POOL_THREAD_PREFIX",
    "ErrorInterceptor",
    "Service",
    "add_reflection",
    "create_server",
    "listen",
    "service_names",
]


DEFAULT_MAX_WORKERS: Final = 32
"""Threads serving calls. A streaming call holds one for as long as it is
open, so a server of many long streams needs more (or grpc.aio)."""

POOL_THREAD_PREFIX: Final = "breakwater-rpc"
"""Name prefix of the threads that run servicer methods (sync and aio servers)."""

_T = TypeVar("_T")


# --- the error mapping around every method -----------------------------------------------


def _has_status(context: grpc.ServicerContext) -> bool:
    """Whether the servicer already set a code (``context.abort`` raises after setting one)."""
    code = getattr(context, "code", None)  # grpc's context has code(); its stubs do not say so
    return callable(code) and code() is not None


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
    context.abort_with_status(report_failure(exc, method))


def _passes(exc: Exception, context: grpc.ServicerContext) -> bool:
    """Exceptions to leave to grpc: the server's own RpcError for a cancelled
    request stream, and a servicer that already set its status."""
    if is_cancelled(exc):
        return True
    return not isinstance(exc, NotImplementedError) and _has_status(context)


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(decoded(request), context)
        except Exception as exc:
            if _passes(exc, context):
                raise
            _abort(context, exc, method)

    return call


def _streaming(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(decoded(request), context)
        except Exception as exc:  # not GeneratorExit: a cancelled stream just closes
            if _passes(exc, context):
                raise
            _abort(context, exc, method)

    return call


def _decoding(fn: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    """``fn`` reading its request stream through :func:`decoded`."""
    def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return fn(map(decoded, requests), context)

    return call


class ErrorInterceptor(grpc.ServerInterceptor):
    """Runs every method of the named services inside the error mapping of
    :mod:`controller.api.status` (the health and reflection services are
    left alone)."""

    def __init__(self, services: Sequence[str]) -> None:
        self._services = frozenset(services)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").rsplit("/", 1)[0] not in self._services:
            return handler
        # every request decoded inside the mapping, streamed ones too: this
        # server would end the call INTERNAL itself on a message that does not parse
        codec: dict[str, Any] = {"request_deserializer": decoding(handler.request_deserializer),
                                 "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, method), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary(_decoding(handler.stream_unary), method),
                                                        **codec)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _streaming(_decoding(handler.stream_stream), method), **codec)
        return handler


# --- the server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One service to serve: its full name (``breakwater.v1.RuleService``)
    and how to add its servicer to a server."""

    name: str
    add: Callable[[grpc.Server], None]

    @classmethod
    def of(
        cls, descriptor: ServiceDescriptor, add_to_server: Callable[[_T, grpc.Server], None], servicer: _T
    ) -> Service:
        """From generated code, e.g. ``Service.of(rule_service_pb2.DESCRIPTOR.services_by_name
        ["RuleService"], rule_service_pb2_grpc.add_RuleServiceServicer_to_server, servicer)``."""
        return cls(descriptor.full_name, lambda server: add_to_server(servicer, server))


def service_names(services: Sequence[Service]) -> list[str]:
    """The services' full names; InputError if one is given twice."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise InputError(f"services: a service is given twice: {', '.join(names)}")
    return names


def add_reflection(server: grpc.Server | grpc.aio.Server, names: Sequence[str]) -> None:
    """Server reflection for the named services, health and reflection itself."""
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)


def listen(server: grpc.Server | grpc.aio.Server, address: str,
           credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address`` (TLS with ``credentials``, else plaintext); the port
    got. SetupError when the port cannot be had."""
    try:
        port: int = (server.add_secure_port(address, credentials) if credentials is not None
                     else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise SetupError(f"{address}: cannot listen ({exc}); is the port in use?") from exc
    if port == 0:
        raise SetupError(f"{address}: cannot listen; is the port in use?")
    return port


def create_server(
    address: str,
    services: Sequence[Service],
    *,
    health_servicer: health.HealthServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int = DEFAULT_MAX_WORKERS,
    authorizer: Authorizer | None = None,
) -> tuple[grpc.Server, int]:
    """A server listening on ``address`` (``host:port``; port 0 picks a free
    one) with ``services``, health and reflection; returns it unstarted and
    the port it got. ``health_servicer`` lets the caller flip statuses later
    (e.g. ``enter_graceful_shutdown()`` before stopping); ``credentials``
    serve TLS instead of plaintext. ``interceptors`` run inside the error
    mapping, so what they raise is converted too. ``authorizer`` checks
    every call's principal and role first (:mod:`controller.api.auth`)."""
    names = service_names(services)
    auth = [AuthInterceptor(authorizer)] if authorizer is not None else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=POOL_THREAD_PREFIX),
        interceptors=[*auth, ErrorInterceptor(names), *interceptors],
        # grpc sets SO_REUSEPORT by default, so a second server on a busy port
        # would bind without error and share its connections; refuse instead.
        options=[("grpc.so_reuseport", 0)],
    )
    for service in services:
        service.add(server)
    hs = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    for name in ("", *names):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    add_reflection(server, names)
    return server, listen(server, address, credentials)
