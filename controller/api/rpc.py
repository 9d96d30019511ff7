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

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from ..errors import (
    AlreadyExistsError,
    BreakwaterError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    InputError,
    MapFullError,
    NotFoundError,
    RemoteError,
    SetupError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "RESOURCE_TYPES",
    "SERVER_KEEPALIVE_SECONDS",
    "SERVER_KEEPALIVE_TIMEOUT_SECONDS",
    "STATUS_CODES",
    "AioServerThread",
    "ErrorInterceptor",
    "Service",
    "code_of",
    "create_aio_server",
    "create_server",
    "create_threaded_aio_server",
    "finish_tasks",
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

SERVER_KEEPALIVE_SECONDS: Final = 60.0
"""How often an aio server pings each client connection (HTTP/2 keepalive) ..."""
SERVER_KEEPALIVE_TIMEOUT_SECONDS: Final = 20.0
"""... and how long it waits for the answer before closing the connection."""

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


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code a servicer's exception becomes (for interceptors
    that count calls by code: they run inside the mapping)."""
    if isinstance(exc, grpc.RpcError) and not isinstance(exc, grpc.Call):
        return grpc.StatusCode.CANCELLED  # the server's own error for a cancelled stream
    return _code(exc)


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


# --- aio server ----------------------------------------------------------------------
#
# The controller holds one long sync stream per agent: on a thread-per-call
# server that is one pool thread per agent, so it serves them on grpc.aio
# instead. Servicers may be written either way on it: coroutine (and async
# generator) methods run on the event loop; plain methods and generators run
# on a thread pool (``migration_workers`` threads) with a context that has the
# sync API (invocation_metadata, peer, is_active, abort, ...), so a servicer
# written for create_server works unchanged. Errors map as on create_server.


class _Aborted(Exception):
    """A sync servicer called abort(): the status to end its call with."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: Any = ()


