"""The four shapes of a gRPC method handler, for the interceptors that rewrap
a handler around its behaviour (the aio bridge, the authorizer)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import grpc

__all__ = ["HANDLER_KINDS", "MAKE_HANDLER"]

HANDLER_KINDS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
"""The four shapes of a gRPC method, as ``grpc.RpcMethodHandler`` attributes name them."""
MAKE_HANDLER: Final[Mapping[str, Callable[..., grpc.RpcMethodHandler[Any, Any]]]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}
"""A method handler of that shape, from its behaviour and codec (interceptors rewrap with it)."""
