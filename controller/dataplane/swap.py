"""Atomic rule-set swaps.

A packet is judged by the generation it reads from ``config.gen`` at entry,
and every policy map is consistent for each generation:

* the tries (allow, deny prefixes, signature prefixes) and the signature
  arrays are double-buffered: generation ``g`` reads slot ``g & 1``;
* exact deny entries carry the generations they are valid for
  (``since``/``until``/``prev_rule_id``), so a swap writes only the entries
  that change, and unchanged entries keep their hit counters.

:func:`apply` fills the idle slot and the pending exact entries, flips
``config.gen`` with one aligned 4-byte store, waits out packets still judged
by the old generation, then clears what the old generation alone used. If
anything fails before the flip, what was written is undone and the old set
stays in force. Rule counters (``rule_stats``) are indexed by rule slot and
not touched by a swap, so rules that survive keep their counters.
"""

from __future__ import annotations

import ctypes
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BreakwaterError
from . import abi
from .pinned import MapSet

__all__ = [
    "Image",
    "SigImage",
    "SwapResult",
    "TrieKey",
    "apply",
    "empty_sig_image",
    "lpm_key",
    "read_image",
]

LOGGER = logging.getLogger("breakwater.swap")

EXACT_MAPS = ("deny_v4", "deny_v6")
POLICY_TRIES = ("allow_v4", "allow_v6", "deny_pfx_v4", "deny_pfx_v6")
SIG_TRIES = ("sig_src_v4", "sig_src_v6", "sig_dst_v4", "sig_dst_v6")
SIG_ARRAYS = {"sig_proto": 256, "sig_sport": 65536, "sig_dport": 65536, "sig_tcpflags": 256,
              "sig_len": 65536}
"""Per-slot bitmap arrays of the signature stage and their entries per slot."""
# An XDP run takes microseconds under RCU; once this has passed after the
# flip, no packet can still be judged by the old generation, so what only it
# used can be cleared.
GRACE_SECONDS = 0.002

TrieKey = tuple[int, bytes]
"""A trie entry's (prefix length, network address bytes)."""


@dataclass
class SigImage:
    """The signature stage of one rule set, ready for one slot."""

    sigs: list[abi.Sig]
    meta: abi.SigMeta
    arrays: dict[str, bytes]  # SIG_ARRAYS name -> its slot's packed struct bw_bits
    tries: dict[str, dict[TrieKey, bytes]] = field(default_factory=dict)  # sig_src_v4 ...


def empty_sig_image() -> SigImage:
    bits = ctypes.sizeof(abi.Bits)
    return SigImage([], abi.SigMeta(), {name: bytes(n * bits) for name, n in SIG_ARRAYS.items()})


@dataclass
class Image:
    """What the policy maps should hold, whole."""

    exact: dict[str, dict[bytes, int]]  # deny_v4/deny_v6: address bytes -> rule slot
    tries: dict[str, dict[TrieKey, bytes]]  # allow_*/deny_pfx_*: key -> struct bw_rule_ref bytes
    sigs: SigImage | None = None  # None: keep the signatures in force


@dataclass(frozen=True)
class SwapResult:
    gen: int
    exact_added: int
    exact_changed: int
    exact_removed: int
    trie_entries: int
    signatures: int
    seconds: float


def lpm_key(name: str, slot: int, key: TrieKey) -> bytes:
    plen, addr = key
    k: abi.LpmV4 | abi.LpmV6 = abi.LpmV4() if name.endswith("v4") else abi.LpmV6()
    k.prefixlen = 8 + plen
    k.slot = slot
    k.addr[:] = list(addr)
    return bytes(k)


def _trie_entries(maps: MapSet, name: str) -> dict[int, dict[TrieKey, bytes]]:
    """Entries of a trie by slot."""
    m = maps[name]
    ksz, vsz = m.spec.key_size, m.spec.value_size
    keys, values, n = m.read_all()
    out: dict[int, dict[TrieKey, bytes]] = {0: {}, 1: {}}
    alen = 4 if name.endswith("v4") else 16
    for i in range(n):
        k = keys[i * ksz : (i + 1) * ksz]
        plen = int.from_bytes(k[:4], "little") - 8
        out.setdefault(k[4], {})[(plen, k[5 : 5 + alen])] = values[i * vsz : (i + 1) * vsz]
    return out