class SyncContext:
    """A ``grpc.ServicerContext`` for a sync servicer method on an aio
    server: reads go to the aio context, abort raises (the wrapper ends the
    call with the status), ``send_initial_metadata`` runs on the loop."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._context = context
        self._loop = loop

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def peer_identities(self) -> Any:
        return self._context.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._context.peer_identity_key()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def is_active(self) -> bool:
        """False once the call is over (the client cancelled or went away)."""
        return not self._context.done()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        def done(_ctx: grpc.aio.ServicerContext[Any, Any]) -> None:
            callback()

        self._context.add_done_callback(done)  # type: ignore[arg-type]  # the stub wants its own class
        return True

    def set_code(self, code: grpc.StatusCode) -> None:
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._context.set_trailing_metadata(trailing_metadata)

    def code(self) -> grpc.StatusCode | None:
        code: grpc.StatusCode | None = self._context.code()
        return code

    def details(self) -> str | None:
        details: str | None = self._context.details()
        return details

    def send_initial_metadata(self, initial_metadata: Any) -> None:
        asyncio.run_coroutine_threadsafe(self._context.send_initial_metadata(initial_metadata),
                                         self._loop).result()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(_Status(code, details))

    def abort_with_status(self, status: grpc.Status) -> NoReturn:
        raise _Aborted(status)


_END: Final = object()  # end of a request stream handed to a sync servicer


class _SyncRequests:
    """An aio request stream as the blocking iterator a sync servicer reads."""

    def __init__(self, requests: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._requests = requests.__aiter__()
        self._loop = loop

    async def _next(self) -> Any:
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return _END

    def __iter__(self) -> _SyncRequests:
        return self

    def __next__(self) -> Any:
        item = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
        if item is _END:
            raise StopIteration
        return item


def _aio_passes(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """As :func:`_passes`, on an aio server: grpc's own abort, and a call
    whose status the servicer already set."""
    if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
        return True
    if isinstance(exc, grpc.RpcError) and not isinstance(exc, grpc.Call):
        return True
    return not isinstance(exc, NotImplementedError) and context.code() is not None


async def _aio_abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> NoReturn:
    if isinstance(exc, _Aborted):
        await context.abort_with_status(exc.status)
    code = _code(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, RemoteError):
        LOGGER.error("%s failed", method, exc_info=exc)
    elif code is not grpc.StatusCode.UNIMPLEMENTED:
        LOGGER.info("%s: %s: %s", method, code.name, exc)
    await context.abort_with_status(status_of(exc, method))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


_KINDS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_MAKE: Final[Mapping[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class _Replay:
    """What a coroutine behaviour did, replayed through a sync interceptor's
    wrapper: the wrapper calls :meth:`behaviour` (as it would the servicer
    method) and sees the same result, items and exception."""

    def __init__(self, streaming: bool) -> None:
        self._streaming = streaming
        self._next: tuple[str, Any] = ("done", None)

    def put(self, kind: str, value: Any = None) -> None:
        self._next = (kind, value)

    def _take(self) -> Any:
        kind, value = self._next
        self._next = ("done", None)
        if kind == "error":
            raise value
        return kind, value

    def _items(self) -> Iterator[Any]:
        while True:
            kind, value = self._take()
            if kind == "done":
                return
            yield value

    def behaviour(self, _request: Any, _context: Any) -> Any:
        if self._streaming:
            return self._items()
        return self._take()[1]


def _behaviour(handler: grpc.RpcMethodHandler[Any, Any]) -> tuple[str, Callable[..., Any]]:
    for kind in _KINDS:
        fn = getattr(handler, kind)
        if fn is not None:
            return kind, fn
    raise InputError(f"a method handler without a behaviour: {handler!r}")


class _Bridge:
    """One call's behaviour made fit for the aio server: inside the error
    mapping, through the sync ``interceptors`` (outermost first), sync
    behaviours on ``pool``."""

    def __init__(self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler[Any, Any],
                 pool: futures.Executor, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self.details = details
        self.method = details.method
        self.handler = handler
        self.kind, self.fn = _behaviour(handler)
        self.pool = pool
        self.interceptors = interceptors
        self.codec: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                                      "response_serializer": handler.response_serializer}

    @property
    def streaming_request(self) -> bool:
        return self.kind.startswith("stream_")

    @property
    def streaming_response(self) -> bool:
        return self.kind.endswith("_stream")

    def _wrapped(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as the sync interceptors wrap it (each may also refuse the call)."""
        handler = _MAKE[self.kind](fn, **self.codec)
        for interceptor in reversed(self.interceptors):
            def continuation(_d: grpc.HandlerCallDetails, h: grpc.RpcMethodHandler[Any, Any] = handler
                             ) -> grpc.RpcMethodHandler[Any, Any]:
                return h
            got = interceptor.intercept_service(continuation, self.details)
            if got is None:
                raise NotImplementedError(f"{self.method} is not served here")
            handler = got
        return _behaviour(handler)[1]

    def handler_for_aio(self) -> grpc.RpcMethodHandler[Any, Any]:
        is_async = inspect.iscoroutinefunction(self.fn) or inspect.isasyncgenfunction(self.fn)
        if self.streaming_response:
            behaviour = self._stream_async() if is_async else self._stream_sync()
        else:
            behaviour = self._unary_async() if is_async else self._unary_sync()
        return _MAKE[self.kind](behaviour, **self.codec)

    # -- coroutine behaviours: on the loop; interceptors see a replay --

    def _unary_async(self) -> Callable[..., Any]:
        fn, method = self.fn, self.method
        replay = _Replay(streaming=False)
        outer = self._wrapped(replay.behaviour) if self.interceptors else None

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                try:
                    result = await fn(request, context)
                except Exception as exc:
                    if outer is None:
                        raise
                    replay.put("error", exc)
                else:
                    if outer is None:
                        return result
                    replay.put("value", result)
                return outer(request, SyncContext(context, asyncio.get_running_loop()))
            except Exception as exc:
                if _aio_passes(exc, context):
                    raise
                await _aio_abort(context, exc, method)

        return call

    def _stream_async(self) -> Callable[..., Any]:
        fn, method = self.fn, self.method
        replay = _Replay(streaming=True)
        outer = self._wrapped(replay.behaviour) if self.interceptors else None

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            seen: Iterator[Any] | None = None
            if outer is not None:
                seen = iter(outer(request, SyncContext(context, asyncio.get_running_loop())))
            try:
                async for item in fn(request, context):
                    if seen is None:
                        yield item
                        continue
                    replay.put("value", item)
                    yield next(seen)
                if seen is not None:
                    replay.put("done")
                    for extra in seen:  # normally none: the wrapper ends with the behaviour
                        yield extra
            except Exception as exc:
                if seen is not None:
                    replay.put("error", exc)
                    try:
                        next(seen)
                    except Exception as seen_exc:  # the interceptor saw it and let it through (or another)
                        exc = seen_exc
                    seen = None
                if _aio_passes(exc, context):
                    raise exc from None
                await _aio_abort(context, exc, method)
            finally:
                close = getattr(seen, "close", None)
                if close is not None:  # ended early (cancelled): the wrapper sees GeneratorExit
                    close()

        return stream

    # -- plain behaviours: on the pool, with a SyncContext --

    def _unary_sync(self) -> Callable[..., Any]:
        fn = self._wrapped(self.fn) if self.interceptors else self.fn
        method, pool, streaming_request = self.method, self.pool, self.streaming_request

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            loop = asyncio.get_running_loop()
            if streaming_request:
                request = _SyncRequests(request, loop)
            run = functools.partial(contextvars.copy_context().run, fn, request, SyncContext(context, loop))
            try:
                return await loop.run_in_executor(pool, run)
            except Exception as exc:
                if _aio_passes(exc, context):
                    raise
                await _aio_abort(context, exc, method)

        return call

    def _stream_sync(self) -> Callable[..., Any]:
        fn = self._wrapped(self.fn) if self.interceptors else self.fn
        method, pool, streaming_request = self.method, self.pool, self.streaming_request

        def step(items: Iterator[Any]) -> Any:
            return next(items, _END)

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            loop = asyncio.get_running_loop()
            if streaming_request:
                request = _SyncRequests(request, loop)
            items = iter(fn(request, SyncContext(context, loop)))
            try:
                while True:
                    item = await loop.run_in_executor(pool, step, items)
                    if item is _END:
                        return
                    yield item
            except Exception as exc:
                if _aio_passes(exc, context):
                    raise
                await _aio_abort(context, exc, method)
            finally:
                close = getattr(items, "close", None)
                if close is not None:  # a generator left early: run its finally blocks on the pool
                    await loop.run_in_executor(pool, close)

        return stream


