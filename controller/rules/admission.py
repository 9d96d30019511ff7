"""Admission guards: what a rule written through an API must pass before it
is stored, on every store (the servicer checks, the backend stores).

A rule a person or a SOC tool writes can drop traffic on every edge, so a
mistake (or a stolen operator credential) must not black out the world.
:class:`AdmissionPolicy` holds the guards and the caps; :meth:`~AdmissionPolicy.admit`
checks one rule, :meth:`~AdmissionPolicy.admit_id` one rule id about to be
written or deleted, :meth:`~AdmissionPolicy.admit_total` a change's rule count.

==============  ===================================================================
guard           refuses (field named; ``INVALID_ARGUMENT``)
==============  ===================================================================
broad-prefix    a drop or rate limit whose source prefix is shorter than
                ``min_prefix_v4`` (/16) or ``min_prefix_v6`` (/32), or that names
                no source and nothing else narrowing it (no destination, port,
                TCP flags, length or fragment test: a whole protocol, or all
                traffic, from everyone)
protected       a drop or rate limit whose source prefixes overlap an allowlisted
                or management prefix (never overridable: allowlisted sources always
                pass in the data plane, so such a rule is a mistake)
reserved-id     a rule id in a namespace the system writes (``fleet-*``,
                ``auto-*``): cluster-wide and agent detection own those ids, and an
                operator who took ``fleet-src-heavy`` first would stop fleet
                mitigation
==============  ===================================================================

An admin may override ``broad-prefix`` and ``reserved-id`` by naming them in
the request's ``override_guards`` (the guard is named, not implied by the
role); naming one without the admin role is ``PERMISSION_DENIED``. Caps:
``max_prefixes`` source and destination prefixes per rule (``INVALID_ARGUMENT``),
``max_batch`` rules per BatchCreateRules and ``max_rules`` rules stored
(``RESOURCE_EXHAUSTED``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from ..addresses import Prefix, parse_prefix
from ..errors import CapacityError, FieldError, InputError, PermissionDeniedError
from ..validate import check_int, check_keys, check_table
from .model import Rule

__all__ = [
    "ADMISSION_KEYS",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_PREFIXES",
    "DEFAULT_MAX_RULES",
    "DEFAULT_MIN_PREFIX_V4",
    "DEFAULT_MIN_PREFIX_V6",
    "GUARDS",
    "GUARD_BROAD",
    "GUARD_PROTECTED",
    "GUARD_RESERVED",
    "OVERRIDABLE",
    "RESERVED_ID_PREFIXES",
    "AdmissionPolicy",
]

GUARD_BROAD: Final = "broad-prefix"
GUARD_PROTECTED: Final = "protected"
GUARD_RESERVED: Final = "reserved-id"
GUARDS: Final = (GUARD_BROAD, GUARD_PROTECTED, GUARD_RESERVED)
OVERRIDABLE: Final = (GUARD_BROAD, GUARD_RESERVED)
"""The guards an admin may override by name (``override_guards``)."""
RESERVED_ID_PREFIXES: Final = ("fleet-", "auto-")
"""Rule ids written only by the system: fleet detection and agent detection."""

DEFAULT_MIN_PREFIX_V4: Final = 16
"""No drop or rate limit from an IPv4 prefix shorter than this without an override."""
DEFAULT_MIN_PREFIX_V6: Final = 32
"""Likewise for IPv6."""
DEFAULT_MAX_RULES: Final = 100_000
"""Rules stored (every origin); a create beyond it is RESOURCE_EXHAUSTED."""
DEFAULT_MAX_BATCH: Final = 10_000
"""Rules in one BatchCreateRules."""
DEFAULT_MAX_PREFIXES: Final = 1_024
"""Source plus destination prefixes in one rule (a blocklist is many rules, or a feed)."""

_GUARDED_ACTIONS: Final = ("drop", "rate_limit")
ADMISSION_KEYS: Final = ("min_prefix_v4", "min_prefix_v6", "max_rules", "max_batch", "max_prefixes",
                         "allowlist", "management")
"""The keys of an ``[admission]`` table (:meth:`AdmissionPolicy.from_dict`)."""


def _prefix_list(value: object, path: str) -> tuple[Prefix, ...]:
    if not isinstance(value, list | tuple):
        raise FieldError(path, f"expected a list of prefixes like [\"192.0.2.0/24\"], got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Prefix):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise FieldError(f"{path}[{i}]", f"expected a prefix string, got {item!r}")
        try:
            out.append(parse_prefix(item, field=f"{path}[{i}]"))
        except InputError as exc:
            raise FieldError(f"{path}[{i}]", str(exc).removeprefix(f"{path}[{i}]: ")) from None
    return tuple(out)


@dataclass(frozen=True)
class AdmissionPolicy:
    """The guards and caps of rule writes (see the module docstring)."""

    min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4
    min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6
    max_rules: int = DEFAULT_MAX_RULES
    max_batch: int = DEFAULT_MAX_BATCH
    max_prefixes: int = DEFAULT_MAX_PREFIXES
    allowlist: tuple[Prefix, ...] = ()
    """Sources no API rule may drop or limit."""
    management: tuple[Prefix, ...] = ()
    """Management prefixes: likewise (named apart in the refusal)."""

    def __post_init__(self) -> None:
        check_int(self.min_prefix_v4, "min_prefix_v4", 0, 32)
        check_int(self.min_prefix_v6, "min_prefix_v6", 0, 128)
        check_int(self.max_rules, "max_rules", 1, 100_000_000)
        check_int(self.max_batch, "max_batch", 1, 1_000_000)
        check_int(self.max_prefixes, "max_prefixes", 1, 1_000_000)

    @classmethod
    def from_dict(cls, data: object, *, allowlist: Iterable[Prefix] = (),
                  management: Iterable[Prefix] = ()) -> AdmissionPolicy:
        """From an ``[admission]`` table (errors name ``admission.<key>``);
        ``allowlist`` and ``management`` are added to the table's own."""
        table = check_table(data, "admission")
        check_keys(table, ADMISSION_KEYS, "admission")
        ints = {k: check_int(table[k], f"admission.{k}", 0, 100_000_000)
                for k in ("min_prefix_v4", "min_prefix_v6", "max_rules", "max_batch", "max_prefixes")
                if k in table}
        allow = (*_prefix_list(table.get("allowlist", []), "admission.allowlist"), *allowlist)
        manage = (*_prefix_list(table.get("management", []), "admission.management"), *management)
        try:
            policy = cls(**ints, allowlist=allow, management=manage)
        except FieldError as exc:
            raise FieldError(f"admission.{exc.path}", exc.what) from None
        return policy

    def to_dict(self) -> dict[str, object]:
        return {"min_prefix_v4": self.min_prefix_v4, "min_prefix_v6": self.min_prefix_v6,
                "max_rules": self.max_rules, "max_batch": self.max_batch,
                "max_prefixes": self.max_prefixes, "allowlist": [str(p) for p in self.allowlist],
                "management": [str(p) for p in self.management]}

    # -- checks --

    @staticmethod
    def overrides(names: Iterable[str], *, admin: bool, path: str) -> frozenset[str]:
        """The guards a request overrides, checked: known, overridable, and
        asked by an admin (else PermissionDeniedError)."""
        out = set()
        for i, name in enumerate(names):
            if name not in OVERRIDABLE:
                known = ", ".join(OVERRIDABLE)
                why = "is never overridable" if name in GUARDS else "is not a guard"
                raise FieldError(f"{path}[{i}]", f"{name[:64]!r} {why}; overridable: {known}")
            out.add(name)
        if out and not admin:
            raise PermissionDeniedError(f"{path}: overriding {', '.join(sorted(out))} needs the admin role")
        return frozenset(out)

    def admit_id(self, rule_id: str, path: str, overrides: Collection[str]) -> None:
        """Refuse writing or deleting ``rule_id`` in a reserved namespace (unless overridden)."""
        if GUARD_RESERVED in overrides:
            return
        for reserved in RESERVED_ID_PREFIXES:
            if rule_id.startswith(reserved):
                raise FieldError(path, f"{rule_id!r}: ids {reserved}* are written by the system only "
                                       f"(guard {GUARD_RESERVED}); choose another id")

    def admit(self, rule: Rule, path: str, overrides: Collection[str]) -> None:
        """Refuse ``rule`` if a guard or a per-rule cap stops it; errors at
        ``path`` + ``.match.src[i]`` and the like."""
        match = rule.match
        count = len(match.src) + len(match.dst)
        if count > self.max_prefixes:
            where = "src" if len(match.src) >= len(match.dst) else "dst"
            raise FieldError(f"{path}.match.{where}", f"{count} prefixes in one rule; at most "
                                                      f"{self.max_prefixes} (split it into several rules)")
        if rule.action.kind not in _GUARDED_ACTIONS:
            return
        if GUARD_BROAD not in overrides:
            self._admit_breadth(rule, path)
        protected = [*((p, "allowlisted") for p in self.allowlist),
                     *((p, "a management prefix") for p in self.management)]
        for i, src in enumerate(match.src):
            for guard, why in protected:
                if guard.family == src.family and guard.network.overlaps(src.network):
                    raise FieldError(f"{path}.match.src[{i}]",
                                     f"{src} overlaps {guard}, which is {why} (guard {GUARD_PROTECTED}): "
                                     f"its sources are never dropped or limited")

    def _admit_breadth(self, rule: Rule, path: str) -> None:
        match = rule.match
        least = {4: self.min_prefix_v4, 6: self.min_prefix_v6}
        for i, src in enumerate(match.src):
            if src.network.prefixlen < least[src.family]:
                raise FieldError(f"{path}.match.src[{i}]",
                                 f"{src} is broader than /{least[src.family]} for a {rule.action.kind} "
                                 f"(guard {GUARD_BROAD}); an admin may override it")
        narrowed = (match.dst or match.sport or match.dport or match.tcp_flags or match.length
                    or match.fragment != "any")
        if not match.src and not narrowed:
            raise FieldError(f"{path}.match", f"a {rule.action.kind} of every source with no destination, "
                                              f"port, TCP flags, length or fragment test (guard "
                                              f"{GUARD_BROAD}); name the sources or the victim")

    def admit_batch(self, n: int, path: str) -> None:
        if n > self.max_batch:
            raise CapacityError(f"{path}: {n} rules in one batch; at most {self.max_batch} (split it)")

    def admit_total(self, stored: int, adding: int) -> None:
        """Refuse a create that would store more than ``max_rules`` rules."""
        if stored + adding > self.max_rules:
            raise CapacityError(f"rules: {stored} stored, {adding} more would pass the cap of "
                                f"{self.max_rules} (admission.max_rules); delete some first")