def _exact_table(maps: MapSet, name: str) -> tuple[list[bytes], np.ndarray]:
    m = maps[name]
    keys, values, n = m.read_all()
    ksz = m.spec.key_size
    return [keys[i * ksz : (i + 1) * ksz] for i in range(n)], np.frombuffer(
        values, dtype=abi.DENY_DTYPE, count=n
    ).copy()


def _visible(rows: np.ndarray, gen: int) -> np.ndarray:
    """Rule slot each exact entry has at ``gen``, or -1 (vector form of rule_at)."""
    rule = np.where(gen >= rows["since"], rows["rule_id"], rows["prev_rule_id"]).astype(np.int64)
    rule[(rows["until"] <= gen) | (rule == abi.RULE_ABSENT)] = -1
    return rule


def read_image(maps: MapSet) -> Image:
    """The allow/deny contents in force now (signatures are carried, not read)."""
    gen = maps.config().gen
    exact: dict[str, dict[bytes, int]] = {}
    for name in EXACT_MAPS:
        keys, rows = _exact_table(maps, name)
        rules = _visible(rows, gen)
        exact[name] = {k: int(r) for k, r in zip(keys, rules, strict=True) if r >= 0}
    tries = {name: _trie_entries(maps, name)[gen & 1] for name in POLICY_TRIES}
    return Image(exact, tries, None)


@dataclass
class _Undo:
    """What to reverse if the swap fails before the flip."""

    inserted: list[tuple[str, list[bytes]]] = field(default_factory=list)
    overwritten: list[tuple[str, list[bytes], list[bytes]]] = field(default_factory=list)

    def run(self, maps: MapSet) -> None:
        for name, keys in self.inserted:
            maps[name].delete_many(keys)
        for name, keys, old in self.overwritten:
            maps[name].overwrite(keys, old)


def _packed(rows: np.ndarray) -> list[bytes]:
    raw = rows.tobytes()
    w = rows.dtype.itemsize
    return [raw[i * w : (i + 1) * w] for i in range(len(rows))]


def _stage_exact(maps: MapSet, name: str, want: dict[bytes, int], gen: int, nxt_gen: int,
                 undo: _Undo) -> tuple[int, int, int, list[bytes]]:
    """Write the pending entries of one exact map. Returns (added, changed,
    removed, keys to delete after the flip). Values are built with numpy:
    a 10k-entry swap must not cost 10k ctypes objects."""
    keys, rows = _exact_table(maps, name)
    rules = _visible(rows, gen)
    index = {k: i for i, k in enumerate(keys)}
    new_keys = [k for k in want if k not in index]
    staying = [(k, index[k]) for k in want if k in index]
    gone = [i for k, i in index.items() if k not in want]

    new = np.zeros(len(new_keys), dtype=abi.DENY_DTYPE)
    new["rule_id"] = [want[k] for k in new_keys]
    new["prev_rule_id"] = abi.RULE_ABSENT
    new["since"] = nxt_gen
    new["until"] = abi.GEN_INF

    # Entries that stay but change rule (or were pending removal): new rule
    # from the next generation, the current one before it, counters kept.
    mod_idx = [i for k, i in staying if not (rules[i] == want[k] and rows[i]["until"] == abi.GEN_INF)]
    mod_keys = [keys[i] for i in mod_idx]
    changed_rows = rows[mod_idx].copy()
    cur = rules[mod_idx]
    changed = int(np.count_nonzero((cur >= 0) & (cur != np.array([want[k] for k in mod_keys],
                                                                    dtype=np.int64))))
    changed_rows["prev_rule_id"] = np.where(cur < 0, abi.RULE_ABSENT, cur).astype(np.uint32)
    changed_rows["rule_id"] = [want[k] for k in mod_keys]
    changed_rows["since"] = nxt_gen
    changed_rows["until"] = abi.GEN_INF

    # Entries that go: visible until the next generation; leftovers of an
    # earlier swap (already invisible) are only deleted.
    gone_arr = np.array(gone, dtype=np.int64)
    visible = rules[gone_arr] >= 0 if len(gone) else np.zeros(0, dtype=bool)
    ending_idx = gone_arr[visible]
    ending = rows[ending_idx].copy()
    ending["until"] = nxt_gen
    removed = len(ending_idx)

    m = maps[name]
    m.insert_new(new_keys, _packed(new))
    undo.inserted.append((name, new_keys))
    all_mod_keys = mod_keys + [keys[i] for i in ending_idx]
    if all_mod_keys:
        old = _packed(rows[mod_idx]) + _packed(rows[ending_idx])
        m.overwrite(all_mod_keys, _packed(changed_rows) + _packed(ending))
        undo.overwritten.append((name, all_mod_keys, old))
    return len(new_keys), changed, removed, [keys[i] for i in gone]


