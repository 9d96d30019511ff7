"""Breakwater's small certificate authority: the CA, the controller's server
certificate, node certificates and operator certificates, and the identity
a certificate carries.

Who a certificate names is in its URI subject alternative names, the way
SPIFFE names workloads, signed by the CA like the rest of the certificate:

- ``breakwater://node/<id>``: a node (an agent); its role is ``agent`` and
  its node id is ``<id>``. The controller takes the node id of a Sync
  stream from here, never from the request.
- ``breakwater://role/<role>``: an operator certificate with that role
  (``viewer``, ``operator`` or ``admin``); the principal is the subject's
  common name.
- ``breakwater://controller``: the controller's server certificate (with
  DNS and IP SANs for the names agents dial).

A URI SAN rather than a private X.509 extension: every TLS stack and
``openssl x509 -text`` shows it, no OID needs registering, and gRPC hands
the whole peer certificate to the server, where :func:`identity_of` reads
it. A certificate naming two roles, or a node and a role, is refused.

Keys are ECDSA P-256 (a TLS handshake with them costs a fraction of an RSA
one, which counts when 1000 agents reconnect at once). Every file written
is 0600 in a 0700 directory; the CA's key is written only into the CA's
directory and read from there when issuing: :func:`issue` writes the new
key and certificate plus a copy of the CA's certificate (``ca.crt``), never
the CA's key.

**Revocation.** A revocation list is a text file of certificate serials
(hex, one a line, ``#`` comments): :func:`revoke` appends one (``breakwater
pki revoke``, or the controller itself when ``breakwater nodes remove``
removes a node), :class:`RevocationList` is what a server checks every
call's peer against, re-reading the file when it changes (at most once a
second). A revoked certificate still completes the TLS handshake; every
call it makes is ``UNAUTHENTICATED`` (:class:`controller.api.auth.Authorizer`).

Errors are :class:`~controller.errors.InputError` (a bad name or role) and
:class:`~controller.errors.SetupError` (files).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import InputError, SetupError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "KINDS",
    "ROLES",
    "URI_CONTROLLER",
    "URI_NODE",
    "URI_ROLE",
    "CertIdentity",
    "IssuedFiles",
    "RevocationList",
    "identity_of",
    "init_ca",
    "issue",
    "parse_serial",
    "read_revoked",
    "revoke",
    "serial_text",
]

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
ROLES: Final = ("viewer", "operator", "admin")
"""Roles an operator certificate may carry (``agent`` comes only with a node certificate)."""
KINDS: Final = ("controller", "node", "operator")
"""What :func:`issue` makes."""
URI_NODE: Final = "breakwater://node/"
URI_ROLE: Final = "breakwater://role/"
URI_CONTROLLER: Final = "breakwater://controller"
DEFAULT_CA_DAYS: Final = 3650
DEFAULT_DAYS: Final = 397
"""A leaf certificate's lifetime by default (what public CAs allow at most)."""
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_CLOCK_SKEW: Final = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertIdentity:
    """Who a certificate names: ``kind`` (node, operator, controller),
    ``name`` (the node id or the operator's common name), ``role`` and the
    certificate's serial number."""

    kind: str
    name: str
    role: str
    serial: int

    @property
    def principal(self) -> str:
        """How the audit log names it: ``node:<id>``, ``user:<name>`` or ``controller:<name>``."""
        return f"{'user' if self.kind == 'operator' else self.kind}:{self.name}"


