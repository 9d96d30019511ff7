"""Breakwater's errors, and the one place library errors become them.

Every failure an operator can see is a :class:`BreakwaterError` whose message
is one line saying what went wrong and what to do next::

    BreakwaterError
    ├── SetupError                 the machine is not ready
    │   ├── NotRootError           needs root (CAP_BPF + CAP_NET_ADMIN)
    │   ├── BpfUnsupportedError    kernel refuses BPF / XDP
    │   ├── HeadersMissingError    bcc cannot find kernel headers
    │   └── BpfFsError             /sys/fs/bpf is not mounted
    ├── InterfaceError
    │   ├── InterfaceNotFoundError
    │   ├── NotAttachedError       no Breakwater program on the interface
    │   └── AttachConflictError    a foreign program or another XDP mode is attached
    ├── ProgramLoadError           compile or verifier failure
    ├── MapError
    │   ├── MapFullError           an update would not fit (nothing was changed)
    │   ├── PinnedMapMismatchError a pinned map's layout differs from this build
    │   └── MapOperationError      a map syscall failed (with errno)
    ├── InputError                 a bad address, prefix, rule id or option
    │   ├── FieldError             one field of it, with the field's path
    │   └── ConfigError            one key of a configuration file, with the file
    ├── StoreError                 a state database could not be read or written
    ├── NotFoundError              the named resource (rule, node) does not exist
    ├── AlreadyExistsError         a resource of that name exists already
    ├── EtagMismatchError          the resource changed since the caller read it
    ├── FailedPreconditionError    the request cannot be served in the current state
    ├── CapacityError              a limit would be exceeded (rules, batch size, streams)
    ├── UnauthenticatedError       the caller presented no identity Breakwater accepts
    ├── PermissionDeniedError      the caller's role (or node) may not do this
    └── RemoteError                a gRPC call failed in a way none of the above says
        └── UnavailableError       the peer cannot be reached or did not answer in time

bcc, libbpf (ctypes), pyroute2 and OS errors are converted by
:func:`from_os_error` and :func:`from_bcc_error`, called only where Breakwater
calls those libraries (``dataplane/libbpf.py``, ``dataplane/build.py``,
``dataplane/netlink.py``); sqlite errors by :func:`from_sqlite_error`, called
only by :mod:`controller.sqlite`. gRPC
statuses are converted both ways in :mod:`controller.api.status`: each error above
has one status code (``INVALID_ARGUMENT`` with the field of a
``FieldError``, ``NOT_FOUND``, ``ALREADY_EXISTS``, ``ABORTED``,
``FAILED_PRECONDITION``, ``RESOURCE_EXHAUSTED``, ``UNAUTHENTICATED``,
``PERMISSION_DENIED``; ``MapFullError`` is
``RESOURCE_EXHAUSTED`` too), and a client gets the same error back.
"""

from __future__ import annotations

import errno as errno_mod
import os

__all__ = [
    "AlreadyExistsError",
    "AttachConflictError",
    "BpfFsError",
    "BpfUnsupportedError",
    "BreakwaterError",
    "CapacityError",
    "ConfigError",
    "EtagMismatchError",
    "FailedPreconditionError",
    "FieldError",
    "HeadersMissingError",
    "InputError",
    "InterfaceError",
    "InterfaceNotFoundError",
    "MapError",
    "MapFullError",
    "MapOperationError",
    "NotAttachedError",
    "NotFoundError",
    "NotRootError",
    "PermissionDeniedError",
    "PinnedMapMismatchError",
    "ProgramLoadError",
    "RemoteError",
    "SetupError",
    "StoreError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_bcc_error",
    "from_os_error",
    "from_sqlite_error",
]


class BreakwaterError(Exception):
    """Base of every error Breakwater reports."""


class SetupError(BreakwaterError):
    """The machine is not ready to run Breakwater."""


class NotRootError(SetupError):
    """Loading XDP programs and touching BPF maps needs root."""


class BpfUnsupportedError(SetupError):
    """The kernel refused a BPF or XDP operation Breakwater needs."""


class HeadersMissingError(SetupError):
    """bcc cannot compile without kernel headers."""


class BpfFsError(SetupError):
    """The BPF filesystem is missing, so maps cannot be pinned."""


class InterfaceError(BreakwaterError):
    """Something about a network interface."""


class InterfaceNotFoundError(InterfaceError):
    """The named interface does not exist (in the given namespace)."""


class NotAttachedError(InterfaceError):
    """No Breakwater program is attached to the interface."""


class AttachConflictError(InterfaceError):
    """Another XDP program, or Breakwater in another mode, holds the interface."""


class ProgramLoadError(BreakwaterError):
    """The XDP program failed to compile or was rejected by the verifier."""


class MapError(BreakwaterError):
    """A BPF map operation failed."""