def _stage_trie(maps: MapSet, name: str, want: dict[TrieKey, bytes], nxt: int,
                stale: dict[TrieKey, bytes], undo: _Undo) -> int:
    m = maps[name]
    if stale:
        m.delete_many([lpm_key(name, nxt, k) for k in stale])
    keys = [lpm_key(name, nxt, k) for k in want]
    m.insert_new(keys, list(want.values()))
    undo.inserted.append((name, keys))
    return len(keys)


def _write_array(maps: MapSet, name: str, base: int, packed: bytes) -> None:
    """Write a slice of an idle-slot array: plain stores through mmap."""
    maps[name].write_mmap(base, packed)


def _read_array(maps: MapSet, name: str, base: int, n: int) -> bytes:
    return maps[name].read_mmap(base, n)


def _current_sigs(maps: MapSet, cur: int, tries: dict[str, dict[int, dict[TrieKey, bytes]]]) -> SigImage:
    """The signatures in force (slot ``cur``), to carry into the next slot."""
    meta = abi.SigMeta.from_buffer_copy(maps["sig_meta"].lookup(cur.to_bytes(4, "little")) or
                                        bytes(ctypes.sizeof(abi.SigMeta)))
    if meta.count == 0:
        return empty_sig_image()
    width = ctypes.sizeof(abi.Sig)
    raw = _read_array(maps, "sigs", cur * abi.MAX_SIGS, meta.count)
    sigs = [abi.Sig.from_buffer_copy(raw[i * width : (i + 1) * width]) for i in range(meta.count)]
    return SigImage(
        sigs, meta,
        {name: _read_array(maps, name, cur * n, n) for name, n in SIG_ARRAYS.items()},
        {name: tries[name][cur] for name in SIG_TRIES},
    )


def _stage_sigs(maps: MapSet, img: SigImage, nxt: int,
                tries: dict[str, dict[int, dict[TrieKey, bytes]]], undo: _Undo) -> None:
    if len(img.sigs) > abi.MAX_SIGS:
        raise BreakwaterError(f"{len(img.sigs)} signatures; the table holds {abi.MAX_SIGS}")
    img.meta.count = len(img.sigs)
    flags = 0
    for bit, name in ((abi.SIG_SRC_V4, "sig_src_v4"), (abi.SIG_SRC_V6, "sig_src_v6"),
                      (abi.SIG_DST_V4, "sig_dst_v4"), (abi.SIG_DST_V6, "sig_dst_v6")):
        if img.tries.get(name):
            flags |= bit
    img.meta.flags = flags
    for name in SIG_TRIES:
        _stage_trie(maps, name, img.tries.get(name, {}), nxt, tries[name][nxt], undo)
    if img.sigs:
        _write_array(maps, "sigs", nxt * abi.MAX_SIGS, b"".join(bytes(s) for s in img.sigs))
        for name, n in SIG_ARRAYS.items():
            _write_array(maps, name, nxt * n, img.arrays[name])
    maps["sig_meta"].update(nxt.to_bytes(4, "little"), bytes(img.meta))


def _retire_exact(maps: MapSet, name: str, keys: list[bytes]) -> None:
    """Delete removed exact deny entries, handing each one's hits (its
    source's drops) to the per-source counters, so totals never go back."""
    src = maps["src_v4" if name == "deny_v4" else "src_v6"]
    deny = maps[name]
    for k in keys:
        raw = deny.take(k)
        if raw is None:
            continue
        e = abi.DenyEntry.from_buffer_copy(raw)
        if not e.packets:
            continue
        old = src.lookup(k)
        c = abi.SrcCounters.from_buffer_copy(old) if old else abi.SrcCounters()
        c.packets += e.packets
        c.bytes += e.bytes
        c.drops += e.packets
        try:
            src.update(k, bytes(c))
        except BreakwaterError:
            LOGGER.warning("could not fold a removed deny entry's counters into %s", src.name)


