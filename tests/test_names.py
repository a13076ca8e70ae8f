"""Names that become file or folder names are plain names or refused (issue 19 item 5): run
ids, recipe names (the default run id), dataset labels (synth and anchor cache files),
analysis labels, and the names the JailbreakBench export lays files out by.

`harness run recipes/prefill.yaml --run-id ../../etc/x` used to create a folder outside
results/. The CLI runs here fail fast (a missing dataset file, a model that does not exist):
no engine is started, with or without the check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import HarnessError, RecipeError
from harness.names import check_name, name_problem
from tests.conftest import ROOT

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
EVAL = """\
name: {name}
models: [{{name: m, spec: smollm2-135m-instruct}}]
datasets: [{{format: jsonl, path: {data}}}]
attacks: [{{type: prefill}}]
"""
ANALYZE = """\
kind: analyze
name: diag
models: [{name: m, spec: /nonexistent/model}]
analyses: [{type: refusal, models: [m], depths: [0]}]
"""
BAD = ["../../etc/x", "..", ".", "a\\b", "x/", ""]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=120)


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("value", ["prefill", "ci-baseline", "run.v2", "my run", "...", "a..b", "é"])
def test_plain_names_pass(value):
    assert name_problem(value) is None and check_name(value, "--run-id") == value


@pytest.mark.parametrize("value, why", [("", "empty"), (".", "the folder itself or its parent"),
                                        ("..", "the folder itself or its parent"),
                                        ("../x", "path separator '/'"), ("a/b", "path separator '/'"),
                                        ("a\\b", "path separator '\\\\'"), ("a\0b", "NUL"), (None, "not a string")])
def test_other_names_are_refused_naming_the_key_and_value(value, why):
    assert why in name_problem(value)
    with pytest.raises(RecipeError) as e:
        check_name(value, "datasets.0.name", error=RecipeError)
    assert str(e.value).startswith(f"datasets.0.name {value!r}: not a plain name") and why in str(e.value)


@pytest.mark.parametrize("kind", ["eval", "analyze"])
@pytest.mark.parametrize("run_id", BAD)
def test_a_run_id_that_is_a_path_is_refused_and_creates_nothing(tmp_path, kind, run_id):
    """Run from tmp/a/b: results/../../etc/x would be tmp/a/etc/x. Exit 2, the flag and the
    value in the message, and not one file or folder created anywhere under tmp."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    recipe = work / "r.yaml"
    recipe.write_text(EVAL.format(name="t", data="missing.jsonl") if kind == "eval" else ANALYZE)
    before = tree(tmp_path)
    out = cli("run", str(recipe), "--run-id", run_id, cwd=work)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: --run-id {run_id!r}: not a plain name"), out.stderr
    assert "Traceback" not in out.stderr
    assert tree(tmp_path) == before
    assert not (tmp_path / "a" / "etc").exists()


def test_a_plain_run_id_still_runs(tmp_path):
    """A plain --run-id gets past the check to the run (which then stops at the missing dataset
    file, inside results/)."""
    (tmp_path / "r.yaml").write_text(EVAL.format(name="t", data="missing.jsonl"))
    out = cli("run", "r.yaml", "--run-id", "ci-candidate.v2", cwd=tmp_path)
    assert out.returncode == 2 and "dataset file missing.jsonl does not exist" in out.stderr, out.stderr
    assert (tmp_path / "results" / "ci-candidate.v2").is_dir()
    assert {p.name for p in tmp_path.iterdir()} == {"r.yaml", "results"}


def test_run_recipe_refuses_a_path_run_id_before_touching_disk(tmp_path):
    from harness.recipes import recipe_from_dict
    from harness.run.runner import run_recipe

    recipe = recipe_from_dict({"name": "t", "models": [{"name": "m", "spec": "smollm2-135m-instruct"}],
                               "datasets": [{"format": "demo"}], "attacks": [{"type": "prefill"}]})
    results = tmp_path / "results"
    for bad in ("../x", "..", ""):
        with pytest.raises(HarnessError, match=r"run id '.*': not a plain name"):
            run_recipe(recipe, out_dir=results, run_id=bad, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_validate_refuses_a_recipe_or_dataset_name_that_is_a_path(tmp_path):
    """The recipe name is the default run id; a dataset's name is its label in cache file names
    (synth, anchors). `harness validate` names the key and the value (exit 2)."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "x1", "prompt": "Explain how to pick a lock."}\n')
    (tmp_path / "name.yaml").write_text(EVAL.format(name="../x", data=data))
    out = cli("validate", "name.yaml", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "invalid recipe\n  name: '../x' is not a plain name (contains the path separator '/')" in out.stderr
    ds = EVAL.format(name="t", data=data).replace(f"path: {data}", f"path: {data}, name: '..'")
    (tmp_path / "ds.yaml").write_text(ds)
    out = cli("validate", "ds.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "datasets.0.name: '..' is not a plain name" in out.stderr, out.stderr
    (tmp_path / "ok.yaml").write_text(EVAL.format(name="plain-name.v2", data=data))
    out = cli("validate", "ok.yaml", cwd=tmp_path)
    assert out.returncode == 0 and "ok.yaml: OK" in out.stdout, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "ds.yaml", "name.yaml", "ok.yaml"]


def test_analyze_recipe_and_analysis_names(tmp_path):
    from harness.analysis.recipe import load_analyze_recipe

    for old, new, key in (("name: diag", "name: ../diag", "name"),
                          ("type: refusal,", "type: refusal, name: ../../kl,", "analyses.0.refusal.name")):
        (tmp_path / "a.yaml").write_text(ANALYZE.replace(old, new))
        with pytest.raises(RecipeError) as e:
            load_analyze_recipe(tmp_path / "a.yaml")
        assert f"{key}: '" in str(e.value) and "is not a plain name" in str(e.value), str(e.value)
    (tmp_path / "a.yaml").write_text(ANALYZE)
    assert load_analyze_recipe(tmp_path / "a.yaml").name == "diag"


def test_synth_cache_refuses_a_label_that_is_a_path():
    """A dataset's label defaults to its file's stem: checked where it becomes the cache file
    name, before any model is resolved."""
    from harness.synth import synthesize_column

    with pytest.raises(RecipeError, match=r"dataset label '\.\.': not a plain name"):
        synthesize_column([], None, "..")


def test_export_lays_out_files_inside_the_folder(tmp_path):
    """Export folders come from names in the run's records (which an edited run folder can set
    to anything): each becomes one plain name."""
    from harness.results.export import write_jbb

    def art(attack: str) -> dict:
        return {"parameters": {"harness": {"attack_label": attack}, "attack_type": ".."}, "jailbreaks": []}

    out = tmp_path / "export"
    written = write_jbb({("..", "..", "../../a"): art("../../a"), ("m", ".", "b"): art(".")}, out)
    assert len(written) == 2
    for p in written:
        assert Path(p).resolve().is_relative_to(out.resolve()), p
    assert {p.name for p in tmp_path.iterdir()} == {"export"}
    assert (out / "__" / ".._.._a" / "__" / "__.json").is_file() and (out / "_" / "_" / "__" / "m.json").is_file()
