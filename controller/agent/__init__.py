"""``breakwater agent``: the daemon of one edge server.

Its configuration (:mod:`.config`), its local state in SQLite
(:mod:`.state`), the loop that harvests, detects and enforces every interval
(:mod:`.daemon`), its side of the controller's sync stream (:mod:`.sync`),
the telemetry summary it reports each interval (:mod:`.telemetry`) and its
local API (:mod:`.localapi`). Built on the data plane, rules, detection and
API layers; knows the controller only through the sync protocol.
"""

__all__ = ["config", "daemon", "localapi", "state", "sync", "telemetry"]
