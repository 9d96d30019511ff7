"""The store suite's fixtures: ``store`` (and ``reopen``, ``spec``) for each
backend, SQLite in a temporary directory and etcd on a real single-member
etcd started for the session (each test under its own key prefix).

etcd tests need the ``etcd`` binary (Debian's etcd-server, installed by
``make setup``), not root: without it they are skipped, or fail with
``BREAKWATER_REQUIRE_BPF=1`` (CI), like the other tiers that need the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.fleet.etcd import parse_endpoints
from controller.fleet.etcdstore import EtcdStore
from controller.fleet.store import FleetStore
from controller.fleet.storeapi import Store, open_store

from .etcdproc import EtcdCluster, etcd_cluster

BACKENDS = ("sqlite", "etcd")


def etcd_missing() -> str | None:
    return None if shutil.which("etcd") else "needs the etcd binary (Debian etcd-server; `make setup`)"


def _need_etcd() -> None:
    reason = etcd_missing()
    if reason is None:
        return
    if os.environ.get("BREAKWATER_REQUIRE_BPF") == "1":
        pytest.fail(f"BREAKWATER_REQUIRE_BPF=1 but this test {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One etcd member for the whole session."""
    _need_etcd()
    with etcd_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A three-member etcd cluster of its own (tests may kill members)."""
    _need_etcd()
    with etcd_cluster(3) as cluster:
        yield cluster


class Backend:
    """How to open (and reopen) one test's store, in this process or another."""

    def __init__(self, kind: str, tmp_path: Path, etcd: EtcdCluster | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.url = etcd.url if etcd is not None else "sqlite"
        self.prefix = f"/bw-test-{secrets.token_hex(4)}/"
        self.opened: list[Store] = []

    def open(self) -> Store:
        store: Store = FleetStore.open(self.tmp_path) if self.kind == "sqlite" else self.open_etcd()
        self.opened.append(store)
        return store

    def open_etcd(self) -> EtcdStore:
        store = EtcdStore.connect(parse_endpoints(self.url), prefix=self.prefix)
        self.opened.append(store)
        return store

    def open_code(self) -> str:
        """Python source that opens the same store as ``s`` (for a child process)."""
        return (f"from controller.fleet.storeapi import open_store\n"
                f"s = open_store({self.url!r}, Path({str(self.tmp_path)!r}), prefix={self.prefix!r})\n")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    etcd = request.getfixturevalue("etcd") if request.param == "etcd" else None
    b = Backend(request.param, tmp_path, etcd)
    yield b
    for s in b.opened:
        s.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def reopen(backend: Backend) -> Callable[[], Store]:
    return backend.open


__all__ = ["BACKENDS", "Backend", "etcd_missing", "open_store", "pytest_collection_modifyitems"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts etcd ``etcd`` (``-m "not etcd"`` leaves them out)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        on_etcd = callspec is not None and callspec.params.get("backend") == "etcd"
        if "etcd" in names or "etcd3" in names or on_etcd:
            item.add_marker(pytest.mark.etcd)
