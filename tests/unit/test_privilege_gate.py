"""The gate in tests/conftest.py: privileged tests skip where they cannot run,
and fail instead with BREAKWATER_REQUIRE_BPF=1.

Runs a throwaway pytest session with a copy of that conftest on a machine
that pretends not to be root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

TEST_FILE = '''
import pytest

@pytest.mark.bpf
def test_bpf():
    pass

@pytest.mark.netns
def test_netns():
    pass

def test_plain():
    pass
'''


def run_session(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess[str]:
    conftest = (TESTS / "conftest.py").read_text() + "\n\nos.geteuid = lambda: 1000\n"
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    bpf: x\n    netns: x\n")
    (tmp_path / "test_gate.py").write_text(TEST_FILE)
    env = {k: v for k, v in os.environ.items() if k != "BREAKWATER_REQUIRE_BPF"}
    if require is not None:
        env["BREAKWATER_REQUIRE_BPF"] = require
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.parametrize("require", [None, "0", ""])
def test_skips_with_the_reason(tmp_path: Path, require: str | None) -> None:
    result = run_session(tmp_path, require)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 2 skipped" in result.stdout
    assert "needs root" in result.stdout


def test_fails_when_required(tmp_path: Path) -> None:
    result = run_session(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 2 errors" in result.stdout
    assert "BREAKWATER_REQUIRE_BPF=1 but this test needs root" in result.stdout
