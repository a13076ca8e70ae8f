"""`engine.backend: auto` and running without vLLM.

A recipe on the HF engine must run on an image that has no vLLM (the GPU box of issue 20 had
none): `tests/no_vllm.py` hides `vllm` from the import system in a real `harness` subprocess
and fails if any `vllm` module is imported all the same. `auto` resolves to hf there, and the
manifest says so; where it resolves to a backend, its cache keys are that backend's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.engine import auto, engine_descriptor, engine_hash, resolve_config
from harness.recipes import recipe_from_dict
from tests.conftest import ROOT, tiny_engine_config
from tests.test_run import tiny_recipe

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def no_vllm(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "no_vllm.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_auto_resolves_to_hf_when_vllm_does_not_import():
    out = no_vllm("--probe")
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    assert probe["backend"] == "hf" and "vllm does not import" in probe["why"]
    assert probe["record"] == {"requested": "auto", "resolved": "hf", "why": probe["why"]}
    assert probe["tried"] == ["vllm"]  # it asked once, and no vllm module was loaded (no_vllm checks)


@pytest.mark.parametrize("backend", ["hf", "auto"])
def test_recipe_runs_without_vllm_and_never_imports_it(tmp_path, tiny_model, backend):
    raw = tiny_recipe(tiny_model, backend=backend, limit=2, depths=(0, 3))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = no_vllm("run", str(path), "--out", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr[-3000:]  # 7: a vllm module was imported
    manifest = json.loads((tmp_path / "out" / "tiny" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["generated"] == 4
    assert [e["backend"] for e in manifest["engines"].values()] == ["hf"]
    assert manifest["engine_backend"]["requested"] == backend and manifest["engine_backend"]["resolved"] == "hf"
    if backend == "auto":
        assert "vllm does not import" in manifest["engine_backend"]["why"]
        assert out.stderr.count("engine.backend auto -> hf") == 1  # one line, which and why


def test_auto_shares_the_cache_keys_of_the_backend_it_resolves_to(monkeypatch, tiny_model):
    for chosen in ("hf", "vllm"):
        monkeypatch.setattr(auto, "auto_choice", lambda c=chosen: (c, "test"))
        named = resolve_config(tiny_engine_config(chosen), tiny_model)
        auto_cfg = resolve_config(tiny_engine_config(chosen).model_copy(update={"backend": "auto"}), tiny_model)
        assert auto_cfg.backend == chosen and auto_cfg == named
        # unresolved too: the descriptor names the backend that runs, never `auto`
        unresolved = tiny_engine_config(chosen).model_copy(update={"backend": "auto"})
        assert engine_descriptor(unresolved)["backend"] == chosen
        assert engine_hash(unresolved) == engine_hash(tiny_engine_config(chosen))


def test_explicit_backend_is_never_probed(monkeypatch):
    def boom():
        raise AssertionError("auto_choice called for a named backend")

    monkeypatch.setattr(auto, "auto_choice", boom)
    assert auto.resolve_backend("hf") == "hf" and auto.resolve_backend("vllm") == "vllm"
    assert auto.backend_record("hf") == {"requested": "hf", "resolved": "hf", "why": "named by the recipe"}


def test_local_judges_follow_the_recipes_named_backend(tiny_model):
    local = {"type": "llm", "transport": "local", "model": str(tiny_model), "rubric": "llama_guard"}
    pinned = dict(local, name="pinned", engine={"backend": "vllm"})
    chain = {"type": "chain", "name": "c", "judges": [dict(local, name="inner"), {"type": "keyword"}]}

    def judges(engine: dict) -> dict:
        raw = dict(tiny_recipe(tiny_model, backend="hf"), judges=[local, pinned, chain])
        raw["engine"] = engine
        return {j.label: j for j in recipe_from_dict(raw).judge_configs}

    named = judges({"backend": "hf"})
    assert named[next(k for k in named if k not in ("pinned", "c"))].engine.backend == "hf"
    assert named["pinned"].engine.backend == "vllm"  # a judge that names its own keeps it
    assert named["c"].judges[0].engine.backend == "hf"
    unnamed = judges({"dtype": "float32"})  # the recipe on auto: the judge on auto too
    assert [j.engine.backend for j in unnamed.values() if hasattr(j, "engine")] == ["auto", "vllm"]
    assert unnamed["c"].judges[0].engine.backend == "auto"
