"""`make setup` from a clean clone, as a new user runs it: no virtualenv active, a system
Python that PEP 668 marks EXTERNALLY-MANAGED. Setup must create .venv/ in the clone, install
there (never into the system Python) and leave a working `harness` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                         capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and (Path(out.stdout.strip()) / "EXTERNALLY-MANAGED").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.is_file() or shutil.which("git") is None, reason="needs /usr/bin/python3 and git")
def test_setup_from_a_clean_clone_without_a_venv(tmp_path):
    if not _externally_managed(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} is not marked EXTERNALLY-MANAGED here")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    # the working tree's uncommitted setup files, so the test checks what is being changed
    for rel in ("scripts/setup.sh", "Makefile", "pyproject.toml"):
        shutil.copy(ROOT / rel, clone / rel)
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["HARNESS_BASE_PYTHON"] = str(SYSTEM_PYTHON)
    before = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, env=env, timeout=120).stdout
    out = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "creating .venv" in out.stdout and (clone / ".venv" / "bin" / "python").is_file()
    again = subprocess.run(["make", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout  # idempotent
    helped = subprocess.run([str(clone / ".venv" / "bin" / "harness"), "--help"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "run" in helped.stdout and "validate" in helped.stdout
    after = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                           text=True, env=env, timeout=120).stdout
    assert after == before, "setup changed the system Python's packages"
    assert not list(Path("/usr").glob(".harness-setup-*")) and list((clone / ".venv").glob(".harness-setup-*"))
