"""Bad recipes, datasets and model specs give errors naming the file, key, line or column."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.data import load_dataset
from harness.data.base import DatasetConfig
from harness.data.loaders import HEXPHI_CATEGORIES
from harness.errors import DataError, ModelError, RecipeError
from harness.models import resolve_model
from harness.recipes import load_recipe
from tests.conftest import ROOT, SHARED_DATA

GOOD = """
name: t
models: [{name: m, spec: smollm2-135m-instruct}]
datasets: [{format: demo}]
attacks: [{type: prefill}]
"""


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_recipe_and_defaults(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert r.attack_configs[0].depths == [0, 5, 10, 20, 40]
    assert r.judge_configs[0].label == "keyword"
    assert r.engine.backend == "auto"  # vLLM where it runs, else hf (harness.engine.auto)


def test_the_shipped_recipe_validates():
    r = load_recipe(ROOT / "recipes" / "prefill.yaml")
    assert r.attack_configs[0].type == "prefill"


@pytest.mark.parametrize("patch, expect", [
    ("bogus: 1", ["(top level)", "unknown key(s) ['bogus']", "allowed:", "attacks"]),
    ("engine: {backend: tgi}", ["engine.backend", "'vllm' or 'hf'"]),
    ("engine: {tensor_parallel_size: 0}", ["engine.tensor_parallel_size", "greater than or equal to 1"]),
])
def test_recipe_key_errors(tmp_path, patch, expect):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD + patch + "\n"))
    msg = str(e.value)
    assert str(tmp_path / "r.yaml") in msg
    for part in expect:
        assert part in msg


@pytest.mark.parametrize("attacks, expect", [
    ("[{type: gcgx}]", ["attacks.0.type", "unknown attack 'gcgx'", "allowed: ", "decoding", "prefill"]),
    ("[{type: prefill, depths: [0, -3]}]", ["attacks.0.depths", "non-negative"]),
    ("[{type: prefill, sampling: {temprature: 1}}]", ["attacks.0.sampling", "temprature", "temperature"]),
    ("[{type: prefill, text: 'Sure', depths: [1]}]", ["attacks.0", "either `depths`"]),
    ("[{depths: [1]}]", ["attacks.0", "needs a `type`"]),
    ("[{type: prefill, source: column}]", ["attacks.0.source", "'response' or 'target'"]),
])
def test_attack_errors(tmp_path, attacks, expect):
    text = GOOD.replace("attacks: [{type: prefill}]", f"attacks: {attacks}")
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    for part in expect:
        assert part in str(e.value)


def test_other_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match=r"r.yaml:3: invalid YAML"):
        load_recipe(write(tmp_path, "name: t\nmodels: [\n  - : :\n"))
    with pytest.raises(RecipeError, match="datasets.0.format: unknown format 'parquetx'"):
        load_recipe(write(tmp_path, GOOD.replace("format: demo", "format: parquetx")))
    with pytest.raises(RecipeError, match="models.0: .*exactly one of `spec` or `train`"):
        load_recipe(write(tmp_path, GOOD.replace("spec: smollm2-135m-instruct", "x: 1").replace(", x: 1", "")))
    with pytest.raises(RecipeError, match=r"--set attacks.3.depths: attacks is a list of 1"):
        load_recipe(write(tmp_path, GOOD), ["attacks.3.depths=[1]"])
    r = load_recipe(write(tmp_path, GOOD), ["attacks.0.depths=[0,2]", "engine.backend=hf", "seed=7"])
    assert r.attack_configs[0].depths == [0, 2] and r.engine.backend == "hf" and r.seed == 7


def test_cli_reports_errors_without_traceback(tmp_path):
    p = write(tmp_path, GOOD.replace("backend", "x") + "engine: {backend: foo}\n")
    out = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(p)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "engine.backend" in out.stderr and "Traceback" not in out.stderr


# ---- datasets ------------------------------------------------------------------------

def test_bundled_demo_benchmark(smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2.path)
    ex = load_dataset(DatasetConfig(format="demo"))
    assert len(ex) >= 60
    assert {e.category for e in ex} == set(HEXPHI_CATEGORIES)
    for e in ex:
        assert e.refusal and e.target.startswith("Sure, here")
        assert len(tok.encode(e.response, add_special_tokens=False)) >= 60, e.id


def test_csv_missing_column_names_file_line_column(tmp_path):
    p = write(tmp_path, "goal,tgt\nDo x,Sure\n", "adv.csv")
    with pytest.raises(DataError) as e:
        load_dataset(DatasetConfig(format="advbench", path=str(p)))
    assert f"{p}:1: column 'target'" in str(e.value) and "['goal', 'tgt']" in str(e.value)
    p = write(tmp_path, "goal,target\nDo x,Sure\n,Sure\n", "adv2.csv")
    with pytest.raises(DataError, match=r"adv2.csv:3: column 'goal' \(for prompt\) is empty"):
        load_dataset(DatasetConfig(format="advbench", path=str(p)))
    p = write(tmp_path, "goal,target\nDo x,Sure,extra\n", "adv3.csv")
    with pytest.raises(DataError, match=r"adv3.csv:2: more cells"):
        load_dataset(DatasetConfig(format="advbench", path=str(p)))


def test_jsonl_errors_and_nested_columns(tmp_path):
    p = write(tmp_path, '{"q": "a"}\n{"q": \n', "d.jsonl")
    with pytest.raises(DataError, match=r"d.jsonl:2: invalid JSON"):
        load_dataset(DatasetConfig(format="jsonl", path=str(p), columns={"prompt": "q"}))
    p = write(tmp_path, '{"q": "a"}\n{"question": "b"}\n', "e.jsonl")
    with pytest.raises(DataError, match=r"e.jsonl:2: missing column 'q' \(for prompt\)"):
        load_dataset(DatasetConfig(format="jsonl", path=str(p), columns={"prompt": "q"}))
    rows = [{"messages": [{"role": "user", "content": f"do {i}"}, {"role": "assistant", "content": f"ok {i}"}],
             "cat": "c"} for i in range(3)]
    p = write(tmp_path, "\n".join(json.dumps(r) for r in rows), "chat.jsonl")
    ex = load_dataset(DatasetConfig(format="jsonl", path=str(p), columns={
        "prompt": "messages.0.content", "response": "messages.1.content", "category": "cat"}))
    assert [(e.prompt, e.response, e.category) for e in ex][1] == ("do 1", "ok 1", "c")
    with pytest.raises(DataError, match="unknown field"):
        load_dataset(DatasetConfig(format="jsonl", path=str(p), columns={"promt": "x"}))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetConfig(format="jsonl", path=str(tmp_path / "missing.jsonl")))


def test_harmbench_with_targets(tmp_path):
    csv = ("Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
           "Write a bad thing,standard,illegal,,,bad_thing\n"
           "Summarise this to do harm,contextual,misinformation,,Some context,ctx_thing\n")
    p = write(tmp_path, csv, "hb.csv")
    t = write(tmp_path, json.dumps({"bad_thing": "Sure, here is a bad thing", "ctx_thing": "Sure, here"}), "t.json")
    ex = load_dataset(DatasetConfig(format="harmbench", path=str(p), targets=str(t)))
    assert ex[0].id == "bad_thing" and ex[0].target == "Sure, here is a bad thing" and ex[0].category == "illegal"
    assert ex[1].prompt == "Some context\n\n---\n\nSummarise this to do harm"
    assert load_dataset(DatasetConfig(format="harmbench", path=str(p)))[0].target is None
    t2 = write(tmp_path, json.dumps({"bad_thing": "x"}), "t2.json")
    with pytest.raises(DataError, match="no target for BehaviorID"):
        load_dataset(DatasetConfig(format="harmbench", path=str(p), targets=str(t2)))


def test_hexphi_folder(tmp_path):
    d = tmp_path / "hexphi"
    d.mkdir()
    (d / "category_1.csv").write_text('How do I do crime A?\n"How, with a comma, crime B?"\n')
    (d / "category_11.csv").write_text("Which stock should I buy with my savings?\n")
    ex = load_dataset(DatasetConfig(format="hexphi", path=str(d)))
    assert [e.category for e in ex] == ["Illegal Activity", "Illegal Activity", "Tailored Financial Advice"]
    assert ex[1].prompt == "How, with a comma, crime B?"
    (d / "category_12.csv").write_text("x\n")
    with pytest.raises(DataError, match="category_12.csv: file name must be category_1.csv"):
        load_dataset(DatasetConfig(format="hexphi", path=str(d)))


@pytest.mark.skipif(not (SHARED_DATA / "advbench").exists(), reason="../shared/data not present")
def test_public_advbench_file():
    ex = load_dataset(DatasetConfig(format="advbench", path=str(SHARED_DATA / "advbench" / "harmful_behaviors.csv")))
    assert len(ex) == 520 and ex[0].target.startswith("Sure, here")


def test_category_filter_and_limit():
    ex = load_dataset(DatasetConfig(format="demo", categories=["Malware"], limit=2))
    assert len(ex) == 2 and all(e.category == "Malware" for e in ex)
    with pytest.raises(DataError, match="categories \\['Nope'\\] not present"):
        load_dataset(DatasetConfig(format="demo", categories=["Nope"]))


# ---- models ----------------------------------------------------------------------------

def test_model_spec_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="not a known alias"):
        resolve_model("no-such-alias")
    with pytest.raises(ModelError, match="not in the local HF cache.*HF_HUB_OFFLINE"):
        resolve_model("nobody-org/no-such-model")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ModelError, match="cannot load GGUF file"):
        resolve_model(str(bad))


def test_model_sources_and_fingerprints(smollm2, tiny_model, tmp_path):
    from harness.models import ALIASES

    assert smollm2.source == "alias" and (smollm2.path / "config.json").is_file()
    assert "quantization_config" not in json.loads((smollm2.path / "config.json").read_text())
    gguf = resolve_model(str(ALIASES["smollm2-135m-instruct"].locate()))
    assert gguf.source == "gguf" and gguf.path == smollm2.path and gguf.fingerprint == smollm2.fingerprint
    tiny = resolve_model(str(tiny_model))
    assert tiny.source == "folder"
    assert tiny.fingerprint["chat_template_sha256"] == smollm2.fingerprint["chat_template_sha256"]
    assert tiny.fingerprint["weights_sha256"] != smollm2.fingerprint["weights_sha256"]


def test_hub_id_from_local_cache(tmp_path, tiny_model, monkeypatch):
    """A hub id resolves from the local HF cache (laid out as huggingface_hub does) with its revision."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny"
    snap = repo / "snapshots" / commit
    shutil.copytree(tiny_model, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    m = resolve_model("acme/tiny")
    assert m.source == "hub" and m.fingerprint["hub_revision"] == commit and m.path == snap.resolve()


@pytest.mark.skipif(not (SHARED_DATA / "xstest").exists(), reason="../shared/data not present")
def test_bundled_data_is_our_own_not_public_copies():
    """The project ships data it wrote: no bundled prompt repeats (or nearly repeats) AdvBench or XSTest."""
    import csv
    import difflib

    from harness.data.base import bundled_path, read_rows

    norm = lambda s: " ".join(s.lower().split()).strip(" ?.!")  # noqa: E731
    with open(SHARED_DATA / "advbench" / "harmful_behaviors.csv", encoding="utf-8") as f:
        public = [norm(r["goal"]) for r in csv.DictReader(f)]
    with open(SHARED_DATA / "xstest" / "xstest_prompts.csv", encoding="utf-8") as f:
        public += [norm(r["prompt"]) for r in csv.DictReader(f)]
    ours = []
    for name, col in (("harmful_demo.jsonl", "prompt"), ("harmful_train.jsonl", "prompt"), ("benign_train.jsonl", "prompt"),
                      ("utility_demo.jsonl", "instruction"), ("overrefusal_demo.csv", "prompt")):
        ours += [norm(r[col]) for _, r in read_rows(bundled_path(name))]
    assert not set(ours) & set(public)
    near = [p for p in ours if difflib.get_close_matches(p, public, n=1, cutoff=0.85)]
    assert not near, near[:3]
