"""``breakwater``: the operator's command line, the one door to every
process and command (agent, controller, demo, local data-plane commands,
and the fleet API with ``--server``).

:mod:`.main` is the entry point; :mod:`.parser` declares every command and
flag and :mod:`.dispatch` picks a command's local or remote handler. The
local forms work on this machine's pinned maps (:mod:`.dataplane` for the
XDP program, :mod:`.local` for the rule set, lists, counters and events);
the remote ones (:mod:`.remote`) talk to a controller or an agent's API,
reading a rule's fields from flags with :mod:`.ruleflags` and showing
answers with :mod:`.render`; :mod:`.daemons` starts the agent, the
controller and the demo; :mod:`.lab` is the ``lab`` command group and
:mod:`.pki` makes the CA and certificates.

Top of the stack: it imports every layer and nothing imports it.
"""

__all__ = ["daemons", "dataplane", "dispatch", "lab", "local", "main", "parser", "pki", "remote", "render",
           "ruleflags"]
