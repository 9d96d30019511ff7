"""``breakwater``: the operator's command line, the one door to every
process and command (agent, controller, demo, local data-plane commands,
and the fleet API with ``--server``).

Top of the stack: it imports every layer and nothing imports it.
"""

__all__ = ["main", "remote"]
