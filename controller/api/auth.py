"""Who may call what: TLS credentials, the caller's principal, the role of
every RPC and the one server interceptor that enforces it.

**Transport.** :class:`TlsFiles` names a certificate, its key and the CA
that signed the peers (made by ``breakwater pki``, :mod:`controller.pki`).
:func:`server_credentials` serves mutual TLS: a client without a
certificate signed by that CA is refused during the handshake (grpc's
Python server can require and verify client certificates, or not ask for
them; it cannot ask and let a call without one through).
:func:`channel_credentials` dials with a client certificate and checks the
server's against the CA. Plaintext is allowed only on a loopback address,
or with an explicit ``insecure`` (:func:`check_plaintext`); a plaintext
server has no principals and serves every call (as before this module),
which is why it logs a warning at every start and its daemon exports
``breakwater_*_insecure 1``.

**Principals.** On a TLS server :func:`principal_of` reads the peer's
verified certificate (:func:`controller.pki.identity_of`): a node
certificate is the principal ``node:<id>`` with the role ``agent``; an
operator certificate ``user:<cn>`` with its role.

**Roles.** :data:`METHOD_ROLES` gives every method of every service a
server exposes its role; ``viewer`` < ``operator`` < ``admin`` (each may do
what the one before may), and ``agent`` is apart (its own Sync stream,
nothing else). Health is open to every principal (``any``); reflection
needs ``viewer``. A method missing from the table is refused
(``PERMISSION_DENIED``): deny by default. :class:`Authorizer` checks one
call; :class:`AuthInterceptor` (thread-pool servers) and
:class:`AioAuthInterceptor` (grpc.aio) run it before every method, outside
the error mapping: no identity is ``UNAUTHENTICATED``, the wrong role
``PERMISSION_DENIED``, a certificate whose serial is on the server's
revocation list (:class:`controller.pki.RevocationList`) ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from ..errors import InputError, PermissionDeniedError, SetupError, UnauthenticatedError
from ..pki import ROLES, RevocationList, identity_of, serial_text
from .handlers import HANDLER_KINDS, MAKE_HANDLER

__all__ = [
    "ANY",
    "METHOD_ROLES",
    "RANKS",
    "AioAuthInterceptor",
    "AuthInterceptor",
    "Authorizer",
    "Principal",
    "TlsFiles",
    "channel_credentials",
    "check_plaintext",
    "is_loopback",
    "principal_of",
    "server_credentials",
]

LOGGER = logging.getLogger("breakwater.auth")

ANY: Final = "any"
"""The role of a method every authenticated principal may call (health)."""
RANKS: Final[Mapping[str, int]] = {role: rank for rank, role in enumerate(ROLES, 1)}
"""viewer 1 < operator 2 < admin 3: a role may call what a lower one may."""

_V, _O, _A = "viewer", "operator", "admin"
METHOD_ROLES: Final[Mapping[str, str]] = {
    "/breakwater.v1.RuleService/ListRules": _V,
    "/breakwater.v1.RuleService/GetRule": _V,
    "/breakwater.v1.RuleService/CreateRule": _O,
    "/breakwater.v1.RuleService/BatchCreateRules": _O,
    "/breakwater.v1.RuleService/UpdateRule": _O,
    "/breakwater.v1.RuleService/DeleteRule": _O,
    "/breakwater.v1.NodeService/ListNodes": _V,
    "/breakwater.v1.NodeService/GetNode": _V,
    "/breakwater.v1.NodeService/DeleteNode": _A,
    "/breakwater.v1.EventService/ListEvents": _V,
    "/breakwater.v1.EventService/WatchEvents": _V,
    "/breakwater.v1.TelemetryService/GetStats": _V,
    "/breakwater.v1.TelemetryService/ListTopTalkers": _V,
    "/breakwater.v1.SyncService/Sync": "agent",
    "/grpc.health.v1.Health/Check": ANY,
    "/grpc.health.v1.Health/Watch": ANY,
    "/grpc.health.v1.Health/List": ANY,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _V,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _V,
}
"""The role every method needs (the full method path grpc routes on). A
test walks every method of every service in the descriptors and checks it
is here and enforced."""


# --- transport -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A certificate (``cert``), its private key (``key``) and the CA that
    signed the peers (``ca``), as PEM files."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """``(cert, key, ca)``'s bytes; SetupError naming the file that cannot be read."""
        out = []
        for what, path in (("cert", self.cert), ("key", self.key), ("ca", self.ca)):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise SetupError(f"tls {what} {path}: cannot read ({exc.strerror or exc})") from exc
            if b"-----BEGIN" not in data:
                raise SetupError(f"tls {what} {path}: not a PEM file")
            out.append(data)
        return out[0], out[1], out[2]


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS: the server's certificate, and client certificates required
    and verified against ``tls.ca``."""
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """A client's side of mutual TLS: its certificate, and the server's checked against ``tls.ca``."""
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` (or a ``unix:`` path) stays on this machine."""
    if address.startswith("unix:"):
        return True
    host = address.rpartition(":")[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(address: str, insecure: bool, what: str) -> bool:
    """Whether plaintext on ``address`` needs the loud warning: False on
    loopback; True with ``insecure``; else an InputError naming ``what``
    (the key or flag to set)."""
    if is_loopback(address):
        return False
    if not insecure:
        raise InputError(f"{what}: {address} is not a loopback address and no TLS is configured; "
                         "give a certificate (tls_cert, tls_key, tls_ca; see docs/security.md), or "
                         "set insecure = true (--insecure) to serve plaintext anyway")
    return True


# --- principals and roles ----------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``name`` (``node:edge-1``, ``user:alice``),
    ``role``, and for a node its ``node_id``."""

    name: str
    role: str
    node_id: str = ""
    serial: int = 0
    """The certificate's serial number (0: none)."""

    def may(self, needed: str) -> bool:
        """Whether this principal may call a method that needs ``needed``."""
        if needed == ANY:
            return True
        if needed == "agent" or self.role == "agent":
            return self.role == needed
        return RANKS.get(self.role, 0) >= RANKS.get(needed, 99)


def principal_of(context: Any) -> Principal | None:
    """The principal of a call's verified peer certificate; None on a
    plaintext connection; UnauthenticatedError for a certificate that
    names no Breakwater identity."""
    auth: Mapping[str, Any] = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or ()
    if not pems:
        return None
    try:
        ident = identity_of(bytes(pems[0]))
    except InputError as exc:
        raise UnauthenticatedError(str(exc)) from None
    return Principal(ident.principal, ident.role, ident.name if ident.kind == "node" else "", ident.serial)


class Authorizer:
    """Checks one call against :data:`METHOD_ROLES`. ``plaintext``: the
    server has no TLS (loopback or insecure), so calls have no principal and
    all are let through, as ``anonymous``. Counts refusals for metrics."""

    ANONYMOUS: Final = Principal("anonymous", "admin")

    def __init__(self, *, plaintext: bool, roles: Mapping[str, str] = METHOD_ROLES,
                 revoked: RevocationList | None = None) -> None:
        self.plaintext = plaintext
        self.roles = roles
        self.revoked = revoked
        self.unauthenticated = 0
        self.denied = 0
        self._lock = threading.Lock()

    def check(self, method: str, context: Any) -> Principal:
        """The call's principal; UnauthenticatedError or PermissionDeniedError."""
        try:
            principal = principal_of(context)
        except UnauthenticatedError:
            with self._lock:
                self.unauthenticated += 1
            raise
        if principal is None:
            if self.plaintext:
                return self.ANONYMOUS
            with self._lock:
                self.unauthenticated += 1
            raise UnauthenticatedError(f"{method}: no client certificate; this server needs one "
                                       "(breakwater pki issue operator NAME --role ROLE)")
        if self.revoked is not None and principal.serial in self.revoked:
            with self._lock:
                self.unauthenticated += 1
            raise UnauthenticatedError(f"{method}: the certificate of {principal.name} (serial "
                                       f"{serial_text(principal.serial)}) is revoked")
        needed = self.roles.get(method)
        if needed is None or not principal.may(needed):
            with self._lock:
                self.denied += 1
            why = "is not in the role table" if needed is None else f"needs the {needed} role"
            raise PermissionDeniedError(f"{method} {why}; {principal.name} has {principal.role}")
        return principal


def _code(exc: Exception) -> grpc.StatusCode:
    return (grpc.StatusCode.UNAUTHENTICATED if isinstance(exc, UnauthenticatedError)
            else grpc.StatusCode.PERMISSION_DENIED)




def _rewrap(handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[str, Callable[..., Any]], Any]
            ) -> grpc.RpcMethodHandler[Any, Any]:
    for kind in HANDLER_KINDS:
        fn = getattr(handler, kind)
        if fn is not None:
            return MAKE_HANDLER[kind](wrap(kind, fn), request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)
    return handler


