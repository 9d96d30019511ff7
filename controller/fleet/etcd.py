"""etcd, the way the controller's store uses it: the one module that talks
to etcd, over etcd's v3 JSON gateway (``/v3/...``) through ``etcd3gw``'s
client (a ``requests`` session: TLS with a CA and a client certificate),
and the one place its errors become Breakwater's.

Why ``etcd3gw`` (measured here, ``docs/controlplane.md`` has the table): it
is synchronous, like the store and its gRPC thread pool; it does TLS client
certificates; it leaves grpcio and protobuf alone (``etcd3`` fails to import
on the pinned protobuf, ``aetcd`` opens insecure channels only). Its own
watcher drops etcd's cancellations (a compacted start revision would be a
silent gap), so :meth:`EtcdClient.watch` reads the gateway's watch stream
itself, on the same session, and raises :class:`CompactedError`.

Several endpoints (``etcd://a:2379,b:2379``): a call goes to the endpoint
that answered last; one that cannot be reached (connection refused, reset,
timed out) is skipped for the next. An etcd member that answers with an
error is the cluster's answer: it is not asked again elsewhere.

Errors (:func:`converted`)::

    etcd3gw / requests error               Breakwater error
    no endpoint reachable                  UnavailableError (UNAVAILABLE)
    HTTP 503, gRPC code 14 (no leader,     UnavailableError (UNAVAILABLE)
      request timed out: quorum lost)
    HTTP 504/408, code 4                   UnavailableError (DEADLINE_EXCEEDED)
    too many operations / too large        CapacityError (raise etcd's
                                             --max-txn-ops/--max-request-bytes)
    code 11, compacted revision            CompactedError (a StoreError)
    anything else                          StoreError
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from ..errors import CapacityError, FieldError, StoreError, UnavailableError

__all__ = [
    "DEFAULT_TIMEOUT",
    "CompactedError",
    "EtcdClient",
    "EtcdTLS",
    "KeyValue",
    "TxnResult",
    "WatchBatch",
    "WatchStream",
    "compare_create",
    "compare_mod",
    "converted",
    "delete_op",
    "from_etcd_error",
    "parse_endpoints",
    "prefix_end",
    "put_op",
]

LOGGER = logging.getLogger("breakwater.controller.etcd")

DEFAULT_TIMEOUT: Final = 15.0
"""Seconds one call may take. etcd itself gives up on a write it cannot
commit after about 5 s plus two election timeouts (``request timed out``)."""
CONNECT_TIMEOUT: Final = 3.0
"""Seconds to open a connection to one endpoint before trying the next."""
DEFAULT_PORT: Final = 2379

_UNAVAILABLE_CODES: Final = {14}
_DEADLINE_CODES: Final = {4}
_COMPACTED_CODE: Final = 11


class CompactedError(StoreError):
    """A read or watch asked for a revision etcd has compacted away;
    ``compact_revision`` is the oldest one still there. Re-list."""

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to etcd: the CA that signed the members' certificates and this
    controller's client certificate and key (PEM files)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it (keys and values are bytes)."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class TxnResult:
    """A transaction's outcome: whether its compares held, the revision
    after it, and each operation's response (raw gateway JSON)."""

    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]


@dataclass(frozen=True)
class WatchBatch:
    """What one watch response carried: the revision it reflects and its
    events as ``(kind, kv, prev_kv)`` (``kind`` is ``"PUT"`` or ``"DELETE"``;
    a DELETE's ``kv`` has only the key and the revision)."""

    revision: int
    events: tuple[tuple[str, KeyValue, KeyValue | None], ...]


