"""The lab: network namespaces, veth pairs and bounded traffic for the demo,
the tests and the benchmarks.

Namespaces and links that always clean up (:mod:`.netns`), bounded UDP
senders and receivers (:mod:`.traffic`), crafted flood frames
(:mod:`.frames`), and ``breakwater demo`` (:mod:`.demo`), which runs the real
agent against a multi-vector flood: its lab (:mod:`.topology`), the agent as
a process (:mod:`.agentproc`), the attack waves and the legitimate client
(:mod:`.waves`), what it measures in the data plane (:mod:`.measure`), the
live view (:mod:`.view`) and the summary (:mod:`.summary`). Every address
comes from 198.18.0.0/15 and nothing is routed out. Runs the daemons as
processes; imports only the layers below for reading what the data plane
counted.

``breakwater lab run`` (:mod:`.run`) replays a scenario file
(:mod:`.scenario`) against a real controller and agents: the fleet lab
(:mod:`.fleet`), the origins and the legitimate users (:mod:`.audience`),
the wave senders (:mod:`.attack`) and the report and chart (:mod:`.report`).
:mod:`.vm` boots the lab box (``make vagrant-box``) with qemu in a namespace
of its own, for the VM tier and ``bench/vm.py``.
"""

__all__ = ["agentproc", "attack", "audience", "demo", "fleet", "frames", "measure", "netns", "report",
           "run", "scenario", "summary", "topology", "traffic", "view", "vm", "waves"]
