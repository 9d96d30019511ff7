"""Trust: the CA (``breakwater pki``), mutual TLS on the controller's port,
the role of every method enforced over a real channel with real
certificates, the node id of a Sync stream taken from its certificate, and
the audit actor being the authenticated principal."""

from __future__ import annotations

import contextlib
import datetime
import os
import queue
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from breakwater.v1 import (
    event_service_pb2,
    node_service_pb2,
    rule_pb2,
    rule_service_pb2,
    sync_service_pb2,
    telemetry_service_pb2,
)
from controller import pki
from controller.agent.config import parse as parse_agent
from controller.agent.sync import ControllerLayer, SyncClient
from controller.api.auth import ANY, METHOD_ROLES, Principal, TlsFiles, channel_credentials
from controller.api.callers import printable
from controller.api.client import ApiClient
from controller.errors import InputError, PermissionDeniedError, SetupError, UnavailableError
from controller.fleet.config import ControllerConfig, parse_config
from controller.fleet.daemon import Controller, create_controller

SERVICES: list[Any] = [  # ServiceDescriptors (upb's and the stubs' types differ)
    *(f.services_by_name[name] for f, name in (
        (rule_service_pb2.DESCRIPTOR, "RuleService"), (node_service_pb2.DESCRIPTOR, "NodeService"),
        (event_service_pb2.DESCRIPTOR, "EventService"),
        (telemetry_service_pb2.DESCRIPTOR, "TelemetryService"),
        (sync_service_pb2.DESCRIPTOR, "SyncService"))),
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
CALLERS = ("viewer", "operator", "admin", "agent")
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


# --- the CA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca")
    pki.issue(root / "ca", root / "tls", "controller", "ctl", hosts=["ctl.example"])
    for role in pki.ROLES:
        pki.issue(root / "ca", root / "tls", "operator", role, role=role)
    pki.issue(root / "ca", root / "tls", "node", "edge-1")
    return root


def _tls(certs: Path, name: str) -> TlsFiles:
    return TlsFiles(certs / "tls" / f"{name}.crt", certs / "tls" / f"{name}.key", certs / "tls" / "ca.crt")


def test_pki_files_and_identities(certs: Path) -> None:
    for path in [*(certs / "ca").iterdir(), *(certs / "tls").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for d in (certs / "ca", certs / "tls"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert not (certs / "tls" / pki.CA_KEY).exists()  # the CA's key stays in its directory
    ids = {n: pki.identity_of(_tls(certs, n).cert.read_bytes())
           for n in ("viewer", "operator", "admin", "edge-1", "ctl")}
    assert (ids["edge-1"].kind, ids["edge-1"].name, ids["edge-1"].role) == ("node", "edge-1", "agent")
    assert ids["edge-1"].principal == "node:edge-1"
    assert (ids["admin"].principal, ids["admin"].role) == ("user:admin", "admin")
    assert ids["ctl"].role == "controller"
    ctl = x509.load_pem_x509_certificate(_tls(certs, "ctl").cert.read_bytes())
    sans = ctl.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"ctl.example", "localhost"} <= set(sans.get_values_for_type(x509.DNSName))


def test_pki_refusals(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs --role"):
        pki.issue(certs / "ca", tmp_path, "operator", "eve")
    with pytest.raises(InputError, match="only an operator certificate carries a role"):
        pki.issue(certs / "ca", tmp_path, "node", "n1", role="admin")
    with pytest.raises(InputError, match="name: 'bad/name'"):
        pki.issue(certs / "ca", tmp_path, "node", "bad/name")
    with pytest.raises(InputError, match="the CA's directory"):
        pki.issue(certs / "ca", certs / "ca", "node", "n1")
    with pytest.raises(SetupError, match="a CA already exists"):
        pki.init_ca(certs / "ca")
    with pytest.raises(SetupError, match="no CA here"):
        pki.issue(tmp_path / "nothing", tmp_path / "out", "node", "n1")
    assert list(tmp_path.iterdir()) == [] or not (tmp_path / "n1.key").exists()


def _foreign_cert(certs: Path, out: Path) -> TlsFiles:
    """A certificate the CA signed that names no Breakwater identity."""
    ca_key = serialization.load_pem_private_key((certs / "ca" / pki.CA_KEY).read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((certs / "ca" / pki.CA_CERT).read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    out.mkdir(exist_ok=True)
    (out / "x.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "x.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return TlsFiles(out / "x.crt", out / "x.key", certs / "tls" / "ca.crt")


# --- the controller over mutual TLS -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ctl(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    state = tmp_path_factory.mktemp("ctl-state")
    tls = _tls(certs, "ctl")
    cfg = parse_config({"listen": "127.0.0.1:0", "state_dir": str(state), "metrics": "",
                        "tls_cert": str(tls.cert), "tls_key": str(tls.key), "tls_ca": str(tls.ca)})
    controller = create_controller(cfg)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop(0)


def _channel(ctl: Controller, tls: TlsFiles) -> grpc.Channel:
    return grpc.secure_channel(ctl.address, channel_credentials(tls))


def _call(channel: grpc.Channel, service: Any, method_name: str) -> grpc.StatusCode:
    """Call a method with an empty request (an empty first message); the status it ends with."""
    method = service.methods_by_name[method_name]
    path = f"/{service.full_name}/{method.name}"
    codec: dict[str, Any] = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    kind = ("stream" if method.client_streaming else "unary") + "_" + \
        ("stream" if method.server_streaming else "unary")
    request: Any = iter([b""]) if method.client_streaming else b""
    try:
        result: Any = getattr(channel, kind)(path, **codec)(request, timeout=2)
        if method.server_streaming:
            next(iter(result), None)
            result.cancel()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code


def test_every_method_has_a_role() -> None:
    for service in SERVICES:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            assert path in METHOD_ROLES, f"{path} declares no role"


def test_every_role_is_enforced_over_mtls(ctl: Controller, certs: Path) -> None:
    names = {"viewer": "viewer", "operator": "operator", "admin": "admin", "agent": "edge-1"}
    channels = {who: _channel(ctl, _tls(certs, names[who])) for who in CALLERS}
    try:
        for service in SERVICES:
            for method in service.methods:
                needed = METHOD_ROLES[f"/{service.full_name}/{method.name}"]
                for who, channel in channels.items():
                    allowed = Principal("p", who).may(needed)
                    code = _call(channel, service, method.name)
                    where = f"{service.full_name}/{method.name} as {who} (needs {needed})"
                    if allowed:
                        assert code not in AUTH_CODES, where
                    else:
                        assert code is grpc.StatusCode.PERMISSION_DENIED, where
    finally:
        for channel in channels.values():
            channel.close()


def test_roles_rank() -> None:
    assert Principal("a", "admin").may("operator") and Principal("a", "operator").may("viewer")
    assert not Principal("v", "viewer").may("operator") and not Principal("o", "operator").may("admin")
    assert not Principal("a", "admin").may("agent") and not Principal("n", "agent").may("viewer")
    assert Principal("n", "agent").may(ANY) and Principal("n", "agent").may("agent")


def test_no_certificate_is_refused_at_the_handshake(ctl: Controller, certs: Path) -> None:
    creds = grpc.ssl_channel_credentials((certs / "tls" / "ca.crt").read_bytes())
    with grpc.secure_channel(ctl.address, creds) as channel:
        code = _call(channel, rule_service_pb2.DESCRIPTOR.services_by_name["RuleService"], "ListRules")
    assert code is grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(ctl.address) as channel:  # plaintext to a TLS port
        code = _call(channel, rule_service_pb2.DESCRIPTOR.services_by_name["RuleService"], "ListRules")
    assert code is grpc.StatusCode.UNAVAILABLE


def test_a_certificate_without_an_identity_is_unauthenticated(ctl: Controller, certs: Path,
                                                              tmp_path: Path) -> None:
    with _channel(ctl, _foreign_cert(certs, tmp_path)) as channel:
        for service in SERVICES:
            for method in service.methods:
                if METHOD_ROLES[f"/{service.full_name}/{method.name}"] != ANY:
                    assert _call(channel, service, method.name) is grpc.StatusCode.UNAUTHENTICATED


def test_a_server_signed_by_another_ca_is_refused(ctl: Controller, certs: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    other = pki.issue(tmp_path / "other", tmp_path / "o", "operator", "mallory", role="admin")
    with pytest.raises(UnavailableError), \
            ApiClient(ctl.address, tls=TlsFiles(other.cert, other.key, other.ca), timeout=3) as c:
        c.list_rules()  # no handshake


def _sync(ctl: Controller, tls: TlsFiles, node_id: str) -> tuple[grpc.StatusCode, str]:
    with _channel(ctl, tls) as channel:
        stub = channel.stream_stream("/breakwater.v1.SyncService/Sync",
                                     request_serializer=sync_service_pb2.SyncRequest.SerializeToString,
                                     response_deserializer=sync_service_pb2.SyncResponse.FromString)
        reg = sync_service_pb2.SyncRequest(register=sync_service_pb2.Register(node_id=node_id))
        call = stub(iter([reg]), timeout=3)
        try:
            first = next(iter(call))
            call.cancel()
            return grpc.StatusCode.OK, first.WhichOneof("message") or ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""


def test_sync_takes_the_node_id_from_the_certificate(ctl: Controller, certs: Path) -> None:
    code, details = _sync(ctl, _tls(certs, "edge-1"), "edge-2")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "register.node_id" in details
    assert "nodes/edge-2" not in [n.name for n in ctl.backend.list_nodes()]
    code, what = _sync(ctl, _tls(certs, "edge-1"), "edge-1")
    assert (code, what) == (grpc.StatusCode.OK, "registered")


def test_the_audit_actor_is_the_principal(ctl: Controller, certs: Path) -> None:
    with ApiClient(ctl.address, tls=_tls(certs, "operator"), actor="bob", timeout=5) as c:
        made = c.create_rule("by-operator", rule_pb2.Rule(
            action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP),
            match=rule_pb2.Match(src=["198.18.7.0/24"])))
    assert made.created_by == "user:operator (for bob)"  # the claim is kept beside the principal
    with ApiClient(ctl.address, tls=_tls(certs, "viewer"), timeout=5) as c:
        with pytest.raises(PermissionDeniedError, match="needs the operator role; user:viewer has"):
            c.delete_rule("by-operator")
        assert [r.name for r in c.list_rules()[0]] == ["rules/by-operator"]


def test_printable_removes_controls_and_bidi() -> None:
    assert printable("bob\u202e\x1b[31m\u200b!") == "bob[31m!"


def test_plaintext_beyond_loopback_needs_insecure(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(InputError, match=r"listen: 0\.0\.0\.0:9610 is not a loopback address"):
        parse_config({"listen": "0.0.0.0:9610"})
    assert parse_config({"listen": "0.0.0.0:9610", "insecure": True}).insecure
    with pytest.raises(InputError, match="tls_key: needed with tls_cert"):
        parse_config({"tls_cert": str(_tls(certs, "ctl").cert)})
    with pytest.raises(InputError, match="--server"):
        ApiClient("198.18.0.1:9610")
    cfg = replace(ControllerConfig(), listen="127.0.0.1:0", state_dir=tmp_path, metrics=None)
    with create_controller(cfg) as plain:
        assert "breakwater_controller_tls 0" in plain.metrics_text()
        assert "breakwater_controller_insecure 0" in plain.metrics_text()
    assert os.path.exists(tmp_path)


def test_an_agent_syncs_over_mtls(ctl: Controller, certs: Path, tmp_path: Path) -> None:
    with ApiClient(ctl.address, tls=_tls(certs, "operator"), timeout=5) as c:
        c.create_rule("for-edges", rule_pb2.Rule(action=rule_pb2.Action(kind=rule_pb2.ACTION_KIND_DROP),
                                                 match=rule_pb2.Match(src=["198.18.9.0/24"])))
    got: queue.Queue[ControllerLayer] = queue.Queue()
    client = SyncClient(ctl.address, identity=lambda: sync_service_pb2.Register(node_id="edge-1"),
                        apply=got.put, state_dir=tmp_path,
                        credentials=channel_credentials(_tls(certs, "edge-1")))
    client.start()
    try:
        deadline = time.monotonic() + 20
        layer = ControllerLayer()
        while "for-edges" not in layer.rules and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                layer = got.get(timeout=1)
        assert "for-edges" in layer.rules
    finally:
        client.stop(timeout=5)


def test_agent_tls_config(certs: Path) -> None:
    node = _tls(certs, "edge-1")
    tls = {"cert": str(node.cert), "key": str(node.key), "ca": str(node.ca)}
    cfg = parse_agent({"interfaces": ["eth0"], "controller": "ctl.example:9610", "node_id": "edge-1",
                       "tls": tls})
    assert cfg.tls == node and not cfg.insecure
    with pytest.raises(InputError, match=r"tls\.cert: names node:edge-1, not node:edge-2"):
        parse_agent({"interfaces": ["eth0"], "controller": "ctl.example:9610", "node_id": "edge-2",
                     "tls": tls})
    with pytest.raises(InputError, match=r"controller: ctl\.example:9610 is not a loopback address"):
        parse_agent({"interfaces": ["eth0"], "controller": "ctl.example:9610", "node_id": "edge-1"})
    assert parse_agent({"interfaces": ["eth0"], "controller": "ctl.example:9610",
                        "tls": {"insecure": True}}).insecure
    assert parse_agent({"interfaces": ["eth0"], "controller": "127.0.0.1:9610"}).tls is None
