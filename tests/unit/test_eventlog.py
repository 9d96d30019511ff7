"""controller.fleet.eventlog: events stored with a sequence, replayed, then streamed live."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from breakwater.v1 import event_pb2
from controller.fleet.eventlog import EventLog
from controller.fleet.store import FleetStore


def _attack(attack_id: str) -> event_pb2.Event:
    return event_pb2.Event(attack=event_pb2.AttackEvent(attack_id=attack_id))


def test_publish_sets_sequence_name_node_time(tmp_path: Path) -> None:
    log = EventLog(FleetStore.open(tmp_path))
    out = log.publish([_attack("a1"), _attack("a2")], node="nodes/edge-1")
    assert [(e.sequence, e.name, e.node) for e in out] == [(1, "events/1", "nodes/edge-1"),
                                                            (2, "events/2", "nodes/edge-1")]
    assert all(e.HasField("time") for e in out)
    again = EventLog(FleetStore.open(tmp_path))  # a restarted controller
    assert again.last_sequence == 2
    assert [e.attack.attack_id for e in again.page()] == ["a1", "a2"]
    assert [e.sequence for e in again.page(newest_first=True, limit=1)] == [2]


def test_watch_replays_then_streams_until_stopped(tmp_path: Path) -> None:
    log = EventLog(FleetStore.open(tmp_path))
    log.publish([_attack("old1"), _attack("old2")])
    stop = threading.Event()
    got: list[str] = []

    def consume() -> None:
        for e in log.watch(1, stop.is_set):
            got.append(e.attack.attack_id)
            if len(got) == 3:
                stop.set()

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    log.publish([_attack("live1"), _attack("live2")])
    t.join(10)
    assert not t.is_alive()
    assert got == ["old2", "live1", "live2"]
