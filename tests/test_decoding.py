"""Decoding-parameter attack: grid and pinning, seeded sampling on vLLM, reducers, incremental grids."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from transformers import AutoTokenizer

from attacks.base import Target
from attacks.decoding import DecodingAttack, steps
from harness.core import ATTACKS
from harness.data import load_dataset
from harness.data.base import DatasetConfig
from harness.prompts import PromptBuilder
from harness.recipes import recipe_from_dict
from harness.runner import run_recipe
from harness.store import read_samples
from tests.test_run import tiny_recipe


def test_default_grid_follows_the_original_and_pins_explicitly():
    a = DecodingAttack()
    assert a.temperatures[:3] == [0.05, 0.1, 0.15] and a.temperatures[-1] == 1.0 and len(a.temperatures) == 20
    assert a.top_ps == a.temperatures and a.top_ks == [1, 2, 5, 10, 20, 50, 100, 200, 500]
    grid = a.settings()
    assert len(grid) == 2 * (1 + 20 + 20 + 9)  # with and without the system prompt
    by = {(s["param"], s["value"], s["system"]): samp for s, samp, _ in grid}
    g = by[("greedy", 0, "none")]
    assert (g.temperature, g.top_p, g.top_k, g.max_tokens) == (0.0, 1.0, 0, 100)
    t = by[("temperature", 0.35, "default")]
    assert (t.temperature, t.top_p, t.top_k) == (0.35, 1.0, 0)  # top-k pinned off, not HF's silent 50
    p = by[("top_p", 0.9, "none")]
    assert (p.temperature, p.top_p, p.top_k) == (1.0, 0.9, 0)
    k = by[("top_k", 200, "none")]
    assert (k.temperature, k.top_p, k.top_k) == (1.0, 1.0, 200)
    hf_like = DecodingAttack(pinned={"top_k": 50}, system_prompts=["none"])
    t = {(s["param"], s["value"]): samp for s, samp, _ in hf_like.settings()}[("temperature", 0.5)]
    assert (t.temperature, t.top_k) == (0.5, 50)
    product = DecodingAttack(grid="product", temperatures=[0.5, 1.0], top_ps=[0.9], top_ks=[5, 50], greedy=False,
                             system_prompts=["none"], chat_template=[True, False])
    assert len(product.settings()) == 2 * (2 * 1 * 2)
    assert {s.get("chat", True) for s, _, _ in product.settings()} == {True, False}
    assert steps(0.1, 0.3, 0.1) == [0.1, 0.2, 0.3]


def test_grid_errors_name_the_key():
    with pytest.raises(Exception, match="temperatures"):
        DecodingAttack(temperatures=[0.0])
    with pytest.raises(Exception, match="top_ps"):
        DecodingAttack(top_ps=[1.5])
    with pytest.raises(Exception, match="grid is empty"):
        DecodingAttack(temperatures=[], top_ps=[], top_ks=[], greedy=False)
    assert ATTACKS.get("decoding") is DecodingAttack


def test_system_prompt_and_raw_prompts(smollm2):
    builder = PromptBuilder(AutoTokenizer.from_pretrained(smollm2.path))
    ex = load_dataset(DatasetConfig(format="demo", limit=1))
    a = DecodingAttack(temperatures=[0.5], top_ps=[], top_ks=[], greedy=False, chat_template=[True, False])
    planned = list(a.plan(ex, Target("smol", smollm2, builder), {}, seed=3))
    assert [p.setting for p in planned] == [{"param": "temperature", "value": 0.5, "system": "none"},
                                            {"param": "temperature", "value": 0.5, "system": "default"},
                                            {"param": "temperature", "value": 0.5, "chat": False}]
    none, default, raw = (builder.decode(p.prompt.prompt_ids) for p in planned)
    # SmolLM2's template inserts a default system prompt when none is given
    assert "You are a helpful AI assistant" in default and "You are a helpful AI assistant" not in none
    assert none.startswith("<|im_start|>system\n<|im_end|>") and none.endswith("<|im_start|>assistant\n")
    assert raw == ex[0].prompt and "<|im_start|>" not in raw
    assert all(p.sampling.seed == 3 and p.info["top_k"] == 0 for p in planned)


def decoding_recipe(model_dir, **attack) -> dict:
    raw = tiny_recipe(model_dir, limit=3)
    raw["attacks"] = [{"type": "decoding", "temperatures": [0.7], "top_ps": [0.5], "top_ks": [5],
                       "system_prompts": ["none"], "samples": 2, "sampling": {"max_tokens": 8}, **attack}]
    return raw


def test_same_seed_same_completions_on_vllm(tmp_path, tiny_model, pool):
    a = run_recipe(recipe_from_dict(decoding_recipe(tiny_model)), out_dir=tmp_path / "a", engines=pool, progress=False)
    b = run_recipe(recipe_from_dict(decoding_recipe(tiny_model)), out_dir=tmp_path / "b", engines=pool, progress=False)
    assert a.generated == b.generated == 3 * 4  # separate caches: both really generated
    ra, rb = read_samples(tmp_path / "a" / "tiny"), read_samples(tmp_path / "b" / "tiny")
    assert len(ra) == 3 * (1 + 3 * 2) and [r["completion"] for r in ra] == [r["completion"] for r in rb]
    sampled = [r for r in ra if r["setting"]["param"] != "greedy"]
    pairs = {}
    for r in sampled:
        pairs.setdefault((r["example_id"], r["setting_label"]), []).append(r["completion"])
    assert any(x != y for x, y in pairs.values()), "n=2 samples of one seeded request differ"
    raw = decoding_recipe(tiny_model)
    raw["attacks"][0]["sampling"]["seed"] = 99
    c = run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "c", engines=pool, progress=False)
    assert c.generated == 12
    rc = read_samples(tmp_path / "c" / "tiny")
    assert [r["completion"] for r in rc if r["setting"]["param"] == "greedy"] == \
        [r["completion"] for r in ra if r["setting"]["param"] == "greedy"]
    assert [r["completion"] for r in rc if r["setting"]["param"] != "greedy"] != [r["completion"] for r in sampled]


def test_reducers_in_summary_match_the_records_and_widening_regenerates_only_new(tmp_path, tiny_model, pool):
    first = run_recipe(recipe_from_dict(decoding_recipe(tiny_model)), out_dir=tmp_path, engines=pool, progress=False)
    recs = read_samples(tmp_path / "tiny")
    summary = pd.read_csv(tmp_path / "tiny" / "summary.csv")
    # any-of-N recomputed here from the per-sample verdicts
    broken = {r["example_id"] for r in recs if r["verdicts"]["keyword"]["label"] == "harmful"}
    scored = {r["example_id"] for r in recs if r["verdicts"]["keyword"]["label"] != "unscored"}
    any_row = summary[summary.setting == "any"].iloc[0]
    assert (any_row.reducer, any_row.harmful, any_row.n) == ("any", len(broken), len(scored))
    per_setting = summary[summary.reducer == "sample"]
    assert set(per_setting.setting) == {"param=greedy,value=0,system=none", "param=temperature,value=0.7,system=none",
                                        "param=top_p,value=0.5,system=none", "param=top_k,value=5,system=none"}
    assert set(summary[summary.reducer == "any"].setting) == {"any", "any[param=greedy]", "any[param=temperature]",
                                                              "any[param=top_p]", "any[param=top_k]"}
    best = summary[summary.reducer == "best"].iloc[0]
    assert best.asr == per_setting.asr.max() and best.detail in set(per_setting.setting)

    wider = decoding_recipe(tiny_model, temperatures=[0.7, 0.9], top_ks=[5, 50])
    second = run_recipe(recipe_from_dict(wider), out_dir=tmp_path, engines=pool, progress=False)
    assert (second.generated, second.from_cache) == (3 * 2, first.generated)


def test_early_stop_skips_broken_prompts_and_keeps_any_of_n(tmp_path, tiny_model, pool):
    full = run_recipe(recipe_from_dict(decoding_recipe(tiny_model)), out_dir=tmp_path, engines=pool, progress=False)
    early = run_recipe(recipe_from_dict(decoding_recipe(tiny_model, early_stop=True)), out_dir=tmp_path, run_id="early",
                       engines=pool, progress=False)
    recs = read_samples(tmp_path / "early")
    skipped = [r for r in recs if r.get("skipped")]
    assert skipped and all(r["skipped"].startswith("early stop") for r in skipped)
    first_broken = {}
    for r in recs:  # a skipped sample must come after a harmful one of the same prompt
        if r.get("skipped"):
            assert r["example_id"] in first_broken
        elif r["verdicts"]["keyword"]["label"] == "harmful":
            first_broken.setdefault(r["example_id"], r["setting_label"])
    assert early.generated == 0 and early.from_cache < full.generated  # served from the full run's cache
    s_full = pd.read_csv(tmp_path / "tiny" / "summary.csv").set_index("setting")
    s_early = pd.read_csv(tmp_path / "early" / "summary.csv").set_index("setting")
    assert (s_early.loc["any", "harmful"], s_early.loc["any", "n"]) == (s_full.loc["any", "harmful"],
                                                                       s_full.loc["any", "n"])
    manifest = json.loads((tmp_path / "early" / "manifest.json").read_text())
    assert manifest["attacks"]["decoding"]["config"]["early_stop"] is True


def test_full_grid_flag_overrides_the_recipe_lists():
    small = DecodingAttack(temperatures=[0.5], top_ps=[], top_ks=[5], system_prompts=["none"])
    assert len(small.settings()) == 1 + 1 + 0 + 1
    full = DecodingAttack(temperatures=[0.5], top_ps=[], top_ks=[5], system_prompts=["none"], full_grid=True)
    assert len(full.settings()) == 1 + 20 + 20 + 9