@dataclass(frozen=True)
class IssuedFiles:
    """The files :func:`issue` wrote."""

    key: Path
    cert: Path
    ca: Path


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(f"{what}: {name!r} is not a name (letters, digits, . _ @ -; at most 128)")
    return name


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` 0600 (created so, never world-readable in between)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise SetupError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def _directory(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise SetupError(f"{path}: cannot create the directory ({exc.strerror or exc})") from exc
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SetupError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, *, name: str = "breakwater-ca", days: int = DEFAULT_CA_DAYS,
            force: bool = False) -> Path:
    """Create a CA (``ca.key``, ``ca.crt``) in ``directory``; its certificate's
    path. Refuses to overwrite an existing CA unless ``force``."""
    _check_name(name, "name")
    if not 1 <= days <= 36500:
        raise InputError(f"days: {days} is out of range 1..36500")
    _directory(directory)
    if (directory / CA_KEY).exists() and not force:
        raise SetupError(f"{directory / CA_KEY}: a CA already exists here (--force replaces it, "
                         "and every certificate it issued stops being trusted)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Breakwater")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(directory / CA_KEY, _key_pem(key))
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not key_path.exists():
        raise SetupError(f"{key_path}: no CA here (breakwater pki init --dir {directory} makes one)")
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path))
        key = serialization.load_pem_private_key(_read(key_path), password=None)
    except ValueError as exc:
        raise SetupError(f"{directory}: the CA's files do not parse ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SetupError(f"{key_path}: not an ECDSA key")
    return cert, key


def _sans(kind: str, name: str, role: str | None, hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    if kind == "node":
        out.append(x509.UniformResourceIdentifier(URI_NODE + name))
    elif kind == "operator":
        out.append(x509.UniformResourceIdentifier(URI_ROLE + (role or "")))
    else:
        out.append(x509.UniformResourceIdentifier(URI_CONTROLLER))
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            out.append(x509.DNSName(_check_name(host, "host")))
    return out


def issue(ca_dir: Path, out_dir: Path, kind: str, name: str, *, role: str | None = None,
          hosts: Sequence[str] = (), days: int = DEFAULT_DAYS) -> IssuedFiles:
    """Issue a ``kind`` certificate (:data:`KINDS`) named ``name`` from the CA
    in ``ca_dir``, into ``out_dir`` as ``<name>.key``, ``<name>.crt`` and
    ``ca.crt``. A node's ``name`` is its node id; an operator needs a
    ``role`` (:data:`ROLES`); ``hosts`` are the DNS names and addresses
    (SANs) a controller or a node's local API answers on. A controller
    certificate always has ``localhost`` and ``127.0.0.1``."""
    if kind not in KINDS:
        raise InputError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    _check_name(name, "name")
    if kind == "operator":
        if role not in ROLES:
            raise InputError(f"role: an operator certificate needs --role {'|'.join(ROLES)}"
                             + (f", not {role!r}" if role else ""))
    elif role is not None:
        raise InputError(f"role: only an operator certificate carries a role (a {kind} one has its own)")
    if not 1 <= days <= 36500:
        raise InputError(f"days: {days} is out of range 1..36500")
    if out_dir.resolve() == ca_dir.resolve():
        raise InputError(f"out: {out_dir} is the CA's directory; issue into another one "
                         "(the CA's key stays alone)")
    if kind == "controller":
        hosts = [*dict.fromkeys([*hosts, "localhost", "127.0.0.1", "::1"])]
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = {"controller": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
              "node": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
              "operator": [ExtendedKeyUsageOID.CLIENT_AUTH]}[kind]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                                     x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(_sans(kind, name, role, hosts)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _directory(out_dir)
    files = IssuedFiles(out_dir / f"{name}.key", out_dir / f"{name}.crt", out_dir / CA_CERT)
    _write(files.key, _key_pem(key))
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


@lru_cache(maxsize=4096)
def identity_of(pem: bytes) -> CertIdentity:
    """The identity in a (CA-verified) certificate, from its URI SANs; an
    InputError when it names none, or more than one. Cached: a server reads
    the same peer certificate on every call of a connection."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InputError(f"peer certificate: does not parse ({exc})") from exc
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    ours = [u for u in uris if u.startswith("breakwater://")]
    if len(ours) != 1:
        raise InputError(f"peer certificate: names {len(ours)} Breakwater identities "
                         "(breakwater://node/ID, breakwater://role/ROLE); exactly one is needed")
    uri = ours[0]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if uri.startswith(URI_NODE):
        return CertIdentity("node", _check_name(uri[len(URI_NODE):], "peer certificate node id"),
                            "agent", cert.serial_number)
    if uri.startswith(URI_ROLE):
        role = uri[len(URI_ROLE):]
        if role not in ROLES:
            raise InputError(f"peer certificate: unknown role {role!r}")
        return CertIdentity("operator", _check_name(cn, "peer certificate common name"), role,
                            cert.serial_number)
    if uri == URI_CONTROLLER:
        return CertIdentity("controller", _check_name(cn, "peer certificate common name"), "controller",
                            cert.serial_number)
    raise InputError(f"peer certificate: unknown identity {uri!r}")


# --- revocation ----------------------------------------------------------------------------------

RELOAD_SECONDS: Final = 1.0
"""How often a :class:`RevocationList` looks whether its file changed."""


def serial_text(serial: int) -> str:
    """A serial as the list and ``openssl x509 -serial`` write it: upper-case hex."""
    return f"{serial:X}"


def parse_serial(text: str, what: str = "serial") -> int:
    """A certificate serial from hex (``1A2B``, ``0x1a2b``, ``1a:2b``) or a
    PEM certificate file's path; InputError naming ``what`` otherwise."""
    value = text.strip()
    path = Path(value)
    if "/" in value or value.endswith((".crt", ".pem")):
        try:
            return x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        except (OSError, ValueError) as exc:
            raise InputError(f"{what}: {value!r} is not a readable PEM certificate ({exc})") from None
    digits = value.lower().removeprefix("0x").replace(":", "")
    if not digits or len(digits) > 40 or not re.fullmatch(r"[0-9a-f]+", digits):
        raise InputError(f"{what}: {value[:64]!r} is not a certificate serial (hex, as openssl x509 "
                         "-serial prints it) or a certificate file")
    return int(digits, 16)


def read_revoked(path: Path) -> frozenset[int]:
    """The serials a revocation list holds (a missing file holds none)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return frozenset()
    except OSError as exc:
        raise SetupError(f"{path}: cannot read the revocation list ({exc.strerror or exc})") from exc
    out = set()
    for n, line in enumerate(text.splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if word:
            out.add(parse_serial(word, f"{path}:{n}"))
    return frozenset(out)


def revoke(path: Path, serial: int, note: str = "") -> bool:
    """Append ``serial`` to the revocation list at ``path`` (made 0600 if
    missing); False if it was there already."""
    if serial in read_revoked(path):
        return False
    clean = "".join(ch for ch in note if ch.isprintable())[:200]
    stamp = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
    line = f"{serial_text(serial)}  # {stamp} {clean}".rstrip()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")
    except OSError as exc:
        raise SetupError(f"{path}: cannot write the revocation list ({exc.strerror or exc})") from exc
    return True


class RevocationList:
    """The serials of a revocation list file, re-read when its modification
    time or size changes (looked at most every :data:`RELOAD_SECONDS`). A
    list that cannot be read keeps the serials last read (logged by the
    caller through :attr:`error`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.error = ""
        self._serials: frozenset[int] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload(force=True)

    def reload(self, *, force: bool = False) -> frozenset[int]:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked < RELOAD_SECONDS:
                return self._serials
            self._checked = now
            try:
                st = self.path.stat()
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            except OSError as exc:
                self.error = f"{self.path}: {exc.strerror or exc}"
                return self._serials
            if force or stamp != self._stamp:
                try:
                    self._serials = read_revoked(self.path)
                    self._stamp = stamp
                    self.error = ""
                except (InputError, SetupError) as exc:
                    self.error = str(exc)
            return self._serials

    def __contains__(self, serial: object) -> bool:
        return serial in self.reload()

    def add(self, serial: int, note: str = "") -> bool:
        """Revoke ``serial`` (append it to the file) and see it at once."""
        added = revoke(self.path, serial, note)
        self.reload(force=True)
        return added