def parse_endpoints(text: str, field: str = "store") -> tuple[str, ...]:
    """``etcd://host:2379,host:2379`` (or ``etcds://`` for TLS) as a tuple of
    ``host:port``; a bad one is :class:`FieldError` naming ``field``."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("etcd", "etcds") or not rest.strip("/"):
        raise FieldError(field, f"{text!r} is not etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in rest.strip("/").split(","):
        parsed = urlsplit(f"//{part.strip()}")
        try:
            port = parsed.port or DEFAULT_PORT
        except ValueError:
            raise FieldError(field, f"{part!r}: the port is not a number in 1..65535") from None
        if not parsed.hostname or parsed.path or parsed.username:
            raise FieldError(field, f"{part!r} is not HOST:PORT (e.g. 10.0.0.1:2379, [fd00::1]:2379)")
        host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
        out.append(f"{host}:{port}")
    return tuple(out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def put_op(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    """A transaction operation putting ``value`` at ``key`` (on ``lease``)."""
    put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def delete_op(key: bytes, end: bytes | None = None) -> dict[str, Any]:
    """A transaction operation deleting ``key`` (or ``[key, end)``)."""
    req = {"key": _b64(key)}
    if end is not None:
        req["range_end"] = _b64(end)
    return {"request_delete_range": req}


def compare_mod(key: bytes, mod_revision: int) -> dict[str, Any]:
    """A compare that holds while ``key`` was last changed at ``mod_revision``
    (0: the key does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def compare_create(key: bytes, create_revision: int) -> dict[str, Any]:
    """A compare that holds while ``key`` is the one created at
    ``create_revision`` (0: the key does not exist): an election's fence."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(create_revision)}


def _kv(doc: Mapping[str, Any]) -> KeyValue:
    return KeyValue(_unb64(doc.get("key")), _unb64(doc.get("value")), int(doc.get("create_revision", 0)),
                    int(doc.get("mod_revision", 0)), int(doc.get("lease", 0)))


def _error_doc(exc: etcd_exc.Etcd3Exception) -> tuple[int | None, str]:
    """The gRPC code and message of an error the gateway answered with."""
    text = exc.detail_text or ""
    try:
        doc = json.loads(text)
    except ValueError:
        return None, text.strip() or type(exc).__name__
    if not isinstance(doc, dict):
        return None, text.strip()
    code = doc.get("code")
    return (int(code) if isinstance(code, int) else None), str(doc.get("message") or doc.get("error") or text)


def _unreachable(exc: BaseException) -> bool:
    """True when no member answered (the endpoint is down, not the cluster)."""
    cause = exc.__context__ if isinstance(exc, etcd_exc.Etcd3Exception) else exc
    return isinstance(cause, requests.exceptions.ConnectionError | requests.exceptions.Timeout)


def from_etcd_error(exc: BaseException, what: str) -> StoreError | UnavailableError | CapacityError:
    """An etcd3gw or requests error during ``what`` as Breakwater's (see the table above)."""
    if isinstance(exc, requests.exceptions.Timeout | etcd_exc.ConnectionTimeoutError):
        return UnavailableError(f"{what}: etcd did not answer in time ({exc})", "DEADLINE_EXCEEDED")
    if isinstance(exc, requests.exceptions.ConnectionError) or (
            isinstance(exc, etcd_exc.Etcd3Exception) and _unreachable(exc)):
        detail = exc.detail_text if isinstance(exc, etcd_exc.Etcd3Exception) else exc
        return UnavailableError(f"{what}: cannot reach etcd ({detail})", "UNAVAILABLE")
    if isinstance(exc, etcd_exc.Etcd3Exception):
        code, message = _error_doc(exc)
        if code in _UNAVAILABLE_CODES or isinstance(exc, etcd_exc.ConnectionFailedError):
            return UnavailableError(f"{what}: etcd is unavailable ({message}); is a quorum of members up? "
                                    "(a write that timed out may still commit: read before retrying)",
                                    "UNAVAILABLE")
        if code in _DEADLINE_CODES:
            return UnavailableError(f"{what}: etcd timed out ({message})", "DEADLINE_EXCEEDED")
        if "too many operations" in message:
            return CapacityError(f"{what}: {message}; raise etcd's --max-txn-ops (docs/controlplane.md)")
        if "too large" in message:
            return CapacityError(f"{what}: {message}; raise etcd's --max-request-bytes "
                                 "(docs/controlplane.md)")
        if code == _COMPACTED_CODE:
            return CompactedError(f"{what}: {message}", 0)
        return StoreError(f"{what}: etcd refused: {message}")
    return StoreError(f"{what}: {exc}")


@contextlib.contextmanager
def converted(what: str) -> Iterator[None]:
    """etcd3gw and requests errors raised inside as Breakwater's, about ``what``."""
    try:
        yield
    except (etcd_exc.Etcd3Exception, requests.exceptions.RequestException) as exc:
        raise from_etcd_error(exc, what) from exc


class WatchStream:
    """One open watch (:meth:`EtcdClient.watch`): iterate for
    :class:`WatchBatch` es; :meth:`close` from any thread ends the iteration."""

    def __init__(self, response: requests.Response, what: str) -> None:
        self._response = response
        self._what = what
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for line in self._response.iter_lines(chunk_size=1 << 16):
                if not line.strip():
                    continue
                doc = json.loads(line)
                if "error" in doc:
                    err = doc["error"]
                    raise StoreError(f"{self._what}: etcd ended the watch: {err.get('message', err)}")
                result = doc.get("result", {})
                if result.get("canceled"):
                    compact = int(result.get("compact_revision", 0))
                    if compact:
                        raise CompactedError(f"{self._what}: revision compacted (oldest kept: {compact})",
                                             compact)
                    raise StoreError(f"{self._what}: etcd canceled the watch: "
                                     f"{result.get('cancel_reason', 'no reason given')}")
                revision = int(result.get("header", {}).get("revision", 0))
                events = tuple((ev.get("type", "PUT"), _kv(ev.get("kv", {})),
                                _kv(ev["prev_kv"]) if "prev_kv" in ev else None)
                               for ev in result.get("events", ()))
                yield WatchBatch(revision, events)
        except (requests.exceptions.RequestException, AttributeError, OSError) as exc:
            if self._closed.is_set():
                return
            raise from_etcd_error(exc if isinstance(exc, requests.exceptions.RequestException)
                                  else requests.exceptions.ConnectionError(str(exc)), self._what) from exc
        if not self._closed.is_set():
            raise UnavailableError(f"{self._what}: etcd closed the watch stream", "UNAVAILABLE")

    def close(self) -> None:
        """End the stream (the iterating thread returns)."""
        self._closed.set()
        with contextlib.suppress(Exception):
            sock = self._response.raw._connection.sock  # urllib3 2: the open socket
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._response.close()


class EtcdClient:
    """A synchronous etcd v3 client over ``endpoints`` (``host:port``),
    thread-safe. Every method raises Breakwater's errors only."""

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTLS | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise FieldError("store", "no etcd endpoint given")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._clients = []
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            self._clients.append(etcd3gw.Etcd3Client(
                host=host.strip("[]"), port=int(port), protocol="https" if tls else "http",
                ca_cert=str(tls.ca) if tls else None,
                cert_key=str(tls.key) if tls and tls.key else None,
                cert_cert=str(tls.cert) if tls and tls.cert else None,
                timeout=timeout, api_path="/v3/"))
            # requests takes (connect, read): a member that is down is skipped quickly
            self._clients[-1].timeout = (CONNECT_TIMEOUT, timeout)  # type: ignore[assignment]
        self._current = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.session.close()

    def _call(self, path: str, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the current endpoint, moving on
        to the next one while endpoints cannot be reached."""
        with self._lock:
            start = self._current
        last: BaseException | None = None
        for i in range(len(self._clients)):
            index = (start + i) % len(self._clients)
            client = self._clients[index]
            try:
                out = client.post(client.get_url(path), json=body)
            except etcd_exc.Etcd3Exception as exc:
                if _unreachable(exc) and not isinstance(exc, etcd_exc.ConnectionTimeoutError):
                    last = exc
                    LOGGER.info("etcd %s unreachable (%s); trying the next endpoint", self.endpoints[index],
                                exc.detail_text)
                    continue
                raise from_etcd_error(exc, what) from exc
            with self._lock:
                self._current = index
            return out if isinstance(out, dict) else {}
        raise UnavailableError(f"{what}: cannot reach any etcd endpoint ({', '.join(self.endpoints)}): "
                               f"{getattr(last, 'detail_text', last)}", "UNAVAILABLE")

    # -- kv --

    def range(self, key: bytes, end: bytes | None = None, *, limit: int = 0, descend: bool = False,
              revision: int = 0, what: str = "read") -> tuple[int, list[KeyValue], bool]:
        """The keys in ``[key, end)`` (just ``key`` without ``end``): (the
        store's revision, the keys by key order, whether more were left out)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if limit:
            body["limit"] = str(limit)
        if descend:
            body.update(sort_order="DESCEND", sort_target="KEY")
        if revision:
            body["revision"] = str(revision)
        out = self._call("kv/range", body, what)
        kvs = [_kv(d) for d in out.get("kvs", ())]
        return int(out.get("header", {}).get("revision", 0)), kvs, bool(out.get("more", False))

    def range_all(self, prefix: bytes, *, revision: int = 0, page: int = 1000,
                  what: str = "read") -> tuple[int, list[KeyValue]]:
        """Every key under ``prefix``, in pages of ``page``, all read at one
        revision (the first page's, unless ``revision`` is given)."""
        end = prefix_end(prefix)
        out: list[KeyValue] = []
        start = prefix
        while True:
            rev, kvs, more = self.range(start, end, limit=page, revision=revision, what=what)
            revision = revision or rev
            out.extend(kvs)
            if not more or not kvs:
                return revision, out
            start = kvs[-1].key + b"\0"

    def txn(self, compare: Sequence[Mapping[str, Any]], success: Sequence[Mapping[str, Any]],
            failure: Sequence[Mapping[str, Any]] = (), *, what: str = "transaction") -> TxnResult:
        """One transaction: ``success`` if every compare holds, else ``failure``."""
        out = self._call("kv/txn", {"compare": list(compare), "success": list(success),
                                    "failure": list(failure)}, what)
        return TxnResult(bool(out.get("succeeded", False)), int(out.get("header", {}).get("revision", 0)),
                         list(out.get("responses", ())))

    def put(self, key: bytes, value: bytes, *, lease: int = 0, what: str = "write") -> int:
        """Put one key; returns the revision it made."""
        return self.txn((), (put_op(key, value, lease),), what=what).revision

    def delete(self, key: bytes, end: bytes | None = None, *, what: str = "delete") -> tuple[int, int]:
        """Delete ``key`` (or ``[key, end)``): (revision, how many were deleted)."""
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        out = self._call("kv/deleterange", body, what)
        return int(out.get("header", {}).get("revision", 0)), int(out.get("deleted", 0))

    def compact(self, revision: int, *, what: str = "compact") -> None:
        """Compact the history up to ``revision`` (older revisions can no longer be read or watched)."""
        self._call("kv/compaction", {"revision": str(revision), "physical": True}, what)

    # -- leases --

    def grant(self, ttl: int, *, what: str = "grant lease") -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        out = self._call("lease/grant", {"TTL": ttl}, what)
        return int(out["ID"])

    def keepalive(self, lease: int, *, what: str = "keep lease alive") -> int:
        """Refresh ``lease``; returns its TTL, 0 when it has expired already."""
        out = self._call("lease/keepalive", {"ID": str(lease)}, what)
        return max(0, int(out.get("result", {}).get("TTL", 0)))

    def revoke(self, lease: int, *, what: str = "revoke lease") -> None:
        """End ``lease`` now: every key on it is deleted."""
        self._call("kv/lease/revoke", {"ID": str(lease)}, what)

    # -- watch --

    def watch(self, key: bytes, end: bytes | None, start_revision: int, *,
              what: str = "watch") -> WatchStream:
        """Watch ``[key, end)`` from ``start_revision`` (with the previous
        values of changed keys). Iterating raises :class:`CompactedError` if
        ``start_revision`` is compacted: re-list, then watch again."""
        req: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision), "prev_kv": True}
        if end is not None:
            req["range_end"] = _b64(end)
        with self._lock:
            start = self._current
        last: BaseException | None = None
        for i in range(len(self._clients)):
            client = self._clients[(start + i) % len(self._clients)]
            try:
                response = client.session.post(client.get_url("watch"), json={"create_request": req},
                                                stream=True, timeout=(CONNECT_TIMEOUT, None))
            except requests.exceptions.ConnectionError as exc:
                last = exc
                continue
            except requests.exceptions.RequestException as exc:
                raise from_etcd_error(exc, what) from exc
            if response.status_code != 200:
                text = response.text
                response.close()
                raise from_etcd_error(etcd_exc.Etcd3Exception(text, response.reason), what)
            return WatchStream(response, what)
        raise UnavailableError(f"{what}: cannot reach any etcd endpoint ({', '.join(self.endpoints)}): "
                               f"{last}", "UNAVAILABLE")
