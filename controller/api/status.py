"""The one place where Breakwater errors and gRPC statuses turn into each
other, both ways: a servicer's error into the status its call ends with
(:func:`status_of`), a failed call into the error it stands for
(:func:`from_rpc_error`, :func:`rpc_errors`).

Servers (:mod:`controller.api.server`, :mod:`controller.api.aio`) run every
method of their services inside this mapping: a servicer raises Breakwater
errors and never touches status codes. The mapping (:data:`STATUS_CODES`,
first match wins):

==========================  ====================  =============================
error                       status                details
==========================  ====================  =============================
FieldError                  INVALID_ARGUMENT      BadRequest, one FieldViolation
InputError                  INVALID_ARGUMENT
NotFoundError               NOT_FOUND             ResourceInfo (when named)
AlreadyExistsError          ALREADY_EXISTS        ResourceInfo (when named)
EtagMismatchError           ABORTED               ResourceInfo (when named)
FailedPreconditionError     FAILED_PRECONDITION
CapacityError, MapFullError RESOURCE_EXHAUSTED
UnauthenticatedError        UNAUTHENTICATED
PermissionDeniedError       PERMISSION_DENIED
RemoteError                 its own code
NotImplementedError         UNIMPLEMENTED
other BreakwaterError       INTERNAL              (logged with its traceback)
anything else               INTERNAL              (logged; the client gets no text)
==========================  ====================  =============================

Every text a status carries (message, field path, description, resource
name) is cut to :data:`MAX_STATUS_TEXT` characters: an error that quotes
what the caller sent (a 1 MiB etag, filter or name) must not grow a
trailer past grpc's metadata limit, which the client would get as
``RESOURCE_EXHAUSTED`` "Stream removed" instead of the error.

Details travel as ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer (grpcio-status). Clients get the same errors back from
:func:`from_rpc_error`, or by calling inside :func:`rpc_errors`:
``INVALID_ARGUMENT`` with a field violation is a :class:`FieldError` with
that field's path again, ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED`` are an
:class:`UnavailableError` (worth retrying), any other code without an error
of its own a :class:`RemoteError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import (
    AlreadyExistsError,
    BreakwaterError,
    CapacityError,
    EtagMismatchError,
    FailedPreconditionError,
    FieldError,
    InputError,
    MapFullError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "MAX_STATUS_TEXT",
    "RESOURCE_TYPES",
    "STATUS_CODES",
    "bounded",
    "code_of",
    "from_rpc_error",
    "is_cancelled",
    "report_failure",
    "rpc_errors",
    "status_of",
]

LOGGER = logging.getLogger("breakwater.rpc")

STATUS_CODES: Final[tuple[tuple[type[BaseException], grpc.StatusCode], ...]] = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (EtagMismatchError, grpc.StatusCode.ABORTED),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (MapFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)
"""Error class -> status code, first match wins (RemoteError keeps its own
code; everything else is INTERNAL)."""

RESOURCE_TYPES: Final = {
    "rules": "breakwater.v1.Rule",
    "nodes": "breakwater.v1.Node",
    "events": "breakwater.v1.Event",
}
"""``google.rpc.ResourceInfo.resource_type`` by the collection of a resource name."""

MAX_STATUS_TEXT: Final = 1024
"""Longest text a status carries (message, field description); see the module docstring."""

_UNAVAILABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


# --- server side: errors -> statuses ---------------------------------------------------


def is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's own RpcError for a cancelled call (a
    failed call a servicer made itself is a ``grpc.Call``)."""
    return isinstance(exc, grpc.RpcError) and not isinstance(exc, grpc.Call)


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, RemoteError):
        return grpc.StatusCode.__members__.get(exc.code, grpc.StatusCode.INTERNAL)
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code a servicer's exception becomes (for interceptors
    that count calls by code: they run inside the mapping)."""
    if is_cancelled(exc):
        return grpc.StatusCode.CANCELLED  # the server's own error for a cancelled stream
    return _code(exc)


def _packed(message: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def bounded(text: str, limit: int | None = None) -> str:
    """``text`` cut to ``limit`` (:data:`MAX_STATUS_TEXT`) characters, saying how much was cut."""
    most = MAX_STATUS_TEXT if limit is None else limit
    if len(text) <= most:
        return text
    return f"{text[:most]}... ({len(text) - most} more characters)"


def status_of(exc: BaseException, method: str = "") -> grpc.Status:
    """The status a servicer's exception becomes (``method`` names the call
    in the message of an internal error, which is all a client learns of it)."""
    code = _code(exc)
    details: list[any_pb2.Any] = []
    if isinstance(exc, BreakwaterError | NotImplementedError):
        message = str(exc) or type(exc).__name__  # written for operators
    else:  # a bug: its text may show internals
        message = f"internal error in {method or 'the server'}; see the server's log"
    message = bounded(message)
    if isinstance(exc, FieldError):
        violation = error_details_pb2.BadRequest.FieldViolation(field=bounded(exc.path, 256),
                                                                description=bounded(exc.what))
        details.append(_packed(error_details_pb2.BadRequest(field_violations=[violation])))
    resource = getattr(exc, "resource", "")
    if isinstance(exc, BreakwaterError) and isinstance(resource, str) and resource:
        kind = RESOURCE_TYPES.get(resource.split("/", 1)[0], "")
        details.append(_packed(error_details_pb2.ResourceInfo(
            resource_type=kind, resource_name=bounded(resource, 256), description=message)))
    # grpc.StatusCode numbers its codes as google.rpc.Code does (a test checks it).
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def report_failure(exc: Exception, method: str) -> grpc.Status:
    """Log a servicer's failure as its code deserves (an internal error with
    its traceback, an operator's error in one line, UNIMPLEMENTED not at all)
    and return the status its call ends with."""
    code = _code(exc)
    if code is grpc.StatusCode.INTERNAL and not isinstance(exc, RemoteError):
        LOGGER.error("%s failed", method, exc_info=exc)
    elif code is not grpc.StatusCode.UNIMPLEMENTED:
        LOGGER.info("%s: %s: %s", method, code.name, bounded(str(exc)))
    return status_of(exc, method)


# --- client side: statuses -> errors ---------------------------------------------------


def _details(exc: grpc.Call) -> tuple[list[Any], list[Any]]:
    """The BadRequest field violations and ResourceInfos of a failed call's status."""
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # details that contradict the status code: ignore them
        status = None
    violations: list[Any] = []
    resources: list[Any] = []
    for detail in [] if status is None else status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(bad.field_violations)
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            resources.append(info)
    return violations, resources


def from_rpc_error(exc: grpc.RpcError) -> BreakwaterError:
    """The Breakwater error a failed call stands for (see the module's table)."""
    if not isinstance(exc, grpc.Call):
        return RemoteError(f"gRPC call failed: {exc}", "UNKNOWN")
    code = exc.code()
    message = exc.details() or code.name
    violations, resources = _details(exc)
    resource = str(resources[0].resource_name) if resources else ""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        if violations:
            return FieldError(str(violations[0].field), str(violations[0].description))
        return InputError(message)
    if code is grpc.StatusCode.NOT_FOUND:
        return NotFoundError(message, resource)
    if code is grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExistsError(message, resource)
    if code is grpc.StatusCode.ABORTED:
        return EtagMismatchError(message, resource)
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPreconditionError(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityError(message)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return UnauthenticatedError(message)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(message)
    if code in _UNAVAILABLE:
        return UnavailableError(message, code.name)
    return RemoteError(message, code.name)


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Turn a ``grpc.RpcError`` raised inside into its Breakwater error."""
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
