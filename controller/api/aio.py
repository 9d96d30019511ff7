"""The grpc.aio server Breakwater serves many long streams on (the
controller: one sync stream per agent), with the same services, health,
reflection and error mapping as :func:`controller.api.server.create_server`.

On a thread-per-call server a long stream holds one pool thread for as long
as it is open, so the controller serves its agents on grpc.aio instead.
Servicers may be written either way on it: coroutine (and async generator)
methods run on the event loop; plain methods and generators run on a thread
pool (``migration_workers`` threads) with a context that has the sync API
(:class:`SyncContext`: invocation_metadata, peer, is_active, abort, ...),
so a servicer written for create_server works unchanged. Errors map as on
create_server (:mod:`controller.api.status`), and sync interceptors wrap
every method as there (:class:`AioErrorInterceptor`). A sync program runs
this server on a thread of its own with :mod:`controller.api.aiothread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import InputError, SetupError
from .auth import AioAuthInterceptor, Authorizer
from .handlers import HANDLER_KINDS, MAKE_HANDLER, Undecodable, decoded, lenient
from .server import (
    DEFAULT_MAX_WORKERS,
    POOL_THREAD_PREFIX,
    SERVER_OPTIONS,
    Service,
    add_reflection,
    listen,
    service_names,
)
from .status import is_cancelled, report_failure

__all__ = [
    "SERVER_KEEPALIVE_SECONDS",
    "SERVER_KEEPALIVE_TIMEOUT_SECONDS",
    "AioErrorInterceptor",
    "SyncContext",
    "create_aio_server",
]

LOGGER = logging.getLogger("breakwater.rpc")

SERVER_KEEPALIVE_SECONDS: Final = 60.0
"""How often an aio server pings each client connection (HTTP/2 keepalive) ..."""
SERVER_KEEPALIVE_TIMEOUT_SECONDS: Final = 20.0
"""... and how long it waits for the answer before closing the connection."""
STEP_GRACE_SECONDS: Final = 10.0
"""How long a cancelled sync stream waits for its generator's running step to
end (it sees ``is_active()`` False) before leaving it to finish alone."""


# --- sync servicer methods on the aio server ---------------------------------------------


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
        self.left = False
        """Set when the call's task was cancelled (the client left): the aio
        context reports itself done only once the handler has returned."""

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
        return not (self.left or self._context.done())

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
        if isinstance(item, Undecodable):
            raise item.error()
        return item


def _call_decoded(fn: Callable[..., Any], request: Any, context: Any) -> Any:
    return fn(decoded(request), context)


def _aio_passes(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Exceptions to leave to grpc (as on create_server): grpc's own abort,
    the server's own RpcError for a cancelled call, and a call whose status
    the servicer already set."""
    if isinstance(exc, grpc.aio.AbortError | grpc.aio.UsageError):
        return True
    if is_cancelled(exc):
        return True
    return not isinstance(exc, NotImplementedError) and context.code() is not None


async def _aio_abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str) -> NoReturn:
    if isinstance(exc, _Aborted):
        await context.abort_with_status(exc.status)
    await context.abort_with_status(report_failure(exc, method))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


