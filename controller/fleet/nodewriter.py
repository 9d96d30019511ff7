"""The sync hub's node state writer: registrations, ACKs, NACKs, heartbeats
and disconnects written to the :class:`~controller.fleet.store.FleetStore`
by one thread, in the order they were asked for, many nodes per
transaction (:class:`NodeWriter`). A registration is written at once (its
stream waits for it), also while updates are gathering: agents failing
over to this controller together are not held back by each other's ACKs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from .store import NodeRecord
from .storeapi import Store

__all__ = ["NodeWriter"]

LOGGER = logging.getLogger("breakwater.synchub")  # the sync hub's: its records keep their logger


class NodeWriter:
    """Registrations and node updates, written in the order they were
    asked for; consecutive updates are merged and written many nodes per
    transaction, at most every ``interval`` seconds."""

    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._cv = threading.Condition()
        self._ops: deque[Any] = deque()  # ("register", args, future) or dict node -> fields
        self._stop = False
        self.failures = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="breakwater-nodes", daemon=True)
        self._thread.start()

    def register(self, node_id: str, labels: Mapping[str, str], doc: Mapping[str, Any]
                 ) -> concurrent.futures.Future[NodeRecord]:
        future: concurrent.futures.Future[NodeRecord] = concurrent.futures.Future()
        with self._cv:
            self._ops.append(("register", (node_id, dict(labels), dict(doc)), future))
            self._cv.notify()
        return future

    def update(self, node_id: str, **fields_: Any) -> None:
        self.update_many({node_id: fields_})

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        with self._cv:
            tail = self._ops[-1] if self._ops else None
            if not isinstance(tail, dict):
                tail = {}
                self._ops.append(tail)
                self._cv.notify()
            for node_id, fields_ in changes.items():
                tail.setdefault(node_id, {}).update(fields_)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._stop:
                    self._cv.wait()
                if not self._ops and self._stop:
                    return
                urgent = any(isinstance(op, tuple) for op in self._ops)
            if not urgent and not self._stop and self._interval:
                with self._cv:  # let updates of many nodes gather; a registration does not wait
                    self._cv.wait_for(lambda: self._stop or any(isinstance(op, tuple) for op in self._ops),
                                      self._interval)
            with self._cv:
                ops = list(self._ops)
                self._ops.clear()
            for op in ops:
                self._write(op)

    def _write(self, op: Any) -> None:
        try:
            if isinstance(op, tuple):
                _kind, (node_id, labels, doc), future = op
                try:
                    record = self._store.register_node(node_id, labels, doc)
                except BaseException as exc:
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        future.set_exception(exc)
                    raise
                # the stream that asked may have ended meanwhile (its future cancelled): not a failure
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(record)
            else:
                self._store.update_nodes(op)
                self.batches += 1
        except Exception:
            self.failures += 1
            LOGGER.exception("writing node state failed")
