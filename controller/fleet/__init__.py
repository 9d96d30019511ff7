"""``breakwater controller``: the control plane of a fleet of agents.

The daemon (:mod:`.daemon`) and its configuration (:mod:`.config`), its
store of rules, nodes, events and audit records (the interface
:mod:`.storeapi`; SQLite :mod:`.store`, the default; etcd :mod:`.etcdstore`
over :mod:`.etcd`, the one module that talks to etcd), the event
log that feeds WatchEvents (:mod:`.eventlog`), the API backend over them
(:mod:`.backend`), the sync hub that streams versioned rule sets to every
agent, xDS style (:mod:`.synchub`: its configuration :mod:`.syncconfig`,
its rule index and messages :mod:`.ruleindex`, its node state writer
:mod:`.nodewriter`, its per-agent streams :mod:`.syncstreams`, the
servicer :mod:`.syncservice`, and :mod:`.wiring`, the hook the daemon
calls), and cluster-wide detection from every node's telemetry
(:mod:`.detector`), which with expiry and pruning runs on one elected
leader (:mod:`.leader`). Beside :mod:`controller.agent`, not above it: the two
daemons share only the layers below and the protocol.
"""

__all__ = [
    "backend",
    "config",
    "daemon",
    "detector",
    "etcd",
    "etcdstore",
    "eventlog",
    "leader",
    "nodewriter",
    "ruleindex",
    "store",
    "storeapi",
    "syncconfig",
    "synchub",
    "syncservice",
    "syncstreams",
    "wiring",
]
