"""A grpc.aio server on its own event loop thread, for tests that talk to it
over real channels (sync or aio) from the test's thread.

    with LoopThread() as lt:
        server, port = lt.run(create_aio_server("127.0.0.1:0", services))
        lt.run(server.start())
        ... grpc.insecure_channel(f"127.0.0.1:{port}") ...

``run`` runs a coroutine on the loop and returns its result; leaving the
block stops every server started through :meth:`serve` and the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from controller.api.aio import create_aio_server
from controller.api.aiothread import finish_tasks
from controller.api.server import Service

__all__ = ["LoopThread"]

_T = TypeVar("_T")
TIMEOUT = 10.0


class LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-aio-loop", daemon=True)
        self._servers: list[grpc.aio.Server] = []

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for server in reversed(self._servers):
            self.run(server.stop(grace=None))
        self.run(finish_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, _T] | Awaitable[_T], timeout: float = TIMEOUT) -> _T:
        """Run ``coro`` on the loop, wait for its result."""
        async def wrap() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def call(self, fn: Callable[[], _T], timeout: float = TIMEOUT) -> _T:
        """Run plain ``fn`` on the loop's thread, wait for its result."""
        async def wrap() -> _T:
            return fn()

        return self.run(wrap(), timeout)

    def serve(self, services: Sequence[Service], **kwargs: Any) -> int:
        """Start an aio server on 127.0.0.1:0 with ``services``; its port."""
        async def start() -> tuple[grpc.aio.Server, int]:
            server, port = await create_aio_server("127.0.0.1:0", services, **kwargs)
            await server.start()
            return server, port

        server, port = self.run(start())
        self._servers.append(server)
        return port
