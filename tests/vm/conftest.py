"""Fixtures for the VM tier: Breakwater's box booted by qemu in a namespace of
the test's own (``controller.lab.vm``), with the repo's data plane on a
read-only disk.

The tier needs root (as the bpf/netns tiers: the gate in tests/conftest.py)
and a built box (``make vagrant-box``, which ``make test`` runs first); a
machine without the box skips it, or fails with ``BREAKWATER_REQUIRE_BPF=1``
(CI). Guests run on KVM where one really boots, on TCG otherwise
(``vm.accelerator``).
``edge`` boots one guest for the whole module (TCG boots take minutes) and
its teardown checks that the namespace is gone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyroute2
import pytest

from controller.lab import vm

REPO = Path(__file__).resolve().parents[2]
# The guest runs Debian's python3 with Debian's bcc and numpy, but the
# project's own pyroute2 (site/, first on the guest's path): Debian's 0.7.2
# encodes IFLA_XDP_FLAGS with a length the kernel refuses ("netlink:
# 'python3': attribute type 3 has an invalid length", ERANGE on attach).
SHARE = ((REPO / "controller", "controller"), (REPO / "bpf", "bpf"),
         (REPO / "tests" / "vm" / "guest.py", "guest.py"),
         (Path(pyroute2.__file__).parent, "site/pyroute2"))


@pytest.fixture(scope="module")
def box() -> vm.Box:
    found = vm.find_box()
    if found is None:
        why = f"needs the lab box under {vm.BOX_CACHE}: `make vagrant-box` (make test builds it)"
        if os.environ.get("BREAKWATER_REQUIRE_BPF") == "1":
            pytest.fail(f"BREAKWATER_REQUIRE_BPF=1 but this test {why}", pytrace=False)
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def edge(box: vm.Box) -> Iterator[vm.Vm]:
    """The edge VM: booted, lab NIC eth1 up with 198.18.200.2/24, repo at /breakwater."""
    guest = vm.Vm(box, share=SHARE)
    with guest:
        print(f"edge VM up in {guest.boot_seconds:.1f} s ({guest.accel})")
        yield guest
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    assert guest.ns not in listed, f"namespace {guest.ns} left behind"
    assert not guest.workdir.exists()
