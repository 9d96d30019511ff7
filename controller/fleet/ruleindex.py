"""The sync hub's rule index: the rule set as the nodes see it, kept in step
with the store's changes (:class:`RuleIndex`), split into the rules each
label group selects (the nodes with the same labels share one immutable
:class:`Content`) and the rules scoped to one node; a node's set at a
version is a :class:`View` of the two; and the SyncResponses built from
views (:class:`RuleMessages`), serialized once per view (snapshots) or
pair of views (deltas), so every stream of a group is sent the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

from breakwater.v1 import rule_pb2, sync_service_pb2

from ..api.convert import rule_to_proto
from ..rules.scope import ScopedRule
from .store import Change

__all__ = ["EMPTY", "Content", "LabelsKey", "RuleIndex", "RuleMessages", "View", "diff"]

DELTA_CACHE: Final = 4096
"""Serialized deltas kept (by pair of views); the cache is emptied when full."""


class Content:
    """An immutable map of rules by id, shared by every view that holds it."""

    __slots__ = ("rules",)

    def __init__(self, rules: dict[str, ScopedRule]) -> None:
        self.rules = rules


EMPTY: Final = Content({})


class View:
    """One node set at a version: the rules its labels select (shared by the
    label group) and the rules scoped to the node itself. Immutable; its
    snapshot messages are built once."""

    __slots__ = ("_snapshots", "own", "shared", "version")

    def __init__(self, version: int, shared: Content, own: Content) -> None:
        self.version = version
        self.shared = shared
        self.own = own
        self._snapshots: dict[bool, bytes] = {}

    def rules(self) -> Iterator[ScopedRule]:
        yield from self.shared.rules.values()
        yield from self.own.rules.values()

    def __len__(self) -> int:
        return len(self.shared.rules) + len(self.own.rules)


def diff(a: Content, b: Content) -> tuple[list[ScopedRule], list[str]]:
    """(rules of ``b`` new or changed since ``a``, ids of ``a`` gone from ``b``)."""
    if a is b:
        return [], []
    old = a.rules
    new = b.rules
    upserts = [r for rid, r in new.items() if (was := old.get(rid)) is None or was.etag != r.etag]
    removed = [rid for rid in old if rid not in new]
    return upserts, removed


LabelsKey = tuple[tuple[str, str], ...]
"""A label group's key: its nodes' labels as (key, value) pairs."""


def _applies(rule: ScopedRule, labels: Mapping[str, str]) -> bool:
    """Whether a rule that is not scoped to one node selects nodes with ``labels``."""
    scope = rule.scope
    return scope.node is None and all(labels.get(k) == v for k, v in scope.labels)


class RuleIndex:
    """The rule set and its split into label groups and per-node rules, kept
    in step with the store's changes."""

    def __init__(self) -> None:
        self.version = 0
        self.rules: dict[str, ScopedRule] = {}
        self.groups: dict[LabelsKey, Content] = {}
        self.own: dict[str, Content] = {}

    def reload(self, version: int, rules: Iterable[ScopedRule]) -> None:
        self.version = version
        self.rules = {r.id: r for r in rules}
        groups = list(self.groups)
        self.groups = {}
        for key in groups:
            self.shared(key)
        own: dict[str, dict[str, ScopedRule]] = {}
        for r in self.rules.values():
            if r.scope.node is not None:
                own.setdefault(r.scope.node, {})[r.id] = r
        self.own = {node: Content(dict(sorted(rs.items()))) for node, rs in own.items()}

    def shared(self, key: LabelsKey) -> Content:
        """The rules a node with these labels gets from global and label scopes."""
        found = self.groups.get(key)
        if found is None:
            labels = dict(key)
            found = Content({rid: r for rid, r in sorted(self.rules.items()) if _applies(r, labels)})
            self.groups[key] = found
        return found

    def own_rules(self, node_id: str) -> Content:
        return self.own.get(node_id, EMPTY)

    def apply(self, version: int, changes: Sequence[Change]) -> set[str]:
        """Apply committed changes; the ids of the rules they touched."""
        touched: dict[str, tuple[ScopedRule | None, ScopedRule | None]] = {}
        for change in changes:
            for new in change.upserted:
                old = self.rules.get(new.id)
                self.rules[new.id] = new
                first = touched.get(new.id, (old, None))[0]
                touched[new.id] = (first, new)
            for gone in change.removed:
                old = self.rules.pop(gone.id, None)
                first = touched.get(gone.id, (old, None))[0]
                touched[gone.id] = (first, None)
        self.version = version
        if not touched:
            return set()
        for key, content in list(self.groups.items()):
            labels = dict(key)
            patched: dict[str, ScopedRule] | None = None
            for rid, (_was, now) in touched.items():
                inside = now is not None and _applies(now, labels)
                if inside == (rid in content.rules) and (not inside or content.rules[rid] is now):
                    continue
                if patched is None:
                    patched = dict(content.rules)
                if inside and now is not None:
                    patched[rid] = now
                else:
                    patched.pop(rid, None)
            if patched is not None:
                self.groups[key] = Content(patched)
        nodes: set[str] = set()
        for pair in touched.values():
            for r in pair:
                if r is not None and r.scope.node is not None:
                    nodes.add(r.scope.node)
        for node in nodes:
            rules = dict(self.own.get(node, EMPTY).rules)
            for rid, (_was, now) in touched.items():
                if now is not None and now.scope.node == node:
                    rules[rid] = now
                else:
                    rules.pop(rid, None)
            if rules:
                self.own[node] = Content(rules)
            else:
                self.own.pop(node, None)
        return set(touched)


