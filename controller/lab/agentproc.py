"""The agent as the demo runs it: its configuration (``AGENT_CONFIG``) and
the process (:class:`Agent`).

The demo runs the real agent as an operator would (``python -m
controller.cli agent --config <generated toml>``) in its own session, tails
its JSON log and stops it as a process group. The configuration says where
and why it differs from the production defaults (``docs/agent.toml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .topology import DemoError

__all__ = ["AGENT_CONFIG", "AGENT_INTERVAL", "AGENT_READY_SECONDS", "Agent"]

AGENT_INTERVAL: Final = 0.25
AGENT_READY_SECONDS: Final = 120.0  # the first start compiles the XDP program
AGENT_STOP_SECONDS: Final = 10.0

AGENT_CONFIG: Final = """\
# breakwater demo: the agent's configuration for one run, removed with the lab.
# Production defaults are in docs/agent.toml. This differs where the lab does:
# floods of tens of thousands of packets/s from Python senders on a small VM
# (not millions), waves of 8 s, a run of 30 s.
interfaces = [{{ name = "{ifname}", netns = "{netns}", mode = "auto" }}]  # native XDP, else generic
protected = ["{protected}"]   # the origin's prefix
mode = "enforce"
interval = {interval}         # production 1.0: a wave lasts 8 s, detection must take a fraction of one
detach_on_exit = true         # production false: the demo removes everything it built
state_dir = "{state_dir}"
pin_root = "{pin_root}"
metrics = ""                  # off: the demo reads the agent's log and the maps
api = ""                      # off: nothing calls it, and 127.0.0.1:9612 may be a real agent's

# Small maps (production: 1M-entry deny and source maps); src_v4 holds the
# spoofed wave's 96,000 sources.
[sizes]
deny_v4 = 65536
deny_v6 = 4096
deny_pfx_v4 = 16384
deny_pfx_v6 = 4096
src_v4 = 262144
src_v6 = 4096
rl_src = 65536
dst_v4 = 4096
dst_v6 = 1024

[detect]
start_intervals = 2           # production 3: an attack starts after 0.5 s over its threshold
end_intervals = 8             # production 15: it ends 2 s after its flood stops
source_pps = 1000.0           # production 20000: each bot sends 2000 pps, the client 200
udp = {{ pps = 3000.0, factor = 3.0, min_share = 0.0 }}          # production 50000
reflection = {{ pps = 3000.0, factor = 4.0, min_share = 0.0 }}   # production 10000
syn = {{ pps = 3000.0, factor = 4.0, min_share = 0.25 }}         # production 10000

[mitigate]
rule_ttl = 60.0               # production 300
grace_ttl = 5.0               # production 60: rules of an ended attack go within the demo
reflection_pps = 100          # production 1000: a 20k pps wave is >= 99% dropped even while limited
escalate_after = 4            # production 10: the reflection limit becomes a drop after 1 s over
ceiling_pps = 50              # production 1000: the victim's SYN ceiling passes < 1% of 12k pps
"""
"""The agent's configuration, a ``str.format`` template (ifname, netns,
protected, interval, state_dir, pin_root)."""


@dataclass
class Agent:
    """``breakwater agent`` in its own session; its JSON log goes to a file the demo tails."""

    proc: subprocess.Popen[bytes]
    log: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _partial: str = ""

    @classmethod
    def start(cls, config: Path, log: Path, *, netns: str | None = None, command: str = "agent") -> Agent:
        """``breakwater COMMAND --config CONFIG`` (``agent`` or ``controller``),
        inside network namespace ``netns`` if given (``nsenter --net``: the
        mount namespace, and so bpffs, stays), killed if this process dies."""
        cmd = [sys.executable, "-m", "controller.cli", "--log-level", "info",
               command, "--config", str(config)]
        if netns:
            cmd = ["setpriv", "--pdeathsig", "KILL", "nsenter", f"--net=/run/netns/{netns}", *cmd]
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        return cls(proc, log)

    def poll(self) -> list[dict[str, Any]]:
        """The JSON log lines written since the last call."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk.decode(errors="replace")).split("\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        self.events.extend(out)
        return out

    def wait_ready(self, timeout: float, event: str = "agent_ready") -> dict[str, Any]:
        """Wait for the log line of ``event`` (new lines, or ones already read)."""
        for doc in self.events:
            if doc.get("event") == event:
                return doc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in self.poll():
                if doc.get("event") == event:
                    return doc
            if self.proc.poll() is not None:
                raise DemoError(f"the process exited ({self.proc.returncode}) before {event}:\n{self.tail()}")
            time.sleep(0.05)
        raise DemoError(f"no {event} within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM (it detaches and exits), then SIGKILL to whatever is left of its group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(AGENT_STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
