"""The four shapes of a gRPC method handler, for the interceptors that rewrap
a handler around its behaviour (the aio bridge, the authorizer), and the
decoding of a unary request inside the error mapping.

gRPC parses a unary request before any behaviour runs, and a request that
does not parse ends the call ``UNKNOWN`` with the parser's text (grpc.aio)
or ``INTERNAL`` (the thread-pool server), outside Breakwater's error
mapping. :func:`decoding` wraps a request deserializer so that such bytes
become an :class:`Undecodable`, and the behaviours the error interceptors
build call :func:`decoded` first: the parser's error is then raised inside
the mapping, which answers ``INVALID_ARGUMENT`` (a streamed request is
parsed when the servicer reads it, already inside the mapping)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

__all__ = ["HANDLER_KINDS", "MAKE_HANDLER", "Undecodable", "decoded", "decoding"]

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
    """A unary request whose bytes did not parse, carried to the behaviour."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that hands on an :class:`Undecodable` instead of raising."""
    if deserializer is None:
        return None
    parse = deserializer

    def decode(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return Undecodable(exc)

    return decode


def decoded(request: Any) -> Any:
    """``request`` itself; the parser's DecodeError if it did not parse."""
    if isinstance(request, Undecodable):
        raise request.error
    return request
