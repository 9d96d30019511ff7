"""controller.rules.scope: which nodes a cluster rule applies to, node ids and labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from controller.errors import FieldError
from controller.rules.model import Match, Rule, RuleAction
from controller.rules.scope import RuleScope, ScopedRule, check_labels, check_node_id

RULE = Rule("r", Match(), RuleAction("drop"))


def test_every_node_by_default() -> None:
    scope = RuleScope()
    assert scope.is_global and str(scope) == "every node"
    assert scope.applies_to("edge-1", {}) and scope.applies_to("edge-2", {"site": "fra1"})


def test_selector_needs_every_label() -> None:
    scope = RuleScope.selecting({"site": "fra1", "role": "edge"})
    assert not scope.is_global
    assert scope.labels == (("role", "edge"), ("site", "fra1"))  # sorted: equal selectors compare equal
    assert scope == RuleScope.selecting({"role": "edge", "site": "fra1"})
    assert scope.applies_to("a", {"site": "fra1", "role": "edge", "rack": "3"})
    assert not scope.applies_to("a", {"site": "fra1"})
    assert not scope.applies_to("a", {"site": "ams1", "role": "edge"})
    assert str(scope) == "role=edge,site=fra1"


def test_one_node() -> None:
    scope = RuleScope.on_node("edge-1.fra.example.net")
    assert scope.applies_to("edge-1.fra.example.net", {}) and not scope.applies_to("edge-2", {})
    assert str(scope) == "node edge-1.fra.example.net"


@pytest.mark.parametrize(("make", "path"), [
    (lambda: RuleScope(labels=(("site", "fra1"),), node="edge-1"), "node"),
    (lambda: RuleScope(labels=(("site", "a"), ("site", "b"))), "labels"),
    (lambda: RuleScope.selecting({}), "labels"),
    (lambda: RuleScope.on_node("Edge 1"), "node"),
    (lambda: RuleScope.selecting({"-site": "x"}), "labels"),
    (lambda: RuleScope.selecting({"site": "x" * 64}), "labels[site]"),
])
def test_bad_scopes(make: object, path: str) -> None:
    with pytest.raises(FieldError) as info:
        make()  # type: ignore[operator]
    assert info.value.path == path


@pytest.mark.parametrize("good", ["a", "edge-1", "edge_1.fra.example.net", "0", "a" * 253])
def test_node_ids(good: str) -> None:
    assert check_node_id(good) == good


@pytest.mark.parametrize("bad", ["", "-a", ".a", "Edge", "a b", "a/b", "a" * 254])
def test_bad_node_ids(bad: str) -> None:
    with pytest.raises(FieldError, match=r"^node_id: .* is not a valid node id"):
        check_node_id(bad)


def test_labels() -> None:
    assert check_labels({"site": "fra1", "topology.example.com/zone": "A-1", "empty": ""}) == {
        "empty": "", "site": "fra1", "topology.example.com/zone": "A-1"}
    for key in ("", "Site", "site-", "a" * 64, "s p"):
        with pytest.raises(FieldError, match=r"^labels: "):
            check_labels({key: "x"})
    with pytest.raises(FieldError, match=r"at most 64"):
        check_labels({f"k{i}": "v" for i in range(65)})


def test_scoped_rule_times_are_utc() -> None:
    cet = timezone(timedelta(hours=1))
    at = datetime(2024, 5, 1, 13, 0, tzinfo=cet)
    scoped = ScopedRule(RULE, create_time=at, update_time=at)
    assert scoped.create_time == at and scoped.create_time.tzinfo is UTC
    assert scoped.id == "r" and scoped.scope.is_global and scoped.version == 0


@pytest.mark.parametrize(("kwargs", "path"), [
    ({"version": -1}, "version"),
    ({"version": 2**64}, "version"),
    ({"version": True}, "version"),
    ({"etag": 5}, "etag"),
    ({"create_time": datetime(2024, 1, 1)}, "create_time"),
    ({"scope": "everywhere"}, "scope"),
])
def test_bad_scoped_rules(kwargs: dict[str, object], path: str) -> None:
    with pytest.raises(FieldError) as info:
        ScopedRule(RULE, **kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
