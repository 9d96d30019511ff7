"""Where a cluster rule applies, and the controller's record of a rule.

A rule the controller pushes carries a :class:`RuleScope`: every node (the
default), the nodes whose labels include all of a selector's labels (e.g.
``site=fra1``), or one node by id. :class:`ScopedRule` is a
:class:`~controller.rules.model.Rule` with its scope and the bookkeeping the API
shows (version, etag, create and update times); ``breakwater.v1.Rule`` is
its wire form (:mod:`controller.api.convert`).

Node ids and labels are checked here, once, for the API and for agents
registering (``docs`` of ``proto/breakwater/v1/node.proto``):

* node id: 1-253 characters of ``a-z 0-9 . _ -``, starting with a letter
  or digit (a host name fits);
* label key: 1-63 characters of ``a-z 0-9 . _ / -``, starting and ending
  with a letter or digit; label value: 0-63 characters of
  ``A-Z a-z 0-9 . _ -``.

Errors are :class:`~controller.rules.model.FieldError` with the field path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from ..errors import FieldError
from .model import Rule

__all__ = [
    "MAX_LABELS",
    "RuleScope",
    "ScopedRule",
    "check_label",
    "check_labels",
    "check_node_id",
]

MAX_LABELS: Final = 64
"""Most labels a node or a selector may carry."""
_NODE_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,252}")
_NODE_ID_HELP: Final = "use 1-253 characters a-z 0-9 . _ -, starting with a letter or digit"
_LABEL_KEY_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,61}[a-z0-9])?")
_LABEL_VALUE_RE: Final = re.compile(r"[A-Za-z0-9._-]{0,63}")


def check_node_id(value: object, path: str = "node_id") -> str:
    """``value`` if it is a valid node id, else a :class:`FieldError` at ``path``."""
    if not isinstance(value, str):
        raise FieldError(path, f"expected a string, got {type(value).__name__}")
    if not _NODE_ID_RE.fullmatch(value):
        raise FieldError(path, f"{value!r} is not a valid node id; {_NODE_ID_HELP}")
    return value


def check_label(key: object, value: object, path: str = "labels") -> None:
    """Refuse a bad label key or value; the error's path is ``path[key]``."""
    if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
        raise FieldError(
            path, f"{key!r} is not a valid label key; use 1-63 characters a-z 0-9 . _ / -, "
            "starting and ending with a letter or digit"
        )
    if not isinstance(value, str) or not _LABEL_VALUE_RE.fullmatch(value):
        raise FieldError(
            f"{path}[{key}]", f"{value!r} is not a valid label value; use 0-63 characters A-Z a-z 0-9 . _ -"
        )


def check_labels(labels: Mapping[str, str], path: str = "labels") -> dict[str, str]:
    """A copy of ``labels`` (sorted by key) if every label is valid."""
    if len(labels) > MAX_LABELS:
        raise FieldError(path, f"{len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        check_label(key, value, path)
    return dict(sorted(labels.items()))


@dataclass(frozen=True, slots=True)
class RuleScope:
    """The nodes a rule applies to: every node (neither field set), the
    nodes carrying every label of ``labels`` (with those values), or the
    node ``node`` (its id)."""

    labels: tuple[tuple[str, str], ...] = ()
    """The selector, as sorted (key, value) pairs: see :meth:`selector`."""
    node: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.labels, tuple):
            raise FieldError("labels", f"expected a tuple of (key, value), got {type(self.labels).__name__}")
        if self.labels and self.node is not None:
            raise FieldError("node", "give a label selector or a node, not both")
        pairs = dict(self.labels)
        if len(pairs) != len(self.labels):
            raise FieldError("labels", "a label key is given twice")
        object.__setattr__(self, "labels", tuple(check_labels(pairs).items()))
        if self.node is not None:
            check_node_id(self.node, "node")

    @classmethod
    def everywhere(cls) -> RuleScope:
        return cls()

    @classmethod
    def selecting(cls, labels: Mapping[str, str]) -> RuleScope:
        """The nodes carrying all of ``labels``; at least one label."""
        if not labels:
            raise FieldError("labels", "empty; a selector needs at least one label (or scope every node)")
        return cls(labels=tuple(labels.items()))

    @classmethod
    def on_node(cls, node_id: str) -> RuleScope:
        return cls(node=node_id)

    @property
    def is_global(self) -> bool:
        return not self.labels and self.node is None

    @property
    def selector(self) -> dict[str, str]:
        """The label selector as a dict (empty unless the scope selects by labels)."""
        return dict(self.labels)

    def applies_to(self, node_id: str, labels: Mapping[str, str]) -> bool:
        """Whether a node with this id and these labels gets the rule."""
        if self.node is not None:
            return node_id == self.node
        return all(labels.get(k) == v for k, v in self.labels)

    def __str__(self) -> str:
        if self.node is not None:
            return f"node {self.node}"
        if self.labels:
            return ",".join(f"{k}={v}" for k, v in self.labels)
        return "every node"


@dataclass(frozen=True, slots=True)
class ScopedRule:
    """A rule as the controller keeps it: the rule, where it applies, and
    its bookkeeping. ``version`` is the rule set version in which it last
    changed (0: not stored yet); ``etag`` is the store's checksum of it."""

    rule: Rule
    scope: RuleScope = field(default_factory=RuleScope)
    version: int = 0
    etag: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rule, Rule):
            raise FieldError("rule", f"expected a Rule, got {type(self.rule).__name__}")
        if not isinstance(self.scope, RuleScope):
            raise FieldError("scope", f"expected a RuleScope, got {type(self.scope).__name__}")
        version = self.version
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**64:
            raise FieldError("version", f"{self.version!r} is not a version (0 .. 2^64-1)")
        if not isinstance(self.etag, str):
            raise FieldError("etag", f"expected a string, got {type(self.etag).__name__}")
        for name in ("create_time", "update_time"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
                raise FieldError(name, f"expected a datetime with a time zone, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))

    @property
    def id(self) -> str:
        return self.rule.id

