"""Multi-process training for real: `accelerate launch --multi_gpu --num_processes 2` on CPU
(torchrun + gloo; accelerate's `--cpu` flag would start a single process)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import ROOT


def _train(tmp_path, recipe, name, launcher, *sets):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_CACHE=str(tmp_path / name), OMP_NUM_THREADS="1")
    (tmp_path / name).mkdir()
    from harness.models import cache_dir

    (tmp_path / name / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
    cmd = [*launcher, "-m", "harness.cli", "train", str(recipe), *sets]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    work = glob.glob(str(tmp_path / name / "trained" / "*"))
    assert len(work) == 1
    log = [json.loads(x) for x in open(os.path.join(work[0], "train_log.jsonl"))]
    return os.path.join(work[0], "model", "model.safetensors"), log


@pytest.mark.parametrize("chunk_tokens", [0, 160])  # one forward per micro-batch; length-sorted chunks
def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_model, tmp_path, chunk_tokens):
    """2 processes × batch 3 (2 safety + 1 anchor rows each) must train exactly what one process
    does with grad_accum 2: each rank draws its own micro-batch (index step·world + rank), DDP
    averages the two gradients as accumulation averages the two micro-steps, and the LR schedule
    steps once per optimizer step. The tolerance is exact equality of the saved weights: with
    gloo on one machine the all-reduce of two fp32 gradients and the accumulation of two
    halves both compute (g0 + g1)/2, which measured bit-identical here. In chunks (every chunk
    but the last under no_sync) the sums group differently across ranks: equal to fp32 rounding."""
    from safetensors.torch import load_file

    recipe = tmp_path / "mp.yaml"
    recipe.write_text(yaml.safe_dump({
        "kind": "train", "name": "mp", "base": str(tiny_model),
        "training": {"steps": 3, "batch_size": 2, "anchor_batch_size": 1, "lr": 1e-3, "max_length": 256,
                     "checkpoint_every": 100, "scheduler": "linear", "chunk_tokens": chunk_tokens},
        "models": [{"name": "tiny-sft", "objective": "sft", "data": {"format": "harmful-train", "limit": 12},
                    "anchor": {"format": "benign-train", "limit": 6, "responses": "dataset"}}]}))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    two, log2 = _train(tmp_path, recipe, "two", launch)
    one, log1 = _train(tmp_path, recipe, "one", [sys.executable], "--set", "training.grad_accum=2")

    ranks = [r["examples_by_rank"] for r in log2]
    assert all(len(r) == 2 for r in ranks), "two processes took part"
    assert all(r[0] != r[1] for r in ranks), "the processes trained on different rows"
    assert [r["lr"] for r in log2] == [r["lr"] for r in log1]
    assert [r["lr"] for r in log2] == pytest.approx([2e-3 / 3, 1e-3 / 3, 0.0]), "linear decay over 3 steps, not 6"
    a, b = load_file(one), load_file(two)
    base = load_file(os.path.join(tiny_model, "model.safetensors"))
    assert any(not (a[k] == base[k]).all() for k in a), "training moved the weights"
    if chunk_tokens == 0:
        assert all((a[k] == b[k]).all() for k in a), "2 processes == 1 process with grad_accum 2"
    else:
        assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a), "2 processes == 1 process"
