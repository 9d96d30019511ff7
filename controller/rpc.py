"""gRPC plumbing shared by Breakwater's servers and clients, and the one
place where Breakwater errors and gRPC statuses turn into each other.

Servers: :func:`create_server` builds a ``grpc.Server`` with the given
:class:`Service` s, the standard health service (``grpc.health.v1``, every
service and the server as a whole ``SERVING``) and server reflection, so
``grpcurl -plaintext HOST:PORT list`` works. It returns ``(server, port)``
unstarted, so tests bind ``127.0.0.1:0`` and talk over a real channel.

Every method of those services runs inside :class:`ErrorInterceptor`: a
servicer raises Breakwater errors and never touches status codes. The
mapping (:data:`STATUS_CODES`, first match wins):

==========================  ====================  =============================
error                       status                details
==========================  ====================  =============================
FieldError                  INVALID_ARGUMENT      BadRequest, one FieldViolation
InputError                  INVALID_ARGUMENT
NotFoundError               NOT_FOUND             ResourceInfo (when named)
AlreadyExistsError          ALREADY_EXISTS        ResourceInfo (when named)
EtagMismatchError           ABORTED               ResourceInfo (when named)
FailedPreconditionError     FAILED_PRECONDITION
CapacityError, MapFullError RESOURCE_EXHAUSTED
RemoteError                 its own code
NotImplementedError         UNIMPLEMENTED
other BreakwaterError       INTERNAL              (logged with its traceback)
anything else               INTERNAL              (logged; the client gets no text)
==========================  ====================  =============================

Details travel as ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer (grpcio-status). Clients get the same errors back from
:func:`from_rpc_error`, or by calling inside :func:`rpc_errors`:
``INVALID_ARGUMENT`` with a field violation is a :class:`FieldError` with
that field's path again, ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are an
:class:`UnavailableError` (worth retrying), any other code without an error
of its own a :class:`RemoteError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from .errors import (
    AlreadyExistsError,
    BreakwaterError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    InputError,
    MapFullError,
    NotFoundError,
    RemoteError,
    SetupError,
    UnavailableError,
)
from .rules import FieldError

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "RESOURCE_TYPES",
    "STATUS_CODES",
    "ErrorInterceptor",
    "Service",
    "create_server",
    "from_rpc_error",
    "rpc_errors",
    "status_of",
]

LOGGER = logging.getLogger("breakwater.rpc")

DEFAULT_MAX_WORKERS: Final = 32
"""Threads serving calls. A streaming call holds one for as long as it is
open, so a server of many long streams needs more (or grpc.aio)."""

STATUS_CODES: Final[tuple[tuple[type[BaseException], grpc.StatusCode], ...]] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (EtagMismatchError, grpc.StatusCode.ABORTED),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MapFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)
"""Error class -> status code, first match wins (RemoteError keeps its own
code; everything else is INTERNAL)."""

RESOURCE_TYPES: Final = {
    "rules": "breakwater.v1.Rule",
    "nodes": "breakwater.v1.Node",
    "events": "breakwater.v1.Event",
}
"""``google.rpc.ResourceInfo.resource_type`` by the collection of a resource name."""

_UNAVAILABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_T = TypeVar("_T")


# --- server side: errors -> statuses ---------------------------------------------------


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, RemoteError):
        return grpc.StatusCode.__members__.get(exc.code, grpc.StatusCode.INTERNAL)
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def status_of(exc: BaseException, method: str = "") -> grpc.Status:
    """The status a servicer's exception becomes (``method`` names the call
    in the message of an internal error, which is all a client learns of it)."""
    code = _code(exc)
    details: list[any_pb2.Any] = []
    if isinstance(exc, BreakwaterError | NotImplementedError):
        message = str(exc) or type(exc).__name__  # written for operators
    else:  # a bug: its text may show internals
        message = f"internal error in {method or 'the server'}; see the server's log"
    if isinstance(exc, FieldError):
        violation = error_details_pb2.BadRequest.FieldViolation(field=exc.path, description=exc.what)
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    resource = getattr(exc, "resource", "")
    if isinstance(exc, BreakwaterError) and isinstance(resource, str) and resource:
        kind = RESOURCE_TYPES.get(resource.split("/", 1)[0], "")
        details.append(_packed(error_details_pb2.ResourceInfo(
            resource_type=kind, resource_name=resource, description=message)))
    # grpc.StatusCode numbers its codes as google.rpc.Code does (a test checks it).
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _has_status(context: grpc.ServicerContext) -> bool:
    """Whether the servicer already set a code (``context.abort`` raises after setting one)."""
    code = getattr(context, "code", None)  # grpc's context has code(); its stubs do not say so
    return callable(code) and code() is not None


def _abort(context: grpc.ServicerContext, exc: Exception, method: str) -> NoReturn:
    code = _code(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, RemoteError):
        LOGGER.error("%s failed", method, exc_info=exc)
    elif code is not grpc.StatusCode.UNIMPLEMENTED:
        LOGGER.info("%s: %s: %s", method, code.name, exc)
    context.abort_with_status(status_of(exc, method))


def _passes(exc: Exception, context: grpc.ServicerContext) -> bool:
    """Exceptions to leave to grpc: the server's own RpcError for a cancelled
    request stream, and a servicer that already set its status."""
    if isinstance(exc, grpc.RpcError) and not isinstance(exc, grpc.Call):
        return True
    return not isinstance(exc, NotImplementedError) and _has_status(context)


def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(request, context)
        except Exception as exc:
            if _passes(exc, context):
                raise
            _abort(context, exc, method)

    return call


def _streaming(fn: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from fn(request, context)
        except Exception as exc:  # not GeneratorExit: a cancelled stream just closes
            if _passes(exc, context):
                raise
            _abort(context, exc, method)

    return call


class ErrorInterceptor(grpc.ServerInterceptor):
    """Runs every method of the named services inside the error mapping of
    this module (the health and reflection services are left alone)."""

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
        codec: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                                 "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), **codec)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, method), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, method), **codec)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, method), **codec)
        return handler


# --- server -------------------------------------------------------------------------


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


def create_server(
    address: str,
    services: Sequence[Service],
    *,
    health_servicer: health.HealthServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> tuple[grpc.Server, int]:
    """A server listening on ``address`` (``host:port``; port 0 picks a free
    one) with ``services``, health and reflection; returns it unstarted and
    the port it got. ``health_servicer`` lets the caller flip statuses later
    (e.g. ``enter_graceful_shutdown()`` before stopping); ``credentials``
    serve TLS instead of plaintext. ``interceptors`` run inside the error
    mapping, so what they raise is converted too."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise InputError(f"services: a service is given twice: {', '.join(names)}")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="breakwater-rpc"),
        interceptors=[ErrorInterceptor(names), *interceptors],
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
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise SetupError(f"{address}: cannot listen ({exc}); is the port in use?") from exc
    if port == 0:
        raise SetupError(f"{address}: cannot listen; is the port in use?")
    return server, port


# --- client side: statuses -> errors ---------------------------------------------------


def _details(exc: grpc.Call) -> tuple[list[Any], list[Any]]:
    """The BadRequest field violations and ResourceInfos of a failed call's status."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that contradict the status code: ignore them
        status = None
    violations: list[Any] = []
    resources: list[Any] = []
    for detail in [] if status is None else status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            resources.append(info)
    return violations, resources


def from_rpc_error(exc: grpc.RpcError) -> BreakwaterError:
    """The Breakwater error a failed call stands for (see the module's table)."""
    if not isinstance(exc, grpc.Call):
        return RemoteError(f"gRPC call failed: {exc}", "UNKNOWN")
    code = exc.code()
    message = exc.details() or code.name
    violations, resources = _details(exc)
    resource = str(resources[0].resource_name) if resources else ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        if violations:
            return FieldError(str(violations[0].field), str(violations[0].description))
        return InputError(message)
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message, resource)
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(message, resource)
    if code is grpc.StatusCode.ABORTED:
        return EtagMismatchError(message, resource)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityError(message)
    if code in _UNAVAILABLE:
        return UnavailableError(message, code.name)
    return RemoteError(message, code.name)


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn a ``grpc.RpcError`` raised inside into its Breakwater error."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc

