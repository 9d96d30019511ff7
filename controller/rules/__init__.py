"""Rules: what an operator, a feed, the detector or the controller asks the
data plane to do, and how a set of them becomes map contents.

The rule model with its validation (:mod:`.model`), the admission guards of
rules written through an API (:mod:`.admission`) and the small values it is
made of (:mod:`.values`: protocols, port ranges, TCP flags, durations), where a cluster rule
applies (:mod:`.scope`), blocklist files (:mod:`.blocklist`), presets
(:mod:`.presets`), the compiler from a rule set to signatures and entries
(:mod:`.compiler`), the map image a swap writes (:mod:`.image`) and
:func:`.enforce.apply`, the one path that puts a rule set in force on an
interface. Imports the data plane below it; nothing above.
"""

__all__ = ["admission", "blocklist", "compiler", "enforce", "image", "model", "presets", "scope", "values"]
