"""``breakwater agent``: the daemon of one edge server.

Its configuration (:mod:`.config`) and local state in SQLite (:mod:`.state`);
the daemon (:mod:`.daemon`: start, the loop, signals) and its parts: each
protected interface (:mod:`.interface`), one detection interval of one
interface, harvest to store (:mod:`.interval`), the rule layers and their
swap into the maps (:mod:`.layers`), SIGHUP (:mod:`.reload`), the metrics
page (:mod:`.metrics`); its side of the controller's sync stream
(:mod:`.sync`) and the wiring of it (:mod:`.link`); the telemetry summary of
an interval (:mod:`.telemetry`) and where it goes (:mod:`.report`); its
local API (:mod:`.localapi`). Built on the data plane, rules, detection and
API layers; knows the controller only through the sync protocol.
"""

__all__ = [
    "config",
    "daemon",
    "interface",
    "interval",
    "layers",
    "link",
    "localapi",
    "metrics",
    "reload",
    "report",
    "state",
    "sync",
    "telemetry",
]
