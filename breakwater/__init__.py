"""Breakwater's gRPC API, generated from ``proto/breakwater/``.

Do not edit: ``scripts/gen_proto.py`` writes every file under ``breakwater/``,
and ``tests/unit/test_proto_current.py`` fails when they are stale. The
Python package of Breakwater itself is ``controller``.
"""
