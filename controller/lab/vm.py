"""Lab VMs: Breakwater's Debian box (``make vagrant-box``) booted by qemu
inside a network namespace of the lab's own, for the VM tests and bench/vm.py.

Every network of a :class:`Vm` lives in that namespace: the lab NIC is a tap
qemu creates there (its host side gets ``host_cidr``, from 198.18.0.0/15, and
nothing is routed out), and the management NIC is qemu's user-mode network
with ``restrict=on`` (the guest reaches nothing through it) whose only
opening is a port forward to the guest's sshd on the namespace's own
127.0.0.1. Commands run in the guest over that ssh as user ``vagrant`` with
Vagrant's well-known insecure key, as Vagrant itself would. The box image is
never written: the guest boots from a qcow2 overlay in a temporary directory.
A second, read-only disk carries the files the caller shares (an ext4 image
made by ``mkfs.ext4 -d``), mounted at ``/breakwater`` in the guest.

:meth:`Vm.close` (also on error, as a context manager) kills qemu (its tap
goes with it), removes the namespace and the temporary directory.

:func:`accelerator` says whether a guest really runs on KVM here (``/dev/kvm``
can exist and create VMs whose guests then die with "KVM internal error"):
it boots the box's kernel to its first panic under KVM, and falls back to
qemu's TCG otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from ..errors import SetupError
from .netns import Lab

__all__ = ["Accel", "Box", "Vm", "VmError", "accelerator", "find_box", "vagrant_key", "write_driver"]

LOGGER = logging.getLogger("breakwater.lab.vm")

Accel = Literal["kvm", "tcg"]

BOX_CACHE: Final = Path(os.environ.get("BREAKWATER_BOX_CACHE", "/var/cache/breakwater/box"))
ACCEL_ENV: Final = "BREAKWATER_VM_ACCEL"
KERNEL_CMDLINE: Final = "root=LABEL=breakwater-root rw console=ttyS0 net.ifnames=0 panic=-1"
SSH_PORT: Final = 2222  # on the namespace's own loopback: nothing else binds there
BOOT_TIMEOUT: Final = 600.0  # TCG on a busy 2-core machine: ~1-3 min to sshd
PROBE_TIMEOUT: Final = 60.0
VAGRANT_KEY_GLOB: Final = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant"
# virtio-net refuses native XDP while the host offloads LRO into the guest;
# qemu's guest_* offloads off let the driver attach without asking.
LAB_NIC_OPTS: Final = "guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off"


class VmError(SetupError):
    """A lab VM could not be built, booted or reached."""


@dataclass(frozen=True)
class Box:
    """A built box: its root disk and the kernel it boots directly."""

    path: Path

    @property
    def image(self) -> Path:
        return self.path / "box.img"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"


def find_box(cache: Path = BOX_CACHE) -> Box | None:
    """The newest complete box under ``cache`` (``make vagrant-box``), if any."""
    done = [p.parent for p in cache.glob("*/breakwater.box")]
    if not done:
        return None
    return Box(max(done, key=lambda p: p.stat().st_mtime))


def vagrant_key() -> Path:
    """Vagrant's insecure private key, as shipped by Debian's ``vagrant``."""
    found = sorted(glob.glob(VAGRANT_KEY_GLOB))
    if not found:
        raise VmError(f"no Vagrant insecure key at {VAGRANT_KEY_GLOB} (make setup installs vagrant)")
    return Path(found[-1])


@functools.cache
def accelerator(kernel: Path) -> Accel:
    """``kvm`` when a guest really runs on KVM here, else ``tcg``.

    ``$BREAKWATER_VM_ACCEL`` (kvm or tcg) overrides the probe."""
    forced = os.environ.get(ACCEL_ENV, "")
    if forced in ("kvm", "tcg"):
        return forced  # type: ignore[return-value]
    if forced:
        raise VmError(f"{ACCEL_ENV}={forced!r}: expected kvm or tcg")
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        LOGGER.info("no usable /dev/kvm (%s): TCG", exc.strerror)
        return "tcg"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
           "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
           "-append", "console=ttyS0 panic=-1 root=/dev/breakwater-probe"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
        text = out.stdout + out.stderr
    except subprocess.TimeoutExpired as exc:
        text = f"timed out after {PROBE_TIMEOUT:.0f} s: {exc.stdout!r}"
    if "Kernel panic" in text and "KVM internal error" not in text:
        return "kvm"
    tail = [line for line in text.splitlines() if line.strip()][-3:]
    LOGGER.warning("a guest does not boot on KVM here (%s): TCG", " / ".join(tail))
    return "tcg"


def write_driver(cache: Path = BOX_CACHE) -> str:
    """Record libvirt's driver for the Vagrantfile (``<cache>/driver``): ``kvm``
    when a guest really boots on KVM here, else ``qemu`` (TCG)."""
    box = find_box(cache)
    if box is None:
        raise VmError(f"no box under {cache} (make vagrant-box)")
    driver = "kvm" if accelerator(box.kernel) == "kvm" else "qemu"
    (cache / "driver").write_text(driver + "\n")
    return driver


def _share_image(files: Iterable[tuple[Path, str]], dest: Path) -> None:
    """An ext4 image holding ``files`` (source, path inside the image)."""
    tree = dest.with_suffix(".d")
    for src, rel in files:
        target = tree / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
    _run(["mkfs.ext4", "-q", "-F", "-L", "bw-share", "-d", str(tree), str(dest), "64M"])
    shutil.rmtree(tree)


def _run(cmd: Sequence[str], timeout: float = 120.0) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VmError(f"{cmd[0]}: {exc}") from exc
    if out.returncode != 0:
        raise VmError(f"{' '.join(cmd[:3])}... exited {out.returncode}: {out.stderr.strip()[-500:]}")
    return out.stdout


@dataclass
class Vm:
    """One guest from ``box``, booted in a namespace of its own (see the module doc).

    ``host_cidr``/``guest_cidr``: the lab link's two ends (the tap in the
    namespace, ``eth1`` in the guest). ``share``: (source, path) pairs copied
    onto the read-only disk mounted at ``/breakwater``."""

    box: Box
    host_cidr: str = "198.18.200.1/24"
    guest_cidr: str = "198.18.200.2/24"
    memory_mib: int = 768
    share: Sequence[tuple[Path, str]] = ()
    accel: Accel | None = None
    lab: Lab = field(default_factory=lambda: Lab(tag="vm"))
    ns: str = ""
    tap: str = field(default_factory=lambda: f"bwtap{secrets.token_hex(3)}")
    guest_mac: str = field(default_factory=lambda: "52:54:00:" + secrets.token_bytes(3).hex(":"))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bw-vm-")))
    proc: subprocess.Popen[bytes] | None = None
    boot_seconds: float = 0.0

    @property
    def console(self) -> Path:
        """The guest's serial console, for diagnosis."""
        return self.workdir / "console.log"

    @property
    def guest_ip(self) -> str:
        return self.guest_cidr.split("/")[0]

    @property
    def host_ip(self) -> str:
        return self.host_cidr.split("/")[0]

    def start(self) -> Vm:
        """Boot the guest and wait until it answers over ssh; set up its lab NIC."""
        for need in (self.box.image, self.box.kernel, self.box.initrd):
            if not need.is_file():
                raise VmError(f"box incomplete: {need} missing (make vagrant-box)")
        self.accel = self.accel or accelerator(self.box.kernel)
        self.ns = self.lab.namespace("vm")
        overlay = self.workdir / "root.qcow2"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(self.box.image),
              str(overlay)])
        share = self.workdir / "share.img"
        _share_image(self.share, share)
        key = self.workdir / "vagrant.key"
        shutil.copyfile(vagrant_key(), key)
        key.chmod(0o600)
        cpu = "host" if self.accel == "kvm" else "max"
        cmd = ["ip", "netns", "exec", self.ns, "qemu-system-x86_64",
               "-accel", self.accel, "-cpu", cpu, "-smp", "1", "-m", str(self.memory_mib),
               "-display", "none", "-serial", f"file:{self.console}", "-no-reboot",
               "-kernel", str(self.box.kernel), "-initrd", str(self.box.initrd),
               "-append", KERNEL_CMDLINE,
               "-drive", f"file={overlay},if=virtio,format=qcow2",
               "-drive", f"file={share},if=virtio,format=raw,readonly=on",
               "-netdev", f"user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22",
               "-device", "virtio-net-pci,netdev=mgmt",
               "-netdev", f"tap,id=lab,ifname={self.tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=lab,mac={self.guest_mac},{LAB_NIC_OPTS}"]
        started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "qemu.log").open("wb"),
                                     start_new_session=True)
        self._wait_tap()
        self.lab.configure(self.ns, self.tap, self.host_cidr)
        self._wait_ssh(started)
        self.boot_seconds = time.monotonic() - started
        self.ssh(f"sudo mkdir -p /breakwater && sudo mount -o ro LABEL=bw-share /breakwater && "
                 f"sudo ip addr add {self.guest_cidr} dev eth1 && sudo ip link set eth1 up")
        return self

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            err = (self.workdir / "qemu.log").read_text(errors="replace").strip()[-800:]
            raise VmError(f"qemu exited {self.proc.returncode}: {err or self._console_tail()}")

    def _console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_tap(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._alive()
            shown = subprocess.run(["ip", "-n", self.ns, "link", "show", self.tap],
                                   capture_output=True, check=False)
            if shown.returncode == 0:
                return
            time.sleep(0.1)
        raise VmError(f"qemu made no tap {self.tap} in {self.ns} within 30 s")

    def _wait_ssh(self, started: float) -> None:
        while time.monotonic() - started < BOOT_TIMEOUT:
            self._alive()
            probe = self._ssh_cmd("true", connect_timeout=5)
            if subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0:
                return
            time.sleep(2)
        raise VmError(f"no ssh from the guest within {BOOT_TIMEOUT:.0f} s; console:\n{self._console_tail()}")

    def _ssh_cmd(self, command: str, connect_timeout: int = 20) -> list[str]:
        return ["ip", "netns", "exec", self.ns, "ssh", "-q", "-p", str(SSH_PORT),
                "-i", str(self.workdir / "vagrant.key"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
                "vagrant@127.0.0.1", command]

    def ssh(self, command: str, timeout: float = 300.0, check: bool = True, stdin: str = "") -> str:
        """Run ``command`` in the guest (as vagrant; sudo needs no password)."""
        self._alive()
        try:
            out = subprocess.run(self._ssh_cmd(command), capture_output=True, text=True,
                                 timeout=timeout, check=False, input=stdin)
        except subprocess.TimeoutExpired as exc:
            raise VmError(f"guest command timed out after {timeout:.0f} s: {command}") from exc
        if check and out.returncode != 0:
            raise VmError(f"guest command exited {out.returncode}: {command}\n{out.stderr.strip()[-1500:]}")
        return out.stdout

    def spawn(self, command: str) -> subprocess.Popen[bytes]:
        """Start ``command`` in the guest in the background (ended by :meth:`close`)."""
        return subprocess.Popen(self._ssh_cmd(command), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def close(self) -> None:
        """Kill qemu, remove the namespace (and with it the tap) and the files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        self.lab.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Vm:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