class AuthInterceptor(grpc.ServerInterceptor):
    """:class:`Authorizer` before every method of a thread-pool server (the
    outermost interceptor)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method, check = handler_call_details.method, self.authorizer.check

        def wrap(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            if kind.endswith("_stream"):
                def stream(request: Any, context: grpc.ServicerContext) -> Any:
                    try:
                        check(method, context)
                    except (UnauthenticatedError, PermissionDeniedError) as exc:
                        context.abort(_code(exc), str(exc))
                    yield from fn(request, context)
                return stream

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    check(method, context)
                except (UnauthenticatedError, PermissionDeniedError) as exc:
                    context.abort(_code(exc), str(exc))
                return fn(request, context)
            return unary

        return _rewrap(handler, wrap)


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """:class:`Authorizer` before every method of a grpc.aio server (first
    in its interceptors, so it wraps the error mapping's coroutines)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method, check = handler_call_details.method, self.authorizer.check

        async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            try:
                check(method, context)
            except (UnauthenticatedError, PermissionDeniedError) as exc:
                await context.abort(_code(exc), str(exc))

        def wrap(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            if kind.endswith("_stream"):
                async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                    await refuse(context)
                    got = fn(request, context)
                    if hasattr(got, "__aiter__"):
                        async for item in got:
                            yield item
                    else:  # a plain behaviour (aio serves it on its migration pool): run it there
                        for item in got:
                            yield item
                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await refuse(context)
                got = fn(request, context)
                return await got if hasattr(got, "__await__") else got
            return unary

        return _rewrap(handler, wrap)
