"""The four shapes of a gRPC method handler, for the interceptors that rewrap
a handler around its behaviour (the aio bridge, the authorizer), and the
request decoding they share.

**Undecodable requests.** grpc ends a call whose request does not parse
(corrupt wire format, a string field that is not UTF-8) with ``INTERNAL``
or ``UNKNOWN`` before any Breakwater code runs. The servers decode with
:func:`lenient`, which hands such a request on as an :class:`Undecodable`,
and the error mapping passes every request through :func:`decoded`, which
raises an :class:`~controller.errors.InputError`: ``INVALID_ARGUMENT``,
"request: not a valid breakwater.v1.GetRuleRequest (...)".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from ..errors import InputError

__all__ = ["HANDLER_KINDS", "MAKE_HANDLER", "Undecodable", "decoded", "decoded_stream", "lenient"]

HANDLER_KINDS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
"""The four shapes of a gRPC method, as ``grpc.RpcMethodHandler`` attributes name them."""
MAKE_HANDLER: Final[Mapping[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
"""A method handler of that shape, from its behaviour and codec (interceptors rewrap with it)."""


class Undecodable:
    """A request message that did not parse (what :func:`lenient` returns instead)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def error(self) -> InputError:
        return InputError(f"request: {self.why}")


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning an :class:`Undecodable` for bytes that do not parse."""
    if deserializer is None or getattr(deserializer, "lenient", False):
        return deserializer
    inner = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return inner(data)
        except DecodeError as exc:
            descriptor = getattr(getattr(inner, "__self__", None), "DESCRIPTOR", None)
            kind = getattr(descriptor, "full_name", "") or "request message"
            return Undecodable(f"not a valid {kind} ({str(exc)[:200]})")

    deserialize.lenient = True  # type: ignore[attr-defined]
    return deserialize


def decoded(request: Any) -> Any:
    """``request``, or its InputError if it did not parse; a request stream
    (sync or async) comes back as one that raises at its undecodable message."""
    if isinstance(request, Undecodable):
        raise request.error()
    if hasattr(request, "__aiter__"):
        return _adecoded(request)
    if isinstance(request, Iterator) or hasattr(request, "__next__"):
        return decoded_stream(request)
    return request


def decoded_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for item in requests:
        if isinstance(item, Undecodable):
            raise item.error()
        yield item


async def _adecoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for item in requests:
        if isinstance(item, Undecodable):
            raise item.error()
        yield item
