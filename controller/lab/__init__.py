"""The lab: network namespaces, veth pairs and bounded traffic for the demo,
the tests and the benchmarks.

Namespaces and links that always clean up (:mod:`.netns`), bounded UDP
senders and receivers (:mod:`.traffic`), crafted flood frames
(:mod:`.frames`), and ``breakwater demo`` (:mod:`.demo`), which runs the real
agent against a multi-vector flood. Every address comes from 198.18.0.0/15
and nothing is routed out. Runs the daemons as processes; imports only the
layers below for reading what the data plane counted.
"""

__all__ = ["demo", "frames", "netns", "traffic"]
