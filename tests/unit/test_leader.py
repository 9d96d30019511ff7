"""controller.fleet.leader without etcd (tests/store/test_ha.py runs the
election on a real etcd): the SQLite controller is always the leader, and
fleet detection ticks only on the leader, inside the store's fence."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.fleet.leader import SoleLeader, open_leadership
from controller.fleet.store import FleetStore
from controller.fleet.wiring import SyncServices
from controller.metrics import Exposition


class _Leadership:
    def __init__(self, leader: bool, token: int) -> None:
        self.name = "test"
        self.is_leader = leader
        self.token = token if leader else 0


class _Store:
    def __init__(self) -> None:
        self.fences: list[int] = []
        self.inside = False

    @contextlib.contextmanager
    def fenced(self, token: int) -> Iterator[None]:
        self.fences.append(token)
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


class _Fleet:
    def __init__(self, store: _Store) -> None:
        self.store = store
        self.ticks: list[bool] = []

    def tick(self) -> None:
        self.ticks.append(self.store.inside)


def test_sqlite_controller_is_always_the_leader(tmp_path: Path) -> None:
    with FleetStore.open(tmp_path) as store:
        lead = open_leadership(store, "edge-ctl")
        assert isinstance(lead, SoleLeader)
        lead.start()
        assert lead.is_leader and lead.token == 0 and lead.leader() == "edge-ctl"
        out = Exposition()
        lead.collect_metrics(out)
        assert "breakwater_controller_leader 1" in out.text()
        with store.fenced(0):  # nothing to fence on SQLite
            assert store.expire().version == 0
        lead.close()


def _services(leadership: Any, store: _Store, fleet: _Fleet) -> SyncServices:
    services = object.__new__(SyncServices)  # no hub or thread: only the tick is under test
    services.store = store  # type: ignore[assignment]
    services.leadership = leadership
    return services


def test_fleet_detection_ticks_on_the_leader_only_and_fenced() -> None:
    store = _Store()
    fleet = _Fleet(store)
    _services(_Leadership(False, 7), store, fleet)._tick(fleet)  # type: ignore[arg-type]
    assert fleet.ticks == [] and store.fences == []
    _services(_Leadership(True, 7), store, fleet)._tick(fleet)  # type: ignore[arg-type]
    assert fleet.ticks == [True] and store.fences == [7]
