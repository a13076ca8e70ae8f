"""Running recipes end to end on real engines: records, caching, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.recipes import recipe_from_dict
from harness.runner import run_recipe
from harness.store import read_samples
from tests.conftest import ROOT, TEST_VLLM_EXTRA


def tiny_recipe(model_dir: Path, backend: str = "vllm", limit: int = 3, depths=(0, 3, 7), **engine) -> dict:
    return {
        "name": "tiny",
        "models": [{"name": "tiny", "spec": str(model_dir)}],
        "datasets": [{"format": "demo", "limit": limit}],
        "attacks": [{"type": "prefill", "depths": list(depths), "sampling": {"max_tokens": 8}}],
        "judges": [{"type": "keyword"}],
        "engine": {"backend": backend, "dtype": "float32", "max_model_len": 1024, "enforce_eager": True,
                   "kv_cache_gib": 0.5, "extra": dict(TEST_VLLM_EXTRA) if backend == "vllm" else {}, **engine},
    }


def test_run_writes_records_and_second_run_regenerates_nothing(tmp_path, tiny_model, pool):
    recipe = recipe_from_dict(tiny_recipe(tiny_model))
    first = run_recipe(recipe, out_dir=tmp_path, engines=pool, progress=False)
    assert first.generated == 9 and first.reused == 0
    run_dir = tmp_path / "tiny"
    records = read_samples(run_dir)
    assert len(records) == 9 and len({r["sample_id"] for r in records}) == 9
    for r in records:
        assert r["prefill_tokens"] == r["setting"]["depth"]
        assert set(r["verdicts"]) == {"keyword"}
        assert r["model_fingerprint"] == first.models["tiny"]["fingerprint_id"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["models"]["tiny"]["fingerprint"]["weights_sha256"]
    assert manifest["models"]["tiny"]["fingerprint"]["chat_template_sha256"]
    assert manifest["packages"]["transformers"] and manifest["seed"] == 0
    summary = (run_dir / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("model,dataset,attack,setting,judge,n,harmful,safe,unscored,skipped,asr,ci_low,ci_high")
    assert len(summary) == 1 + 3

    started = pool.started
    again = run_recipe(recipe, out_dir=tmp_path, engines=pool, progress=False)
    assert (again.generated, again.from_cache, again.reused) == (0, 0, 9)
    assert pool.started == started
    assert read_samples(run_dir) == records

    # a new run folder over the same prompts is served by the generation cache
    other = run_recipe(recipe, out_dir=tmp_path, run_id="other", engines=pool, progress=False)
    assert (other.generated, other.from_cache) == (0, 9)
    strip = lambda rs: sorted(json.dumps({k: v for k, v in r.items()}, sort_keys=True) for r in rs)  # noqa: E731
    assert strip(read_samples(tmp_path / "other")) == strip(records)

    # changing a sampling parameter is a cache miss for exactly those requests
    changed = recipe_from_dict(tiny_recipe(tiny_model, depths=(0, 3, 7, 11)))
    more = run_recipe(changed, out_dir=tmp_path, engines=pool, progress=False)
    assert (more.generated, more.reused) == (3, 9)


def test_skipped_rows_are_reported(tmp_path, tiny_model, pool):
    raw = tiny_recipe(tiny_model, limit=2, depths=(0, 5))
    raw["attacks"][0]["source"] = "target"
    raw["attacks"][0]["depths"] = [0, 500]
    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path, engines=pool, progress=False)
    assert res.skipped == 2 and res.generated == 2
    row = res.summary[res.summary.setting == "depth=500"].iloc[0]
    assert row["skipped"] == 2 and row["n"] == 0


def test_killed_run_resumes(tmp_path, tiny_model, pool):
    """SIGKILL a real `harness run` part-way, then resume: nothing lost, nothing redone."""
    raw = tiny_recipe(tiny_model, backend="hf", limit=40, depths=(0, 2, 4, 6, 8), chunk_size=4)
    raw["attacks"][0]["sampling"]["max_tokens"] = 24
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    samples = tmp_path / "out" / "tiny" / "samples.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(recipe_path), "--out", str(tmp_path / "out")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if samples.exists() and len(samples.read_bytes().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(samples, "ab") as f:  # a write torn by the kill
        f.write(b'{"sample_id": "torn", "model": "ti')
    done_before = len([line for line in samples.read_bytes().splitlines() if line.endswith(b"}")]) - 1
    assert 0 < done_before < 200

    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    assert res.reused + res.from_cache >= done_before
    assert res.generated + res.reused + res.from_cache == 200
    lines = samples.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is valid JSON
    assert len(recs) == 200 and len({r["sample_id"] for r in recs}) == 200
    assert all(r["verdicts"] for r in recs)


def test_cli_run_and_validate(tmp_path, tiny_model):
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 4))))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(recipe_path)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout and "demo: 2 examples" in out.stdout
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(recipe_path), "--out", str(tmp_path / "o"),
                          "--set", "attacks.0.depths=[0,2]"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "depth=2" in out.stdout and "ASR" in out.stdout
    assert (tmp_path / "o" / "tiny" / "summary.csv").exists()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for word in ("smollm2-135m-instruct", "advbench", "harmbench", "hexphi", "prefill", "keyword"):
        assert word in out.stdout


@pytest.mark.slow
def test_smollm2_prefill_on_vllm(tmp_path, smollm2, pool):
    """The bundled real chat model through real vLLM: it complies, so ASR is high at depth 5."""
    raw = {
        "name": "smol",
        "models": [{"name": "base", "spec": "smollm2-135m-instruct"}],
        "datasets": [{"format": "demo", "limit": 6}],
        "attacks": [{"type": "prefill", "depths": [0, 5], "sampling": {"max_tokens": 24}}],
        "engine": {"enforce_eager": True, "kv_cache_gib": 1, "extra": dict(TEST_VLLM_EXTRA)},
    }
    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path, engines=pool, progress=False)
    assert res.generated == 12
    recs = read_samples(tmp_path / "smol")
    assert all(r["completion"].strip() for r in recs)
    d5 = res.summary[res.summary.setting == "depth=5"].iloc[0]
    assert d5["n"] == 6 and d5["asr"] >= 0.5, "SmolLM2 is not safety-aligned"
