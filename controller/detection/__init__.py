"""Detection: counters in, attacks and the rules against them out.

The harvest turns the data plane's cumulative counters into one interval's
sample (:mod:`.harvest`, :mod:`.samples`); the detector keeps baselines and
per-vector attack state machines and reports attack events (:mod:`.detector`
over its address-keyed tables, :mod:`.tables`, the source side of each
interval, :mod:`.sources`, the sources each destination knew in peacetime,
:mod:`.known`, and each attack's state, :mod:`.attacks`; the
events themselves are :mod:`.events`); the planner turns the attacks in
force into the narrowest automatic rules, with guards, caps, escalation and
TTLs (:mod:`.planner`). Both read their table of :mod:`.config`. Pure
computation on samples: no I/O besides the harvest's map reads, so every
decision is tested on recorded sequences.
"""

__all__ = [
    "attacks", "config", "detector", "events", "harvest", "known", "planner", "samples", "sources", "tables",
]