class AioErrorInterceptor(grpc.aio.ServerInterceptor):
    """:class:`ErrorInterceptor` for an aio server: every method of the named
    services runs inside the error mapping, plain (sync) methods on ``pool``
    with a :class:`SyncContext`, and through the sync ``interceptors`` (as on
    create_server, inside the mapping; for a coroutine method they see a
    replay of what it returned, yielded and raised, on the loop thread, so
    they must not block)."""

    def __init__(self, services: Sequence[str], pool: futures.Executor,
                 interceptors: Sequence[grpc.ServerInterceptor] = ()) -> None:
        self._services = frozenset(services)
        self._pool = pool
        self._interceptors = tuple(interceptors)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.lstrip("/").rsplit("/", 1)[0] not in self._services:
            return handler
        return _Bridge(handler_call_details, handler, self._pool, self._interceptors).handler_for_aio()


async def create_aio_server(
    address: str,
    services: Sequence[Service],
    *,
    health_servicer: aio_health.HealthServicer | health.HealthServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor | grpc.aio.ServerInterceptor] = (),
    migration_workers: int = DEFAULT_MAX_WORKERS,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """:func:`create_server` on grpc.aio, for servers of many long streams
    (the controller: one sync stream per agent). Call it on the event loop
    that will run the server; it returns the server unstarted (``await
    server.start()``) and its port. Services may mix coroutine and plain
    methods (see the comment above :class:`SyncContext`); plain ones run on
    ``migration_workers`` threads. ``health_servicer`` is grpc_health's aio
    one (its ``set`` is a coroutine) or the sync one (served on the pool).
    ``interceptors``: sync ones run inside the error mapping as on
    create_server (see :class:`AioErrorInterceptor`), aio ones after it.
    The server pings its clients every :data:`SERVER_KEEPALIVE_SECONDS`, so
    the stream of a client that vanished ends soon (``options`` may
    override any grpc channel argument)."""
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise InputError(f"services: a service is given twice: {', '.join(names)}")
    plain = [i for i in interceptors if isinstance(i, grpc.ServerInterceptor)]
    aio_ones = [i for i in interceptors if isinstance(i, grpc.aio.ServerInterceptor)]
    hs = health_servicer or aio_health.HealthServicer()
    bridged = names if isinstance(hs, aio_health.HealthServicer) else [*names, health.SERVICE_NAME]
    pool = futures.ThreadPoolExecutor(max_workers=migration_workers, thread_name_prefix="breakwater-rpc")
    server = grpc.aio.server(
        migration_thread_pool=pool,
        interceptors=[AioErrorInterceptor(bridged, pool, plain), *aio_ones],
        # as create_server: refuse a busy port rather than share it; ping idle
        # peers, so a stream whose agent vanished (its link cut) ends within
        # a minute or so instead of at TCP's retransmission timeout
        options=[("grpc.so_reuseport", 0),
                 ("grpc.keepalive_time_ms", int(SERVER_KEEPALIVE_SECONDS * 1000)),
                 ("grpc.keepalive_timeout_ms", int(SERVER_KEEPALIVE_TIMEOUT_SECONDS * 1000)),
                 *options],
    )
    for service in services:
        service.add(server)  # type: ignore[arg-type]  # generated add_*_to_server takes either server
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    for name in ("", *names):
        if isinstance(hs, aio_health.HealthServicer):
            await hs.set(name, health_pb2.HealthCheckResponse.SERVING)
        else:
            hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        port = (server.add_secure_port(address, credentials) if credentials is not None
                else server.add_insecure_port(address))
    except RuntimeError as exc:
        pool.shutdown(wait=False)
        raise SetupError(f"{address}: cannot listen ({exc}); is the port in use?") from exc
    if port == 0:
        pool.shutdown(wait=False)
        raise SetupError(f"{address}: cannot listen; is the port in use?")
    return server, port


