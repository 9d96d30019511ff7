"""RuleService (``breakwater.v1.RuleService``): rules listed, read,
created (one or a batch), updated and deleted over a
:class:`~controller.api.backends.RuleBackend`.

The servicer raises Breakwater errors only; :mod:`controller.api.status`
turns them into statuses (a :class:`~controller.errors.FieldError` is
``INVALID_ARGUMENT`` naming the field, and nothing has been stored when one
is raised). What the protos leave to the server, decided here:

* **Pages** as :mod:`controller.api.pages` says, 100 rules by default,
  keyed by rule id; ``show_expired`` is part of the token's filter.
* **Identity.** ``created_by`` and the actor and reason of every change are
  the caller's (:func:`controller.api.callers.caller`).
* **Expiry.** CreateRule and UpdateRule refuse an ``expire_time`` that is
  not in the future (delete the rule instead); ``ttl`` counts from when the
  request arrives.
* **Admission** (:mod:`controller.rules.admission`): every rule written
  passes the policy's guards (broad prefixes, allowlisted and management
  sources, reserved ids) and caps (prefixes per rule, batch size, rules
  stored) before the backend sees it, whatever the store; the request's
  ``override_guards`` lifts the overridable guards for an admin (a
  plaintext server's anonymous caller counts as one, as in
  :class:`controller.api.auth.Authorizer`).
* **validate_only** runs every check a real request would, ALREADY_EXISTS,
  NOT_FOUND and ABORTED included, and returns the rule as it would be
  stored (version and etag as they are now).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import grpc
from google.protobuf import empty_pb2

from breakwater.v1 import rule_pb2, rule_service_pb2, rule_service_pb2_grpc

from ..errors import AlreadyExistsError, EtagMismatchError, FieldError, NotFoundError
from ..rules.admission import DEFAULT_MAX_BATCH, AdmissionPolicy
from ..rules.scope import ScopedRule
from .auth import RANKS, principal_of
from .backends import RuleBackend
from .callers import caller
from .convert import merge_update, parse_rule_name, rule_from_proto, rule_to_proto
from .filtering import RULE_FILTER, compile_filter
from .pages import decode_page_token, encode_page_token, page_size, take_page

__all__ = ["DEFAULT_RULE_PAGE", "MAX_BATCH", "MAX_ETAG", "RuleServicer"]

DEFAULT_RULE_PAGE: Final = 100
"""Rules per ListRules page when the request says 0."""
MAX_BATCH: Final = DEFAULT_MAX_BATCH
"""Most requests in one BatchCreateRules (by default; ``AdmissionPolicy.max_batch``)."""
MAX_ETAG: Final = 64
"""Longest etag accepted (the server's are ``W/"<16 hex>"``)."""
_OUTPUT_ONLY: Final = ("name", "created_by", "create_time", "update_time", "version", "etag")

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def _check_etag(etag: str, path: str) -> str:
    if len(etag) > MAX_ETAG:
        raise FieldError(path, f"{len(etag)} characters; an etag is at most {MAX_ETAG} (get the rule again)")
    return etag


def _check_expiry(rule: ScopedRule, now: datetime, path: str) -> None:
    at = rule.rule.expires_at
    if at is not None and at <= now:
        raise FieldError(path, f"{at.isoformat().replace('+00:00', 'Z')} is not in the future; "
                               "to end a rule now, delete it")


class RuleServicer(rule_service_pb2_grpc.RuleServiceServicer):
    """breakwater.v1.RuleService over a :class:`~controller.api.backends.RuleBackend`."""

    def __init__(self, backend: RuleBackend, *, clock: Clock = _now,
                 admission: AdmissionPolicy | Callable[[], AdmissionPolicy] | None = None) -> None:
        self._backend = backend
        self._clock = clock
        self._admission = admission or AdmissionPolicy()
        self._protos: dict[str, tuple[tuple[object, ...], rule_pb2.Rule]] = {}
        self._protos_lock = threading.Lock()

    def _proto(self, rule: ScopedRule) -> rule_pb2.Rule:
        """The wire form of a stored rule, converted once per version of it
        (a listing with a filter looks at every rule). The messages are
        shared: never change one."""
        key = (rule.etag, rule.version, rule.create_time, rule.update_time, rule.scope)
        with self._protos_lock:
            found = self._protos.get(rule.id)
        if found is not None and found[0] == key and rule.etag:
            return found[1]
        msg = rule_to_proto(rule)
        with self._protos_lock:
            self._protos[rule.id] = (key, msg)
        return msg

    def _forget_gone(self, rules: Sequence[ScopedRule]) -> None:
        """Drop the cached forms of rules no longer stored (when the cache outgrows the set)."""
        with self._protos_lock:
            if len(self._protos) > 2 * len(rules) + 1024:
                live = {r.id for r in rules}
                self._protos = {k: v for k, v in self._protos.items() if k in live}

    @property
    def admission(self) -> AdmissionPolicy:
        """The policy in force (a callable is asked at every call: an agent's reloads change it)."""
        return self._admission if isinstance(self._admission, AdmissionPolicy) else self._admission()

    def _overrides(self, names: Sequence[str], context: grpc.ServicerContext, path: str) -> frozenset[str]:
        """The guards a request overrides, refused unless the caller is an admin."""
        if not names:
            return frozenset()
        principal = principal_of(context)
        admin = principal is None or RANKS.get(principal.role, 0) >= RANKS["admin"]
        return self.admission.overrides(names, admin=admin, path=path)

    def _admit(self, rule: ScopedRule, prefix: str, overrides: frozenset[str], id_path: str) -> None:
        self.admission.admit_id(rule.id, id_path, overrides)
        self.admission.admit(rule.rule, f"{prefix}rule", overrides)

    def _admit_total(self, adding: int) -> None:
        _, stored = self._backend.rule_snapshot(include_expired=True)
        self.admission.admit_total(len(stored), adding)

    def ListRules(self, request: rule_service_pb2.ListRulesRequest,
                  context: grpc.ServicerContext) -> rule_service_pb2.ListRulesResponse:
        size = page_size(request.page_size, DEFAULT_RULE_PAGE)
        selected = compile_filter(request.filter, RULE_FILTER)
        fingerprint = f"{selected.fingerprint}{'+expired' if request.show_expired else ''}"
        after = decode_page_token(request.page_token, "rule", fingerprint)
        if after is not None and not isinstance(after, str):
            raise FieldError("page_token", "not a page token of rule listings")
        version, rules = self._backend.rule_snapshot(include_expired=request.show_expired)
        self._forget_gone(rules)
        start = 0 if after is None else bisect.bisect_right([r.id for r in rules], after)
        page, more = take_page((msg for msg in map(self._proto, rules[start:]) if selected(msg)), size)
        token = encode_page_token("rule", fingerprint, page[-1].name.removeprefix("rules/")) if more else ""
        return rule_service_pb2.ListRulesResponse(rules=page, next_page_token=token, version=version)

    def GetRule(self, request: rule_service_pb2.GetRuleRequest,
                context: grpc.ServicerContext) -> rule_pb2.Rule:
        return self._proto(self._backend.get_rule(parse_rule_name(request.name, "name")))

    def _new_rule(self, request: rule_service_pb2.CreateRuleRequest, prefix: str, now: datetime,
                  actor: str, context: grpc.ServicerContext) -> ScopedRule:
        """The rule a CreateRuleRequest asks for, validated; errors at ``prefix`` + proto path."""
        if not request.rule_id:
            raise FieldError(f"{prefix}rule_id", "required; the new rule's id, 1-63 characters a-z 0-9 . _ -")
        if not request.HasField("rule"):
            raise FieldError(f"{prefix}rule", "required; the rule to create (match and action at least)")
        msg = rule_pb2.Rule()
        msg.CopyFrom(request.rule)
        for name in _OUTPUT_ONLY:
            msg.ClearField(name)
        msg.created_by = actor
        rule = rule_from_proto(msg, path=f"{prefix}rule", rule_id=request.rule_id,
                               rule_id_path=f"{prefix}rule_id", now=now)
        _check_expiry(rule, now, f"{prefix}rule.expire_time")
        overrides = self._overrides(request.override_guards, context, f"{prefix}override_guards")
        self._admit(rule, prefix, overrides, f"{prefix}rule_id")
        return rule

    def _would_be(self, rules: Sequence[ScopedRule], now: datetime) -> list[rule_pb2.Rule]:
        """validate_only: the rules as CreateRule would store them, if none exists already."""
        for i, r in enumerate(rules):
            try:
                self._backend.get_rule(r.id)
            except NotFoundError:
                continue  # the id is free
            where = f" (request {i})" if len(rules) > 1 else ""
            raise AlreadyExistsError(f"rule {r.id!r} exists already{where}; update it, or delete it first",
                                     f"rules/{r.id}")
        return [rule_to_proto(ScopedRule(r.rule, r.scope, create_time=now, update_time=now)) for r in rules]

    def CreateRule(self, request: rule_service_pb2.CreateRuleRequest,
                   context: grpc.ServicerContext) -> rule_pb2.Rule:
        actor, reason = caller(context)
        now = self._clock()
        rule = self._new_rule(request, "", now, actor, context)
        self._admit_total(1)
        if request.validate_only:
            return self._would_be([rule], now)[0]
        return rule_to_proto(self._backend.create_rules([rule], actor=actor, reason=reason)[0])

    def BatchCreateRules(self, request: rule_service_pb2.BatchCreateRulesRequest,
                         context: grpc.ServicerContext) -> rule_service_pb2.BatchCreateRulesResponse:
        actor, reason = caller(context)
        n = len(request.requests)
        if n == 0:
            raise FieldError("requests", f"empty; give 1 to {self.admission.max_batch} CreateRuleRequests")
        self.admission.admit_batch(n, "requests")
        now = self._clock()
        rules: list[ScopedRule] = []
        first: dict[str, int] = {}
        for i, req in enumerate(request.requests):
            rule = self._new_rule(req, f"requests[{i}].", now, actor, context)
            if rule.id in first:
                raise FieldError(f"requests[{i}].rule_id",
                                 f"duplicate rule id {rule.id!r}; requests[{first[rule.id]}] has it too")
            first[rule.id] = i
            rules.append(rule)
        self._admit_total(len(rules))
        if request.validate_only:
            return rule_service_pb2.BatchCreateRulesResponse(rules=self._would_be(rules, now))
        stored = self._backend.create_rules(rules, actor=actor, reason=reason)
        return rule_service_pb2.BatchCreateRulesResponse(rules=[rule_to_proto(r) for r in stored])

    def UpdateRule(self, request: rule_service_pb2.UpdateRuleRequest,
                   context: grpc.ServicerContext) -> rule_pb2.Rule:
        actor, reason = caller(context)
        if not request.HasField("rule"):
            raise FieldError("rule", "required; rule.name names the rule, the mask its fields to change")
        rule_id = parse_rule_name(request.rule.name, "rule.name")
        etag = _check_etag(request.rule.etag, "rule.etag")
        overrides = self._overrides(request.override_guards, context, "override_guards")
        self.admission.admit_id(rule_id, "rule.name", overrides)
        current = self._backend.get_rule(rule_id)
        if etag and etag != current.etag:
            raise EtagMismatchError(f"rule {rule_id!r} changed since it was read (etag {etag}, now "
                                    f"{current.etag}); get it again and retry", f"rules/{rule_id}")
        now = self._clock()
        merged = merge_update(rule_to_proto(current), request.rule,
                              request.update_mask if request.HasField("update_mask") else None)
        new = rule_from_proto(merged, path="rule", now=now)
        if new.rule.expires_at != current.rule.expires_at:
            which = merged.WhichOneof("expiration") or "expire_time"
            _check_expiry(new, now, f"rule.{which}")
        self.admission.admit(new.rule, "rule", overrides)
        if request.validate_only:
            return rule_to_proto(ScopedRule(new.rule, new.scope, current.version, current.etag,
                                            current.create_time, now))
        return rule_to_proto(self._backend.update_rule(
            ScopedRule(new.rule, new.scope), etag=etag, actor=actor, reason=reason))

    def DeleteRule(self, request: rule_service_pb2.DeleteRuleRequest,
                   context: grpc.ServicerContext) -> empty_pb2.Empty:
        actor, reason = caller(context)
        rule_id = parse_rule_name(request.name, "name")
        _check_etag(request.etag, "etag")
        self.admission.admit_id(rule_id, "name", self._overrides(request.override_guards, context,
                                                                  "override_guards"))
        self._backend.delete_rule(rule_id, etag=request.etag, allow_missing=request.allow_missing,
                                  actor=actor, reason=reason)
        return empty_pb2.Empty()
