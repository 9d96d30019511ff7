"""Apply a rule set to an interface: compile, build the map image, swap.

The rule set in force and its slot table are kept in a small JSON file per
interface under the state directory (``/var/lib/breakwater/rules/``, or
``$BREAKWATER_STATE_DIR``), written atomically: as pending before the flip,
as current after it, so a crash in between still finds the set the maps
hold (:func:`load_applied`). The kernel maps are the truth for what is
enforced; the file names the rules, keeps their counter slots stable across
swaps and restarts, and gives ``rules list`` and the diff summary of
``rules apply`` something to show.

The CLI's ``rules`` commands and the agent (:mod:`controller.agent.layers`)
put rule sets in force the same way: under :meth:`MapSet.locked`, the
record (:func:`recorded`: none when it is of another generation, and the
new set replaces it whole), then :func:`apply` with ``state_dir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from ..addresses import Prefix, parse_prefix
from ..dataplane import swap
from ..dataplane.pinned import MapSet
from ..errors import InputError
from .compiler import CompiledSet, SlotTable, compile_ruleset
from .image import build_image
from .model import Match, Rule, RuleAction, RuleDiff, RuleSet

__all__ = [
    "DEFAULT_STATE_DIR",
    "Applied",
    "Outcome",
    "StateMismatchError",
    "apply",
    "load_applied",
    "load_file",
    "recorded",
    "save_applied",
    "with_sources",
    "without_sources",
]

LOGGER = logging.getLogger("breakwater.enforce")

DEFAULT_STATE_DIR = Path(os.environ.get("BREAKWATER_STATE_DIR", "/var/lib/breakwater"))
STATE_VERSION = 1


@dataclass(frozen=True)
class Applied:
    """The rule set last swapped in on an interface."""

    rules: RuleSet
    slots: SlotTable
    gen: int
    management: tuple[Prefix, ...] = ()


class StateMismatchError(InputError):
    """The recorded rule set is not the one the maps hold (maps purged and
    recreated, or a state directory from elsewhere)."""


def _path(state_dir: Path, pin_dir: Path) -> Path:
    """One file per pin directory: the same interface name under another pin
    root (a test, a namespace) has its own state."""
    tag = hashlib.sha256(str(pin_dir.resolve()).encode()).hexdigest()[:10]
    return state_dir / "rules" / f"{pin_dir.name}-{tag}.json"


def _read(path: Path) -> Applied | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable rule state ({exc}); move it aside to start over") from exc
    if doc.get("version") != STATE_VERSION:
        raise InputError(f"{path}: state version {doc.get('version')!r}, want {STATE_VERSION}")
    mgmt = tuple(parse_prefix(p, field=f"{path}: management") for p in doc.get("management", []))
    return Applied(RuleSet.from_dict(doc["rules"]), SlotTable.from_dict(doc["slots"]), int(doc["gen"]),
                   mgmt)


def load_applied(state_dir: Path, maps: MapSet) -> Applied | None:
    """The rule set recorded for these maps, checked against their generation.

    A swap records the new set as pending before the flip and as current
    after it, so a crash in between still finds the set the maps hold.
    Raises :class:`StateMismatchError` when the record is of another
    generation (the maps were purged and recreated, say)."""
    path = _path(state_dir, maps.pin_dir)
    gen = maps.config().gen
    found = []
    for candidate in (path.with_suffix(".pending"), path):
        applied = _read(candidate)
        if applied is None:
            continue
        if applied.gen == gen:
            return applied
        found.append(applied.gen)
    if found:
        raise StateMismatchError(
            f"{path}: the recorded rule set is generation {found[-1]}, the maps in "
            f"{maps.pin_dir} are at {gen}; `breakwater rules apply FILE` makes FILE the rule set again"
        )
    return None


def recorded(state_dir: Path, maps: MapSet) -> Applied | None:
    """The rule set recorded for these maps (:func:`load_applied`); None,
    logged, when the record is of another generation: a whole new set then
    replaces it (its slots are given afresh)."""
    try:
        return load_applied(state_dir, maps)
    except StateMismatchError as exc:
        LOGGER.warning("%s", exc)
        return None


def save_applied(state_dir: Path, maps: MapSet, applied: Applied, pending: bool = False) -> None:
    path = _path(state_dir, maps.pin_dir)
    if pending:
        path = path.with_suffix(".pending")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "version": STATE_VERSION,
        "pin_dir": str(maps.pin_dir),
        "gen": applied.gen,
        "slots": applied.slots.to_dict(),
        "management": [str(p) for p in applied.management],
        "rules": applied.rules.to_dict(),
    }, indent=1))
    os.replace(tmp, path)
    if not pending:
        with contextlib.suppress(FileNotFoundError):
            _path(state_dir, maps.pin_dir).with_suffix(".pending").unlink()


def load_file(path: Path) -> RuleSet:
    """A rule file: TOML, or JSON when it ends in .json."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return RuleSet.loads_json(text) if path.suffix == ".json" else RuleSet.loads_toml(text)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class Outcome:
    """What :func:`apply` did (or, with ``dry_run``, would do)."""

    diff: RuleDiff
    compiled: CompiledSet
    swap: swap.SwapResult | None


