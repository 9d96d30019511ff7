"""The data plane: the XDP program in ``bpf/`` as the kernel runs it.

Owns everything that touches the kernel on one interface: building the
program with bcc (:mod:`.build`), attaching, adopting and upgrading it without
a gap (:mod:`.attach`, :mod:`.netlink`), its pinned maps checked against this
build's layouts and read and written in batches (:mod:`.maps`,
:mod:`.pinned`, :mod:`.libbpf`), the C structures and constants mirrored from
``bpf/`` (:mod:`.abi`, :mod:`.reasons`), atomic rule-set swaps
(:mod:`.swap`), allow and deny entries (:mod:`.entries`), protected prefixes
and reflection ports (:mod:`.protect`), the challenged TCP services of the
SYN challenge (:mod:`.challenge`) and the raw counters (:mod:`.counters`).

It knows nothing of rules, attacks or the fleet: the layers above hand it map
contents. Imports only the shared bottom (errors, addresses, validate).
"""

__all__ = [
    "abi",
    "attach",
    "build",
    "challenge",
    "counters",
    "entries",
    "libbpf",
    "maps",
    "netlink",
    "pinned",
    "protect",
    "reasons",
    "swap",
]
