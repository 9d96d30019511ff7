"""Real etcd processes for tests: one member or a cluster of members on free
loopback ports, data in a temporary directory, every process stopped and
every file removed at teardown (also when a test fails)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT = 30.0
MAX_TXN_OPS = 20_000  # a change of N rules is N + 2 operations (docs/controlplane.md)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Member:
    """One etcd member: its name, ports, data dir and process (None when stopped)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([ETCD, *self.args], stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        """kill -9, and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False


@dataclass
class EtcdCluster:
    """A running etcd cluster on loopback."""

    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def wait_healthy(self, members: list[Member] | None = None, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while not m.healthy():
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited: {m.log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {m.name} not healthy in {timeout}s: "
                                       f"{m.log.read_text()[-2000:]}")
                time.sleep(0.1)


@contextlib.contextmanager
def etcd_cluster(size: int = 1) -> Iterator[EtcdCluster]:
    """``size`` etcd members on free loopback ports; all gone afterwards."""
    root = Path(tempfile.mkdtemp(prefix="bw-etcd-"))
    cluster = EtcdCluster()
    try:
        ports = _free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        token = root.name
        for i, name in enumerate(names):
            client, peer = ports[2 * i], ports[2 * i + 1]
            data = root / name
            args = ["--name", name, "--data-dir", str(data),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-token", token,
                    "--initial-cluster-state", "new",
                    "--max-txn-ops", str(MAX_TXN_OPS),
                    # a lost quorum is noticed fast: writes fail in seconds, not tens of them
                    "--heartbeat-interval", "50", "--election-timeout", "500"]
            cluster.members.append(Member(name, client, peer, data, root / f"{name}.log", args))
        for m in cluster.members:
            m.start()
        cluster.wait_healthy()
        yield cluster
    finally:
        for m in cluster.members:
            m.kill()
        shutil.rmtree(root, ignore_errors=True)