# --- one call's behaviour, bridged -----------------------------------------------------------




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
    for kind in HANDLER_KINDS:
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
        self.codec: dict[str, Any] = {"request_deserializer": lenient(handler.request_deserializer),
                                      "response_serializer": handler.response_serializer}

    @property
    def streaming_request(self) -> bool:
        return self.kind.startswith("stream_")

    @property
    def streaming_response(self) -> bool:
        return self.kind.endswith("_stream")

    def _wrapped(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as the sync interceptors wrap it (each may also refuse the call)."""
        handler = MAKE_HANDLER[self.kind](fn, **self.codec)
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
        return MAKE_HANDLER[self.kind](behaviour, **self.codec)

    # -- coroutine behaviours: on the loop; interceptors see a replay --

    def _unary_async(self) -> Callable[..., Any]:
        fn, method = self.fn, self.method
        replay = _Replay(streaming=False)
        outer = self._wrapped(replay.behaviour) if self.interceptors else None

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                try:
                    result = await fn(decoded(request), context)
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
                async for item in fn(decoded(request), context):
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
        plain = self.fn

        def checked(request: Any, context: Any) -> Any:
            return plain(decoded(request), context)

        fn = self._wrapped(checked) if self.interceptors else checked
        method, pool, streaming_request = self.method, self.pool, self.streaming_request

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            loop = asyncio.get_running_loop()
            if streaming_request:
                request = _SyncRequests(request, loop)
            run = functools.partial(contextvars.copy_context().run, _call_decoded, fn, request,
                                    SyncContext(context, loop))
            try:
                return await loop.run_in_executor(pool, run)
            except Exception as exc:
                if _aio_passes(exc, context):
                    raise
                await _aio_abort(context, exc, method)

        return call

    def _stream_sync(self) -> Callable[..., Any]:
        plain = self.fn

        def checked(request: Any, context: Any) -> Iterator[Any]:
            yield from plain(decoded(request), context)

        fn = self._wrapped(checked) if self.interceptors else checked
        method, pool, streaming_request = self.method, self.pool, self.streaming_request

        def step(items: Iterator[Any]) -> Any:
            return next(items, _END)

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            loop = asyncio.get_running_loop()
            if streaming_request:
                request = _SyncRequests(request, loop)
            elif isinstance(request, Undecodable):
                await _aio_abort(context, request.error(), method)
            sync_context = SyncContext(context, loop)
            items = iter(fn(request, sync_context))
            running: futures.Future[Any] | None = None
            try:
                while True:
                    running = pool.submit(step, items)
                    item = await asyncio.wrap_future(running, loop=loop)
                    running = None
                    if item is _END:
                        return
                    yield item
            except Exception as exc:
                if _aio_passes(exc, context):
                    raise
                await _aio_abort(context, exc, method)
            finally:
                sync_context.left = True
                if running is not None and not running.done():
                    # Cancelled while the servicer's generator runs a step on the pool: it
                    # must finish that step (is_active() is now False) before it can be
                    # closed, or close() raises "generator already executing".
                    with contextlib.suppress(BaseException):
                        await asyncio.wait_for(asyncio.wrap_future(running, loop=loop), STEP_GRACE_SECONDS)
                close = getattr(items, "close", None)
                if close is not None and (running is None or running.done()):
                    # a generator left early: run its finally blocks on the pool
                    await loop.run_in_executor(pool, close)
                elif close is not None:
                    LOGGER.warning("%s: the servicer's stream step did not end within %.0f s of the "
                                   "client leaving; its generator is left to finish on its own",
                                   method, STEP_GRACE_SECONDS)

        return stream


# --- the server --------------------------------------------------------------------------------


class AioErrorInterceptor(grpc.aio.ServerInterceptor):
    """:class:`~controller.api.server.ErrorInterceptor` for an aio server: every method of the named
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
    authorizer: Authorizer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """:func:`~controller.api.server.create_server` on grpc.aio, for servers
    of many long streams (the controller: one sync stream per agent). Call
    it on the event loop that will run the server; it returns the server
    unstarted (``await server.start()``) and its port. Services may mix
    coroutine and plain methods (see the module's docstring); plain ones run
    on ``migration_workers`` threads. ``health_servicer`` is grpc_health's aio
    one (its ``set`` is a coroutine) or the sync one (served on the pool).
    ``interceptors``: sync ones run inside the error mapping as on
    create_server (see :class:`AioErrorInterceptor`), aio ones after it.
    The server pings its clients every :data:`SERVER_KEEPALIVE_SECONDS`, so
    the stream of a client that vanished ends soon (``options`` may
    override any grpc channel argument). ``authorizer`` checks every call's
    principal and role before anything else (:mod:`controller.api.auth`)."""
    names = service_names(services)
    auth = [AioAuthInterceptor(authorizer)] if authorizer is not None else []
    plain = [i for i in interceptors if isinstance(i, grpc.ServerInterceptor)]
    aio_ones = [i for i in interceptors if isinstance(i, grpc.aio.ServerInterceptor)]
    hs = health_servicer or aio_health.HealthServicer()
    # reflection too: inside the mapping, a request that does not parse is
    # INVALID_ARGUMENT (grpc alone answers UNKNOWN with the parser's text)
    bridged = [*names, reflection.SERVICE_NAME,
               *(() if isinstance(hs, aio_health.HealthServicer) else (health.SERVICE_NAME,))]
    pool = futures.ThreadPoolExecutor(max_workers=migration_workers, thread_name_prefix=POOL_THREAD_PREFIX)
    server = grpc.aio.server(
        migration_thread_pool=pool,
        interceptors=[*auth, AioErrorInterceptor(bridged, pool, plain), *aio_ones],
        # as create_server: refuse a busy port rather than share it; ping idle
        # peers, so a stream whose agent vanished (its link cut) ends within
        # a minute or so instead of at TCP's retransmission timeout
        options=[("grpc.so_reuseport", 0), *SERVER_OPTIONS,
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
    add_reflection(server, names)
    try:
        port = listen(server, address, credentials)
    except SetupError:
        pool.shutdown(wait=False)
        raise
    return server, port
