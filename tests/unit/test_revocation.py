"""Revocation by serial over real mutual TLS: ``breakwater pki revoke``
puts a certificate on the controller's revocation list and its calls become
UNAUTHENTICATED (the list re-read when it changes); ``breakwater nodes
remove`` (admin only) ends the node's Sync stream, revokes the certificate
it synced with and forgets it, so the node cannot come back with that
certificate, only with a new one. On SQLite and etcd alike for the store
part (``tests/store``)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from breakwater.v1 import sync_service_pb2
from controller import pki
from controller.api.auth import TlsFiles, channel_credentials
from controller.api.client import ApiClient
from controller.cli.main import main as cli
from controller.errors import InputError, NotFoundError, PermissionDeniedError, UnauthenticatedError
from controller.fleet.config import parse_config
from controller.fleet.daemon import Controller, create_controller

TIMEOUT = 5


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "tls", "controller", "ctl")
    for role in ("operator", "admin"):
        pki.issue(root / "ca", root / "tls", "operator", role, role=role)
    pki.issue(root / "ca", root / "tls", "operator", "eve", role="admin")
    pki.issue(root / "ca", root / "tls", "node", "edge-1")
    return root


def _tls(certs: Path, name: str, where: str = "tls") -> TlsFiles:
    return TlsFiles(certs / where / f"{name}.crt", certs / where / f"{name}.key", certs / where / "ca.crt")


@pytest.fixture
def ctl(certs: Path, tmp_path: Path) -> Iterator[Controller]:
    tls = _tls(certs, "ctl")
    state = tmp_path / "state"
    cfg = parse_config({"listen": "127.0.0.1:0", "state_dir": str(state), "metrics": "",
                        "tls_cert": str(tls.cert), "tls_key": str(tls.key), "tls_ca": str(tls.ca)})
    controller = create_controller(cfg)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop(0)


def _until(check: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        time.sleep(0.1)
    return False


def test_a_revoked_operator_is_unauthenticated(ctl: Controller, certs: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    eve = _tls(certs, "eve")
    with ApiClient(ctl.address, tls=eve, timeout=TIMEOUT) as c:
        c.list_rules()
    revoked = ctl.config.revocation_path
    assert revoked == ctl.config.state_dir / "revoked.txt"
    assert cli(["pki", "revoke", str(eve.cert), "--list", str(revoked), "--note", "laptop stolen"]) == 0
    assert "revoked serial" in capsys.readouterr().out
    assert cli(["pki", "revoke", str(eve.cert), "--list", str(revoked)]) == 0
    assert "revoked already" in capsys.readouterr().out

    def refused() -> bool:
        try:
            with ApiClient(ctl.address, tls=eve, timeout=TIMEOUT) as c:
                c.list_rules()
        except UnauthenticatedError as exc:
            assert "is revoked" in str(exc)
            return True
        return False
    assert _until(refused)
    with ApiClient(ctl.address, tls=_tls(certs, "admin"), timeout=TIMEOUT) as c:  # others still work
        c.list_rules()
    assert (revoked.stat().st_mode & 0o777) == 0o600


def test_serials() -> None:
    assert pki.parse_serial("0x1A:2b") == 0x1A2B == pki.parse_serial("1a2b")
    assert pki.serial_text(0x1A2B) == "1A2B"
    for bad in ("", "xyz", "1" * 41):
        with pytest.raises(InputError, match="SERIAL"):
            pki.parse_serial(bad, "SERIAL")


def _sync_stream(ctl: Controller, tls: TlsFiles) -> tuple[grpc.Channel, object, queue.Queue[object]]:
    """An open Sync stream as node edge-1; its responses (or its error) go to the queue."""
    channel = grpc.secure_channel(ctl.address, channel_credentials(tls))
    stub = channel.stream_stream("/breakwater.v1.SyncService/Sync",
                                 request_serializer=sync_service_pb2.SyncRequest.SerializeToString,
                                 response_deserializer=sync_service_pb2.SyncResponse.FromString)
    hold = threading.Event()

    def requests() -> Iterator[sync_service_pb2.SyncRequest]:
        yield sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(node_id="edge-1"))
        hold.wait(30)

    call = stub(requests(), timeout=30)
    got: queue.Queue[object] = queue.Queue()

    def read() -> None:
        try:
            for msg in call:
                got.put(msg.WhichOneof("message"))
        except grpc.RpcError as exc:
            got.put(exc.code())
        hold.set()

    threading.Thread(target=read, daemon=True).start()
    return channel, call, got


def test_a_removed_node_cannot_come_back_with_its_certificate(ctl: Controller, certs: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    channel, _, got = _sync_stream(ctl, _tls(certs, "edge-1"))
    try:
        assert got.get(timeout=10) == "registered"
        assert _until(lambda: ctl.store.node("edge-1").connected)
        with ApiClient(ctl.address, tls=_tls(certs, "operator"), timeout=TIMEOUT) as c, \
                pytest.raises(PermissionDeniedError, match="needs the admin role"):
            c.delete_node("edge-1")
        op = _tls(certs, "operator")
        flags = ["--server", ctl.address, "--cert", str(op.cert), "--key", str(op.key), "--ca", str(op.ca)]
        assert cli(["nodes", "remove", "edge-1", *flags]) != 0  # the CLI: an operator is refused
        assert "needs the admin role" in capsys.readouterr().err
        with ApiClient(ctl.address, tls=_tls(certs, "admin"), timeout=TIMEOUT) as c:
            c.delete_node("edge-1")
            with pytest.raises(NotFoundError):
                c.get_node("edge-1")
            with pytest.raises(NotFoundError):
                c.delete_node("edge-1")
        # the open stream ends
        codes = []
        while True:
            item = got.get(timeout=10)
            if isinstance(item, grpc.StatusCode):
                codes.append(item)
                break
        assert codes == [grpc.StatusCode.UNAUTHENTICATED]
    finally:
        channel.close()
    serial = pki.identity_of(_tls(certs, "edge-1").cert.read_bytes()).serial
    assert serial in pki.read_revoked(ctl.config.revocation_path)
    # the old certificate is refused; a new one for the same node id registers
    channel, _, got = _sync_stream(ctl, _tls(certs, "edge-1"))
    try:
        assert got.get(timeout=10) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
    pki.issue(certs / "ca", certs / "new", "node", "edge-1")
    channel, _, got = _sync_stream(ctl, _tls(certs, "edge-1", "new"))
    try:
        assert got.get(timeout=10) == "registered"
    finally:
        channel.close()