def apply(maps: MapSet, rules: RuleSet, previous: Applied | None, *, now: datetime | None = None,
          management: Sequence[Prefix] = (), dry_run: bool = False,
          state_dir: Path | None = None) -> Outcome:
    """Compile ``rules`` and make them the set in force, atomically; with
    ``state_dir``, record it (pending before the flip, current after).

    Invalid rules, too many signatures or slots raise :class:`InputError`
    before anything is written.
    """
    when = now or datetime.now(UTC)
    before = previous.rules if previous else RuleSet.from_rules(())
    compiled = compile_ruleset(rules, when, previous.slots if previous else None,
                               max_rule_slots=maps["rule_stats"].max_entries, management=management)
    diff = before.diff(rules)
    if dry_run:
        return Outcome(diff, compiled, None)
    old = previous.slots if previous else SlotTable()
    new_slots = tuple(sorted(s for rid, s in compiled.slots.to_dict().items() if old.get(rid) != s))
    mgmt = tuple(management)
    with maps.locked():
        if state_dir is not None:
            save_applied(state_dir, maps, Applied(rules, compiled.slots, maps.config().gen + 1, mgmt),
                         pending=True)
        result = swap.apply(maps, build_image(compiled), new_rules=new_slots,
                            freed_rules=tuple(sorted(compiled.freed_slots)))
        if state_dir is not None:
            save_applied(state_dir, maps, Applied(rules, compiled.slots, result.gen, mgmt))
    for w in compiled.warnings:
        LOGGER.warning("rule set: %s", w)
    return Outcome(diff, compiled, result)


# -- rule-set edits behind `breakwater deny|allow add|del` -----------------------

def with_sources(rules: RuleSet, rule_id: str, kind: Literal["drop", "allow"], prefixes: Sequence[Prefix],
                 *, created_by: str = "", comment: str = "") -> RuleSet:
    """``rules`` with ``prefixes`` added to the source-only ``kind`` (drop or
    allow) rule ``rule_id``, which is created if missing."""
    existing = rules.get(rule_id)
    if existing is not None and (existing.action.kind != kind or not existing.match.is_src_only):
        raise InputError(
            f"rule {rule_id!r} is not a source-only {kind} rule; pick another --rule name, "
            "or edit it with `breakwater rules apply`"
        )
    old = existing.match.src if existing else ()
    merged = tuple(dict.fromkeys((*old, *prefixes)))
    if existing is not None:
        rule = replace(existing, match=replace(existing.match, src=merged))
    else:
        rule = Rule(rule_id, Match(src=merged), RuleAction(kind), origin="manual",
                    created_by=created_by, comment=comment)
    others = [r for r in rules.rules if r.id != rule_id]
    return RuleSet.from_rules([*others, rule])


def without_sources(rules: RuleSet, kind: str, prefixes: Sequence[Prefix]) -> tuple[RuleSet, int]:
    """``rules`` with ``prefixes`` taken out of every source-only ``kind`` rule
    (a rule left without sources is removed). Returns the set and how many
    prefixes were found."""
    drop = set(prefixes)
    found: set[Prefix] = set()
    out: list[Rule] = []
    for r in rules.rules:
        if r.action.kind == kind and r.match.is_src_only:
            keep = tuple(p for p in r.match.src if p not in drop)
            found.update(p for p in r.match.src if p in drop)
            if not keep:
                continue
            r = replace(r, match=replace(r.match, src=keep))
        out.append(r)
    return RuleSet.from_rules(out), len(found)
