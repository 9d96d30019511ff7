"""A grpc.aio server on an event loop of its own thread, driven the way a
sync program drives a ``grpc.Server`` (the controller daemon is one).

:func:`create_threaded_aio_server` takes
:func:`~controller.api.server.create_server`'s arguments and returns an
:class:`AioServerThread` (start, stop, wait_for_termination) over
:func:`~controller.api.aio.create_aio_server`; :func:`finish_tasks` ends a
stopped server's calls before its loop closes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import _async as aio_health
from grpc_health.v1 import health

from ..errors import SetupError
from .aio import create_aio_server
from .auth import Authorizer
from .server import DEFAULT_MAX_WORKERS, Service

__all__ = ["AioServerThread", "create_threaded_aio_server", "finish_tasks"]

_T = TypeVar("_T")


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
    authorizer: Authorizer | None = None,
) -> tuple[AioServerThread, int]:
    """:func:`~controller.api.server.create_server`'s drop-in for a sync program that serves many
    streams: the same arguments, an :class:`AioServerThread` (not started)
    and the port. Plain servicer methods run on ``max_workers`` threads,
    coroutine ones on the server's loop; sync ``interceptors`` and a sync
    ``health_servicer`` work as on create_server."""
    out = AioServerThread()
    try:
        out._server, port = out.run(create_aio_server(
            address, services, health_servicer=health_servicer, credentials=credentials,
            interceptors=interceptors, migration_workers=max_workers, authorizer=authorizer))
    except BaseException:
        out.stop(None).wait()
        raise
    return out, port