async def finish_tasks(timeout: float = 5.0) -> None:
    """Cancel the loop's other tasks and wait for them (``timeout`` seconds
    at most), as ``asyncio.run`` does before it closes a loop: a stopped
    server's calls end here instead of being destroyed pending."""
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class AioServerThread:
    """A grpc.aio server on its own event-loop thread, driven with the calls
    a sync program makes on a ``grpc.Server``: :meth:`start`, :meth:`stop`
    (returns an event set once stopped, so ``stop(grace).wait()`` works) and
    :meth:`wait_for_termination`. Made by :func:`create_threaded_aio_server`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="breakwater-aio", daemon=True)
        self._thread.start()
        self._server: grpc.aio.Server | None = None
        self._stopped = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()

    def run(self, coro: Awaitable[_T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the server's loop and wait for its result."""
        async def wrap() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    @property
    def server(self) -> grpc.aio.Server:
        if self._server is None:
            raise SetupError("the aio server is not built yet")
        return self._server

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (calls in flight get ``grace`` seconds; None: none),
        then the loop; the event is set when both are done."""
        with self._lock:
            first, self._stopping = not self._stopping, True
        if first:
            async def stop() -> None:
                try:
                    if self._server is not None:
                        await self._server.stop(grace)
                    await finish_tasks()
                finally:
                    self.loop.call_soon(self.loop.stop)

            asyncio.run_coroutine_threadsafe(stop(), self.loop)
            threading.Thread(target=self._finish, name="breakwater-aio-stop", daemon=True).start()
        return self._stopped

    def _finish(self) -> None:
        self._thread.join()
        self.loop.close()
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True once stopped; False if ``timeout`` passed first."""
        return self._stopped.wait(timeout)


def create_threaded_aio_server(
    address: str,
    services: Sequence[Service],
    *,
    health_servicer: health.HealthServicer | aio_health.HealthServicer | None = None,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.ServerInterceptor | grpc.aio.ServerInterceptor] = (),
    max_workers: int = DEFAULT_MAX_WORKERS,
) -> tuple[AioServerThread, int]:
    """:func:`create_server`'s drop-in for a sync program that serves many
    streams: the same arguments, an :class:`AioServerThread` (not started)
    and the port. Plain servicer methods run on ``max_workers`` threads,
    coroutine ones on the server's loop; sync ``interceptors`` and a sync
    ``health_servicer`` work as on create_server."""
    out = AioServerThread()
    try:
        out._server, port = out.run(create_aio_server(
            address, services, health_servicer=health_servicer, credentials=credentials,
            interceptors=interceptors, migration_workers=max_workers))
    except BaseException:
        out.stop(None).wait()
        raise
    return out, port


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

