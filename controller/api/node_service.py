"""NodeService (``breakwater.v1.NodeService``): the fleet's nodes listed and
read over a :class:`~controller.api.backends.NodeBackend`.

Nodes page as :mod:`controller.api.pages` says, 100 by default, keyed by
node name. **Node health** is the backend's
(:class:`controller.fleet.backend.HealthPolicy`): UNREACHABLE when the node
has no sync stream, or has one but sent nothing for ``heartbeat_timeout``;
DEGRADED when connected but refusing its target version (``last_error``)
or behind it for longer than ``max_lag``; HEALTHY otherwise. ``lag`` is
the time since the node's target version was committed, zero once the
node applied it.
"""

from __future__ import annotations

import bisect
from typing import Final

import grpc
from google.protobuf import empty_pb2

from breakwater.v1 import node_pb2, node_service_pb2, node_service_pb2_grpc

from ..errors import FieldError
from .backends import NodeBackend
from .callers import caller
from .convert import parse_node_name
from .filtering import NODE_FILTER, compile_filter
from .pages import decode_page_token, encode_page_token, page_size, take_page

__all__ = ["DEFAULT_NODE_PAGE", "NodeServicer"]

DEFAULT_NODE_PAGE: Final = 100
"""Nodes per ListNodes page when the request says 0."""


class NodeServicer(node_service_pb2_grpc.NodeServiceServicer):
    """breakwater.v1.NodeService over a :class:`~controller.api.backends.NodeBackend`."""

    def __init__(self, backend: NodeBackend) -> None:
        self._backend = backend

    def ListNodes(self, request: node_service_pb2.ListNodesRequest,
                  context: grpc.ServicerContext) -> node_service_pb2.ListNodesResponse:
        size = page_size(request.page_size, DEFAULT_NODE_PAGE)
        selected = compile_filter(request.filter, NODE_FILTER)
        after = decode_page_token(request.page_token, "node", selected.fingerprint)
        if after is not None and not isinstance(after, str):
            raise FieldError("page_token", "not a page token of node listings")
        nodes = self._backend.list_nodes()
        start = 0 if after is None else bisect.bisect_right([n.name for n in nodes], after)
        page, more = take_page((n for n in nodes[start:] if selected(n)), size)
        token = encode_page_token("node", selected.fingerprint, page[-1].name) if more else ""
        return node_service_pb2.ListNodesResponse(nodes=page, next_page_token=token)

    def GetNode(self, request: node_service_pb2.GetNodeRequest,
                context: grpc.ServicerContext) -> node_pb2.Node:
        return self._backend.get_node(parse_node_name(request.name, "name"))

    def DeleteNode(self, request: node_service_pb2.DeleteNodeRequest,
                   context: grpc.ServicerContext) -> empty_pb2.Empty:
        node_id = parse_node_name(request.name, "name")
        self._backend.delete_node(node_id, actor=caller(context)[0])
        return empty_pb2.Empty()
