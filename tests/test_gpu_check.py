"""scripts/gpu-check.sh refuses at once, naming why, where torch sees no CUDA device."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_fails_clearly_without_a_cuda_device(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", GPU_CHECK_OUT=str(tmp_path / "out"))
    out = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "no CUDA device visible to torch" in out.stderr and "make test" in out.stderr
    assert not (tmp_path / "out").exists()  # refused before it started anything
