"""Which controller runs the fleet's singleton jobs: the expiry sweep, the
event log's pruning and cluster-wide detection run on one elected leader
(:class:`Leadership`), never on two at once.

**SQLite** (:class:`SoleLeader`): one controller serves the file, so it is
always the leader and its writes need no fence.

**etcd** (:class:`EtcdElection`): the leader key (``<prefix>leader``, see
:mod:`controller.fleet.etcdstore`) holds the leader's name on a lease of
its own (``ttl`` seconds, :data:`LEADER_TTL`). A thread, every
:data:`CHECK_SECONDS`, keeps the lease alive and then either campaigns
(one transaction: create the key if it does not exist) or, as the leader,
checks that the key is still the one it created. The key's
``create_revision`` is the **fencing token**: the singleton jobs write
inside :meth:`~controller.fleet.storeapi.Store.fenced`, so each of their
transactions also compares the leader key's ``create_revision`` with the
token, and a deposed leader (paused past its lease, cut off from etcd) has
its writes refused (:class:`~controller.errors.FailedPreconditionError`)
instead of racing the new leader's. A leader that cannot renew its lease
stops calling itself leader once the lease may have run out (measured from
before the last successful renewal), before etcd can elect another.

Handover: a controller that stops resigns (deletes the key, revokes its
lease): another takes over within :data:`CHECK_SECONDS`. One that dies
(kill -9) holds the key until its lease runs out: the others take over
within ``ttl`` + :data:`CHECK_SECONDS`.

Leadership shows as ``breakwater_controller_leader`` (1 on the leader),
``breakwater_controller_leader_changes_total`` and in the logs
(``leader_elected``, ``leader_lost``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final, Protocol

from ..errors import BreakwaterError
from ..metrics import Exposition
from .etcd import EtcdClient, compare_create, delete_op, put_op
from .storeapi import Store

__all__ = ["CHECK_SECONDS", "LEADER_TTL", "EtcdElection", "Leadership", "SoleLeader", "open_leadership"]

LOGGER = logging.getLogger("breakwater.controller.leader")

LEADER_TTL: Final = 5
"""Seconds the leader key outlives a leader that died (its lease's TTL)."""
CHECK_SECONDS: Final = 1.0
"""How often the lease is renewed and the key campaigned for or checked."""


class Leadership(Protocol):
    """Whether this controller is the leader, and its fencing token."""

    name: str

    @property
    def is_leader(self) -> bool: ...

    @property
    def token(self) -> int: ...

    def leader(self) -> str: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def collect_metrics(self, out: Exposition) -> None: ...


def _metrics(out: Exposition, leader: bool, changes: int) -> None:
    out.add("breakwater_controller_leader", "gauge",
            "1 while this controller is the leader (runs expiry, pruning, fleet detection)", int(leader))
    out.add("breakwater_controller_leader_changes_total", "counter",
            "Times this controller became the leader", changes)


class SoleLeader:
    """The only controller of its store (SQLite): always the leader, token 0
    (nothing to fence)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def token(self) -> int:
        return 0

    def leader(self) -> str:
        return self.name

    def start(self) -> None:
        LOGGER.info("%s is the leader (the only controller of its store)", self.name,
                    extra={"event": "leader_elected", "leader": self.name, "token": 0})

    def close(self) -> None:
        pass

    def collect_metrics(self, out: Exposition) -> None:
        _metrics(out, True, 1)


class EtcdElection:
    """Leader election on one etcd key (see the module docstring).
    :meth:`campaign`, :meth:`observe` and :meth:`resign` are the steps; the
    thread :meth:`start` starts runs them."""

    def __init__(self, client: EtcdClient, key: bytes, name: str, *, ttl: int = LEADER_TTL,
                 check_every: float = CHECK_SECONDS) -> None:
        self.client = client
        self.key = key
        self.name = name
        self.ttl = ttl
        self.check_every = check_every
        self.changes = 0
        self._lock = threading.Lock()
        self._lease = 0
        self._token = 0
        self._valid_until = 0.0
        self._leader = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="breakwater-leader", daemon=True)
        self._what = f"leader election ({key.decode()})"

    # -- what the jobs ask --

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._token != 0 and time.monotonic() < self._valid_until

    @property
    def token(self) -> int:
        """The leader key's ``create_revision`` while this controller is the leader, else 0."""
        with self._lock:
            return self._token if time.monotonic() < self._valid_until else 0

    def leader(self) -> str:
        """The leader's name as last seen ("" when there is none)."""
        with self._lock:
            return self._leader

    # -- the steps --

    def _renew(self) -> None:
        """Keep the lease alive (or take a new one); a lost lease loses the leadership."""
        sent = time.monotonic()
        if self._lease:
            left = self.client.keepalive(self._lease, what=f"{self._what}: keep the lease")
            if left > 0:
                with self._lock:
                    self._valid_until = sent + left
                return
            self._lose("its lease expired")
        lease = self.client.grant(self.ttl, what=f"{self._what}: grant a lease")
        with self._lock:
            self._lease, self._valid_until = lease, sent + self.ttl

    def campaign(self) -> bool:
        """One attempt: create the leader key on this controller's lease if
        there is none. True when this controller is the leader now."""
        if not self._lease:
            self._renew()
        result = self.client.txn([compare_create(self.key, 0)],
                                 [put_op(self.key, self.name.encode(), self._lease)],
                                 what=f"{self._what}: campaign")
        if not result.succeeded:
            self.observe()
            return False
        with self._lock:
            self._token, self._leader = result.revision, self.name
            self.changes += 1
        LOGGER.warning("%s is now the leader (fencing token %d)", self.name, result.revision,
                       extra={"event": "leader_elected", "leader": self.name, "token": result.revision})
        return True

    def observe(self) -> tuple[str, int]:
        """The leader's name and its key's ``create_revision`` (("", 0): none)."""
        _, kvs, _ = self.client.range(self.key, what=f"{self._what}: observe")
        name, token = (kvs[0].value.decode(), kvs[0].create_revision) if kvs else ("", 0)
        with self._lock:
            self._leader = name
            mine = self._token
        if mine and token != mine:
            self._lose(f"the leader key is now {name or 'gone'}'s (revision {token})")
        return name, token

    def resign(self) -> None:
        """Give the leadership up (delete the key if it is still ours)."""
        with self._lock:
            token = self._token
        if token:
            self._lose("it resigned")
            self.client.txn([compare_create(self.key, token)], [delete_op(self.key)],
                            what=f"{self._what}: resign")

    def _lose(self, why: str) -> None:
        with self._lock:
            was, self._token = self._token, 0
            if was and self._leader == self.name:
                self._leader = ""
        if was:
            LOGGER.warning("%s is no longer the leader: %s", self.name, why,
                           extra={"event": "leader_lost", "leader": self.name, "token": was})

    # -- the thread --

    def start(self) -> None:
        self._thread.start()

    def _step(self) -> None:
        self._renew()
        with self._lock:
            leading = self._token != 0
        if leading:
            self.observe()
        else:
            self.campaign()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except BreakwaterError as exc:
                if self._stop.is_set():
                    return
                if self._token and not self.is_leader:
                    self._lose(f"its lease may have run out ({exc})")
                LOGGER.warning("%s", exc, extra={"event": "leader_election_failed"})
            except Exception:
                LOGGER.exception("%s failed", self._what)
            self._stop.wait(self.check_every)

    def close(self) -> None:
        """Stop campaigning; resign and end the lease."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.client.timeout + 5)
        try:
            self.resign()
            if self._lease:
                self.client.revoke(self._lease, what=f"{self._what}: revoke the lease")
                self._lease = 0
        except BreakwaterError as exc:
            LOGGER.warning("%s", exc)

    def collect_metrics(self, out: Exposition) -> None:
        _metrics(out, self.is_leader, self.changes)


def open_leadership(store: Store, name: str) -> Leadership:
    """The election for ``store``: :class:`EtcdElection` on an etcd store's
    leader key, else :class:`SoleLeader`. Not started."""
    from .etcdstore import EtcdStore
    if isinstance(store, EtcdStore):
        return EtcdElection(store.client, store.leader_key, name)
    return SoleLeader(name)
