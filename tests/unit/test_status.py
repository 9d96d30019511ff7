"""controller.api.status: the error <-> status table (:data:`TABLE`, which
the server tests raise over real channels), and the status details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from controller.api.status import status_of
from controller.errors import (
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

C = grpc.StatusCode

# error raised by a servicer -> (status code, the error the client gets back)
TABLE: dict[str, tuple[BaseException, grpc.StatusCode, BaseException]] = {
    "field": (FieldError("rule.match.dport", "70000 is out of range 0..65535"), C.INVALID_ARGUMENT,
              FieldError("rule.match.dport", "70000 is out of range 0..65535")),
    "input": (InputError("page_token: not from this server"), C.INVALID_ARGUMENT,
              InputError("page_token: not from this server")),
    "not found": (NotFoundError("rules/x: no such rule", "rules/x"), C.NOT_FOUND,
                  NotFoundError("rules/x: no such rule", "rules/x")),
    "exists": (AlreadyExistsError("rules/x exists", "rules/x"), C.ALREADY_EXISTS,
               AlreadyExistsError("rules/x exists", "rules/x")),
    "etag": (EtagMismatchError("rules/x changed since read", "rules/x"), C.ABORTED,
             EtagMismatchError("rules/x changed since read", "rules/x")),
    "precondition": (FailedPreconditionError("events after 5 were pruned"), C.FAILED_PRECONDITION,
                     FailedPreconditionError("events after 5 were pruned")),
    "capacity": (CapacityError("at most 10000 rules per batch"), C.RESOURCE_EXHAUSTED,
                 CapacityError("at most 10000 rules per batch")),
    "map full": (MapFullError("deny_v4 is full"), C.RESOURCE_EXHAUSTED, CapacityError("deny_v4 is full")),
    "remote": (RemoteError("no such thing", "DATA_LOSS"), C.DATA_LOSS,
               RemoteError("no such thing", "DATA_LOSS")),
    "unauthenticated": (UnauthenticatedError("no certificate"), C.UNAUTHENTICATED,
                        UnauthenticatedError("no certificate")),
    "permission": (PermissionDeniedError("needs the admin role"), C.PERMISSION_DENIED,
                   PermissionDeniedError("needs the admin role")),
    "unavailable": (UnavailableError("etcd is down", "UNAVAILABLE"), C.UNAVAILABLE,
                    UnavailableError("etcd is down", "UNAVAILABLE")),
    "unimplemented": (NotImplementedError("not yet"), C.UNIMPLEMENTED,
                      RemoteError("not yet", "UNIMPLEMENTED")),
    "breakwater": (BreakwaterError("store: disk I/O error"), C.INTERNAL,
                   RemoteError("store: disk I/O error", "INTERNAL")),
    "bug": (KeyError("secret internals"), C.INTERNAL,
            RemoteError("internal error in /breakwater.v1.RuleService/GetRule; see the server's log",
                        "INTERNAL")),
}


def _same(got: BaseException, want: BaseException) -> None:
    assert type(got) is type(want)
    assert str(got) == str(want)
    for attr in ("path", "what", "resource", "code"):
        assert getattr(got, attr, None) == getattr(want, attr, None), attr


def test_codes_number_as_google_rpc_code() -> None:
    """status_of puts grpc's number in google.rpc.Status.code."""
    for code in C:
        assert code.value[0] == code_pb2.Code.Value(code.name)


@pytest.mark.parametrize("case", TABLE, ids=str)
def test_status_of(case: str) -> None:
    exc, code, _ = TABLE[case]
    status = status_of(exc, "/breakwater.v1.RuleService/GetRule")
    assert status.code is code
    if case == "bug":
        assert "secret" not in status.details
    else:
        assert status.details == str(exc)


def test_field_error_carries_a_field_violation() -> None:
    status = status_of(FieldError("requests[2].rule.ttl", "not whole seconds"))
    trailer = dict(status.trailing_metadata)
    from google.rpc import status_pb2
    detail = status_pb2.Status.FromString(trailer["grpc-status-details-bin"]).details
    assert len(detail) == 1
    bad = error_details_pb2.BadRequest()
    assert detail[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("requests[2].rule.ttl", "not whole seconds")]


def test_named_resource_carries_resource_info() -> None:
    status = status_of(NotFoundError("nodes/edge-9: no such node", "nodes/edge-9"))
    from google.rpc import status_pb2
    detail = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"]).details
    info = error_details_pb2.ResourceInfo()
    assert detail[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("breakwater.v1.Node", "nodes/edge-9")
