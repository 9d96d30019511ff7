"""A byte relay from a Unix socket to a TCP port: the test's way into the
controller's namespace.

The controller listens on a TCP port inside its own network namespace,
which the test process (in the host's namespace) cannot reach. A Unix
socket is named by a path, not by a network namespace, so this relay, run
inside the controller's namespace, accepts on ``SOCKET`` and copies bytes
both ways to ``HOST:PORT`` there; the test dials ``unix:SOCKET`` with gRPC.
A connection the upstream refuses (the controller is down) is closed at
once, so the client sees an unavailable server, as it would directly.

Usage: ``python -m tests.cluster.relay SOCKET HOST PORT MAX_SECONDS``. It
logs ``{"event": "relay_ready"}`` on stderr once it listens, and exits by
itself after ``MAX_SECONDS`` (the fixture kills it long before).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(path: Path, host: str, port: int, max_seconds: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    server = await asyncio.start_unix_server(handle, path=str(path))
    print(json.dumps({"event": "relay_ready", "socket": str(path), "upstream": f"{host}:{port}"}),
          file=sys.stderr, flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.serve_forever(), max_seconds)


def main(argv: list[str]) -> int:
    path, host, port, max_seconds = Path(argv[0]), argv[1], int(argv[2]), float(argv[3])
    try:
        asyncio.run(_serve(path, host, port, max_seconds))
    finally:
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
