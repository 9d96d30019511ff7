"""controller.errors: the one boundary where kernel and bcc errors become ours."""

from __future__ import annotations

import errno
import os

import pytest

from controller import errors
from controller.errors import (
    BpfUnsupportedError,
    BreakwaterError,
    HeadersMissingError,
    InputError,
    InterfaceNotFoundError,
    MapError,
    MapFullError,
    MapOperationError,
    NotRootError,
    ProgramLoadError,
    SetupError,
    from_bcc_error,
    from_os_error,
)


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


def test_eperm_as_user_is_not_root(as_user: None) -> None:
    err = from_os_error(errno.EPERM, "update map")
    assert type(err) is NotRootError
    assert str(err).startswith("update map: permission denied")


def test_eperm_as_root_is_unsupported(as_root: None) -> None:
    err = from_os_error(errno.EPERM, "update map")
    assert type(err) is BpfUnsupportedError
    assert "lockdown" in str(err)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOSYS, BpfUnsupportedError),
        (errno.E2BIG, MapFullError),
        (errno.ENOSPC, MapFullError),
        (errno.ENODEV, InterfaceNotFoundError),
    ],
    ids=lambda v: errno.errorcode[v] if isinstance(v, int) else v.__name__,
)
def test_errno_mapping(as_root: None, code: int, cls: type[BreakwaterError]) -> None:
    err = from_os_error(code, "thing")
    assert type(err) is cls
    assert str(err).startswith("thing: ")


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOENT, errno.ENOMEM, errno.EBADF, 4242])
def test_other_errno_is_a_map_operation_error(code: int) -> None:
    err = from_os_error(code, "map lookup")
    assert type(err) is MapOperationError
    assert err.errno == code
    assert str(err).startswith("map lookup: ")
    if code in errno.errorcode:
        assert f"({errno.errorcode[code]})" in str(err)


def test_full_map_names_the_errno() -> None:
    assert "(E2BIG)" in str(from_os_error(errno.E2BIG, "insert"))


@pytest.mark.parametrize(
    "text",
    [
        "Unable to find kernel headers. Try rebuilding kernel with CONFIG_IKHEADERS=m (module) "
        "or installing the kernel development package for your running kernel version.",
        "chdir(/lib/modules/6.1.0/build): No such file or directory",
    ],
)
def test_bcc_headers_missing(text: str) -> None:
    err = from_bcc_error(Exception(text), "build XDP program")
    assert type(err) is HeadersMissingError
    assert "make setup" in str(err)


def test_bcc_load_failure() -> None:
    err = from_bcc_error(Exception("Failed to load BPF program b'breakwater_xdp': Invalid argument"),
                         "build")
    assert type(err) is ProgramLoadError


def test_bcc_permission_as_user(as_user: None) -> None:
    assert type(from_bcc_error(Exception("Operation not permitted"), "load")) is NotRootError


def test_bcc_no_such_device() -> None:
    assert type(from_bcc_error(Exception("No such device"), "attach")) is InterfaceNotFoundError


def test_bcc_other_is_base_error() -> None:
    err = from_bcc_error(Exception("something odd"), "load")
    assert type(err) is BreakwaterError
    assert str(err) == "load: something odd"


def test_hierarchy() -> None:
    assert issubclass(NotRootError, SetupError)
    assert issubclass(HeadersMissingError, SetupError)
    assert issubclass(MapFullError, MapError)
    assert issubclass(MapOperationError, MapError)
    assert issubclass(InputError, ValueError) and issubclass(InputError, BreakwaterError)


def test_docstring_draws_every_error() -> None:
    """The module docstring's tree names every exported error class."""
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert name in doc, f"{name} missing from the hierarchy in controller/errors.py"