def _zero_rules(maps: MapSet, slots: list[int]) -> None:
    """Reset a rule slot: its counters, its aggregate bucket and every
    per-source bucket it had, so a rule that takes the slot starts fresh."""
    if not slots:
        return
    keys = [s.to_bytes(4, "little") for s in slots]
    rs, rl = maps["rule_stats"], maps["rl_agg"]
    rs.overwrite(keys, [bytes(rs.spec.full_value_size())] * len(keys))
    rl.overwrite(keys, [bytes(rl.spec.full_value_size())] * len(keys))
    src = maps["rl_src"]
    raw, _, n = src.read_all()
    ksz = src.spec.key_size
    wanted = set(slots)
    stale = [raw[i * ksz : (i + 1) * ksz] for i in range(n)
             if int.from_bytes(raw[i * ksz : i * ksz + 4], "little") in wanted]
    src.delete_many(stale)


def apply(maps: MapSet, image: Image, new_rules: tuple[int, ...] = (),
          freed_rules: tuple[int, ...] = ()) -> SwapResult:
    """Make ``image`` the policy in force, all at once.

    ``new_rules``: rule slots that start counting from zero (zeroed before the
    flip, and once more after it for a slot freed by this same change);
    ``freed_rules``: slots no rule uses any more (zeroed after the flip).
    """
    started = time.perf_counter()
    with maps.locked():
        cfg = maps.config()
        gen = cfg.gen
        cur, nxt, nxt_gen = gen & 1, (gen + 1) & 1, gen + 1
        if nxt_gen >= abi.GEN_INF:
            raise BreakwaterError("rule-set generation exhausted; reattach with --replace-maps")
        tries = {name: _trie_entries(maps, name) for name in (*POLICY_TRIES, *SIG_TRIES)}
        sigs = image.sigs if image.sigs is not None else _current_sigs(maps, cur, tries)
        undo = _Undo()
        added = changed = removed = 0
        delete_after: list[tuple[str, list[bytes]]] = []
        trie_total = 0
        try:
            for name in EXACT_MAPS:
                a, c, r, later = _stage_exact(maps, name, image.exact.get(name, {}), gen, nxt_gen, undo)
                added, changed, removed = added + a, changed + c, removed + r
                delete_after.append((name, later))
            for name in POLICY_TRIES:
                trie_total += _stage_trie(maps, name, image.tries.get(name, {}), nxt,
                                          tries[name][nxt], undo)
            _stage_sigs(maps, sigs, nxt, tries, undo)
            _zero_rules(maps, list(new_rules))
        except BaseException:
            LOGGER.error("swap to generation %d failed; undoing, generation %d stays in force",
                         nxt_gen, gen)
            undo.run(maps)
            raise
        # Tries the new generation uses must be looked up from the flip on.
        uses = {name: bool(image.tries.get(name)) for name in POLICY_TRIES}
        cfg = maps.config()
        for name, used in uses.items():
            if used:
                cfg.flags |= abi.TRIE_FLAGS[name]
        cfg.gen = nxt_gen
        maps.write_config(cfg)  # the flip
        time.sleep(GRACE_SECONDS)
        for name, keys in delete_after:
            _retire_exact(maps, name, keys)
        for name in (*POLICY_TRIES, *SIG_TRIES):
            old = tries[name][cur]
            if old:
                maps[name].delete_many([lpm_key(name, cur, k) for k in old])
        cfg = maps.config()
        for name, used in uses.items():
            if not used:
                cfg.flags &= ~abi.TRIE_FLAGS[name]
        maps.write_config(cfg)
        _zero_rules(maps, sorted(set(freed_rules)))
    seconds = time.perf_counter() - started
    LOGGER.info("rule set generation %d in force (%.1f ms)", nxt_gen, seconds * 1000,
                extra={"event": "swap", "gen": nxt_gen, "exact_added": added,
                       "exact_changed": changed, "exact_removed": removed})
    return SwapResult(nxt_gen, added, changed, removed, trie_total, len(sigs.sigs), seconds)