class RuleMessages:
    """SyncResponses for views, serialized once: a view's snapshots (plain
    and reconciling) are kept on the view, deltas by pair of views (up to
    :data:`DELTA_CACHE` of them), and each rule's proto until its etag
    changes."""

    def __init__(self) -> None:
        self._protos: dict[str, tuple[str, rule_pb2.Rule]] = {}
        self._deltas: dict[tuple[View, View], bytes] = {}

    def prune(self, rules: Mapping[str, ScopedRule], touched: Iterable[str] | None = None) -> None:
        """Forget the protos of rules gone from ``rules``: of those
        ``touched``, or (None) of every rule seen."""
        for rid in list(self._protos) if touched is None else touched:
            if rid not in rules:
                self._protos.pop(rid, None)

    def _proto(self, rule: ScopedRule) -> rule_pb2.Rule:
        found = self._protos.get(rule.id)
        if found is not None and found[0] == rule.etag:
            return found[1]
        proto = rule_to_proto(rule)
        self._protos[rule.id] = (rule.etag, proto)
        return proto

    def snapshot(self, view: View, reconcile: bool) -> bytes:
        found = view._snapshots.get(reconcile)
        if found is None:
            rules = sorted(view.rules(), key=lambda r: r.id)
            msg = sync_service_pb2.SyncResponse(snapshot=sync_service_pb2.RuleSnapshot(
                version=view.version, rules=[self._proto(r) for r in rules], reconcile=reconcile))
            found = view._snapshots[reconcile] = msg.SerializeToString()
        return found

    def delta(self, base: View, view: View) -> bytes:
        key = (base, view)
        found = self._deltas.get(key)
        if found is None:
            up_shared, rm_shared = diff(base.shared, view.shared)
            up_own, rm_own = diff(base.own, view.own)
            upserts = sorted(up_shared + up_own, key=lambda r: r.id)
            kept = {r.id for r in upserts}
            removed = sorted(rid for rid in rm_shared + rm_own if rid not in kept)
            msg = sync_service_pb2.SyncResponse(delta=sync_service_pb2.RuleDelta(
                version=view.version, base_version=base.version,
                upserts=[self._proto(r) for r in upserts], removed_rule_ids=removed))
            if len(self._deltas) >= DELTA_CACHE:
                self._deltas.clear()
            found = self._deltas[key] = msg.SerializeToString()
        return found
