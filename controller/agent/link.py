"""The agent's link to its controller: the :class:`~controller.agent.sync.SyncClient`
the configuration asks for (none standalone), registered as this node.

Each controller layer the client receives is handed to the agent's loop
thread, swapped in on every interface (or none) and only then ACKed; a
client replaced meanwhile (SIGHUP changed who the node is or where its
controller is) has its pending layers cancelled, not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

from breakwater.v1 import node_pb2, sync_service_pb2

from ..api.auth import channel_credentials
from ..dataplane import abi
from ..rules.compiler import DEFAULT_MAX_SIGNATURES
from .config import AgentConfig
from .interface import Interface
from .sync import ApplyCancelledError, ControllerLayer, SyncClient

__all__ = ["ControllerLink", "identity"]

LOGGER = logging.getLogger("breakwater.agent")

# How long stopping a client waits for its thread, off the loop thread.
STOP_SECONDS: Final = 5.0


def identity(config: AgentConfig, interfaces: Sequence[Interface]) -> sync_service_pb2.Register:
    """Who this agent is, for Register (the sync client adds resume_version)."""
    from .. import __version__

    sizes = config.sizes
    caps = node_pb2.NodeCapabilities(
        abi_version=abi.ABI_VERSION, max_signature_rules=DEFAULT_MAX_SIGNATURES,
        max_rules=sizes.rules - 1, max_deny_v4=sizes.deny_v4, max_deny_v6=sizes.deny_v6,
        max_deny_prefixes_v4=sizes.deny_pfx_v4, max_deny_prefixes_v6=sizes.deny_pfx_v6, deltas=True)
    modes = {"native": node_pb2.ATTACH_MODE_NATIVE, "generic": node_pb2.ATTACH_MODE_GENERIC}
    unknown = node_pb2.ATTACH_MODE_UNSPECIFIED
    ifaces = [node_pb2.NodeInterface(name=i.name, netns=i.cfg.netns or "",
                                     attach_mode=modes.get(i.attach_mode, unknown))
              for i in list(interfaces)]
    return sync_service_pb2.Register(
        node_id=config.node_id, labels=config.labels, capabilities=caps, agent_version=__version__,
        interfaces=ifaces,
        mode=node_pb2.AGENT_MODE_MONITOR if config.monitor else node_pb2.AGENT_MODE_ENFORCE)


def _wanted(config: AgentConfig) -> tuple[object, ...]:
    """What a registration depends on: a change re-registers."""
    return (config.controllers, config.node_id, tuple(sorted(config.labels.items())), config.mode,
            tuple((i.name, i.netns) for i in config.interfaces))


class ControllerLink:
    """The sync client of the agent, if any (:attr:`client`).

    ``config`` and ``interfaces`` are the agent's as they are now (for
    Register); ``put`` makes a layer the node's controller layer, called on
    the loop thread through ``call_in_loop``; ``on_loop`` says whether the
    caller is the loop thread."""

    def __init__(self, *, config: Callable[[], AgentConfig],
                 interfaces: Callable[[], Sequence[Interface]],
                 put: Callable[[ControllerLayer], None],
                 call_in_loop: Callable[[Callable[[], None]], None],
                 on_loop: Callable[[], bool]) -> None:
        self._config = config
        self._interfaces = interfaces
        self._put = put
        self._call_in_loop = call_in_loop
        self._on_loop = on_loop
        self.client: SyncClient | None = None
        self._key: tuple[object, ...] = ()
        self._generation = 0

    def start(self, held: ControllerLayer) -> None:
        """Register with the configured controller (if any); ``held`` is the
        layer in force now."""
        cfg = self._config()
        self._key = _wanted(cfg)
        if not cfg.controllers:
            return
        self._generation += 1
        generation = self._generation

        def apply(layer: ControllerLayer) -> None:
            def put() -> None:
                if generation != self._generation:  # from a client since replaced
                    raise ApplyCancelledError("the sync client was replaced")
                self._put(layer)

            self._call_in_loop(put)

        if cfg.tls is None and cfg.insecure:
            LOGGER.warning("the sync stream to %s is PLAINTEXT ([tls] insecure = true): anyone on the path "
                           "can change this edge's rules; configure [tls] cert, key and ca",
                           ", ".join(cfg.controllers),
                           extra={"event": "sync_insecure", "controller": ", ".join(cfg.controllers)})
        credentials = channel_credentials(cfg.tls) if cfg.tls is not None else None
        self.client = SyncClient(cfg.controllers, identity=self.identity, apply=apply,
                                 state_dir=cfg.state_dir, held=held, credentials=credentials)
        self.client.start()

    def identity(self) -> sync_service_pb2.Register:
        return identity(self._config(), self._interfaces())

    def stop(self) -> None:
        if self.client is not None:
            self._generation += 1
            # From the loop thread, do not wait: the client may be waiting for the loop.
            self.client.stop(timeout=0.0 if self._on_loop() else STOP_SECONDS)
            self.client = None

    def reconfigure(self, held: ControllerLayer) -> None:
        """After SIGHUP: re-register when who the node is or where its
        controller is changed."""
        if _wanted(self._config()) == self._key:
            return
        LOGGER.info("controller settings changed: re-registering",
                    extra={"event": "controller_reconfigured",
                           "controller": ", ".join(self._config().controllers)})
        self.stop()
        self.start(held)