class MapFullError(MapError):
    """An update would overflow a map. Raised before or instead of a partial apply."""


class PinnedMapMismatchError(MapError):
    """A pinned map's type or sizes differ from what this build expects."""


class MapOperationError(MapError):
    """A map syscall failed; ``errno`` holds the kernel's error number."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class InputError(BreakwaterError, ValueError):
    """Bad input from an operator or caller: nothing was changed."""


class FieldError(InputError):
    """An :class:`InputError` about one field: ``path`` is where, ``what`` is
    what is wrong; the message is ``"<path>: <what>"``. Checks
    (:mod:`controller.validate`) raise it; the API turns ``path`` into the
    field violation of ``INVALID_ARGUMENT``."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}" if path else what)
        self.path = path
        self.what = what


class ConfigError(InputError):
    """A problem in a configuration file, naming the file and key path
    (:func:`controller.config.checked` turns a :class:`FieldError` into one)."""

    def __init__(self, source: str, path: str, what: str) -> None:
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {what}")
        self.source = source
        self.path = path
        self.what = what


class StoreError(BreakwaterError):
    """A state database (the agent's or the controller's) could not be read
    or written; the message names the file and the operation."""


class _ResourceError(BreakwaterError):
    """An error about one named resource; ``resource`` is its name
    (``rules/dns-amp``), empty when the error names none."""

    def __init__(self, message: str, resource: str = "") -> None:
        super().__init__(message)
        self.resource = resource


class NotFoundError(_ResourceError):
    """The named resource (a rule, a node) does not exist."""


class AlreadyExistsError(_ResourceError):
    """A resource of that name exists already: nothing was created."""


class EtagMismatchError(_ResourceError):
    """The resource changed since the caller read it (its etag differs):
    nothing was changed; read it again and retry."""


class FailedPreconditionError(BreakwaterError):
    """The request is valid but cannot be served in the current state (say,
    events after the asked-for sequence have been pruned)."""


class CapacityError(BreakwaterError):
    """A limit would be exceeded (rules, batch size, open streams): nothing
    was changed."""


class UnauthenticatedError(BreakwaterError):
    """The call carries no identity Breakwater accepts (no verified client
    certificate naming a node or a role)."""


class PermissionDeniedError(BreakwaterError):
    """The caller is known but its role (or its node id) does not allow this
    call; nothing was changed."""


class RemoteError(BreakwaterError):
    """A gRPC call failed with a status no other error stands for; ``code``
    is the status code's name (``"INTERNAL"``, ``"PERMISSION_DENIED"``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class UnavailableError(RemoteError):
    """The peer could not be reached or did not answer in time
    (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``): worth retrying."""


def from_os_error(err: int, what: str) -> BreakwaterError:
    """Convert a kernel errno from a BPF or netlink call on ``what`` into our error."""
    name = errno_mod.errorcode.get(err, str(err))
    text = os.strerror(err)
    if err == errno_mod.EPERM:
        if os.geteuid() != 0:
            return NotRootError(f"{what}: permission denied; run as root (sudo)")
        return BpfUnsupportedError(
            f"{what}: operation not permitted even as root; check the kernel lockdown "
            "mode and kernel.unprivileged_bpf_disabled"
        )
    if err == errno_mod.ENOSYS:
        return BpfUnsupportedError(f"{what}: this kernel has no BPF syscall (CONFIG_BPF_SYSCALL)")
    if err in (errno_mod.E2BIG, errno_mod.ENOSPC):
        return MapFullError(f"{what}: map is full ({name})")
    if err == errno_mod.ENODEV:
        return InterfaceNotFoundError(f"{what}: no such interface")
    return MapOperationError(f"{what}: {text} ({name})", err)


def from_bcc_error(exc: Exception, what: str) -> BreakwaterError:
    """Convert an exception raised inside bcc (compile, load, attach) into our error."""
    text = str(exc)
    if "kernel headers" in text or ("/build" in text and "chdir" in text):
        return HeadersMissingError(
            f"{what}: bcc cannot find kernel headers for {os.uname().release}; "
            "run `make setup` (installs Debian's linux-headers and links "
            f"/lib/modules/{os.uname().release}/build)"
        )
    if ("Permission denied" in text or "Operation not permitted" in text) and os.geteuid() != 0:
        return NotRootError(f"{what}: permission denied; run as root (sudo)")
    if "No such device" in text:
        return InterfaceNotFoundError(f"{what}: no such interface")
    if "Failed to load BPF program" in text or "Failed to compile" in text:
        return ProgramLoadError(f"{what}: {text.splitlines()[-1] if text else 'failed'}")
    return BreakwaterError(f"{what}: {text}")


def from_sqlite_error(exc: Exception, what: str) -> StoreError:
    """A sqlite3 error during ``what`` (which names the file) as a
    :class:`StoreError`."""
    return StoreError(f"{what}: {exc}")
