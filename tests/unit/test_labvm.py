"""controller.lab.vm without a guest: the accelerator override, finding a
built box, and the driver the Vagrantfile reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.lab import vm


@pytest.fixture(autouse=True)
def _fresh_probe() -> None:
    vm.accelerator.cache_clear()


@pytest.mark.parametrize("forced", ["kvm", "tcg"])
def test_the_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, forced: str) -> None:
    monkeypatch.setenv(vm.ACCEL_ENV, forced)
    assert vm.accelerator(tmp_path / "vmlinuz") == forced


def test_a_bad_override_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(vm.ACCEL_ENV, "hvf")
    with pytest.raises(vm.VmError, match="BREAKWATER_VM_ACCEL='hvf': expected kvm or tcg"):
        vm.accelerator(tmp_path / "vmlinuz")


def test_find_box_takes_only_finished_builds(tmp_path: Path) -> None:
    assert vm.find_box(tmp_path) is None
    (tmp_path / "build.x1").mkdir()  # an interrupted build: no breakwater.box
    (tmp_path / "build.x1" / "box.img").write_bytes(b"")
    assert vm.find_box(tmp_path) is None
    (tmp_path / "abc").mkdir()
    (tmp_path / "abc" / "breakwater.box").write_bytes(b"")
    box = vm.find_box(tmp_path)
    assert box is not None and box.image == tmp_path / "abc" / "box.img"


def test_write_driver_maps_tcg_to_libvirts_qemu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "breakwater.box").write_bytes(b"")
    monkeypatch.setenv(vm.ACCEL_ENV, "tcg")
    assert vm.write_driver(tmp_path) == "qemu"
    assert (tmp_path / "driver").read_text() == "qemu\n"
    vm.accelerator.cache_clear()
    monkeypatch.setenv(vm.ACCEL_ENV, "kvm")
    assert vm.write_driver(tmp_path) == "kvm"
