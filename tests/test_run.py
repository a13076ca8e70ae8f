"""Running recipes end to end on real engines: the run log, its hashes, caching, resume, locks."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.recipes import recipe_from_dict
from harness.run.runner import run_recipe
from harness.run.store import read_samples
from tests.conftest import ROOT, TEST_VLLM_EXTRA

ENV = dict(os.environ, PYTHONPATH=str(ROOT))


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


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.vllm
def test_run_writes_records_and_second_run_regenerates_nothing(tmp_path, tiny_model, pool):
    recipe = recipe_from_dict(tiny_recipe(tiny_model))
    first = run_recipe(recipe, out_dir=tmp_path, engines=pool, progress=False)
    assert (first.generated, first.from_cache, first.samples) == (9, 0, 9)
    run_dir = tmp_path / "tiny"
    records = read_samples(run_dir)
    assert len(records) == 9 and len({r["sample_id"] for r in records}) == 9
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for r in records:
        assert r["attack_info"]["prefill_tokens"] == r["setting"]["depth"]
        assert set(r["verdicts"]) == {"keyword"}
        assert r["model_fingerprint"] == first.models["tiny"]["fingerprint_id"]
        assert r["attack_hash"] == manifest["attacks"]["prefill"]["hash"]
        assert r["dataset_hash"] == manifest["datasets"]["demo"]["hash"]
        assert r["verdicts"]["keyword"]["judge_hash"] == manifest["judges"]["keyword"]["hash"]
        assert r["engine_hash"] in manifest["engines"]
    assert manifest["status"] == "complete"
    assert manifest["models"]["tiny"]["fingerprint"]["weights_sha256"]
    assert manifest["models"]["tiny"]["fingerprint"]["chat_template_sha256"]
    assert manifest["models"]["tiny"]["fingerprint"]["generation_config_sha256"]
    assert manifest["packages"]["transformers"] and manifest["seed"] == 0
    assert set(manifest["hardware"]["cpu"]) >= {"model", "flags"}
    [descriptor] = manifest["engines"].values()
    assert descriptor["dtype"] == "float32" and descriptor["backend"] == "vllm" and descriptor["vllm"]
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary.columns[:8]) == ["model", "dataset", "attack", "setting", "reducer", "judge", "n", "harmful"]
    assert len(summary) == 3 and set(summary.judge_hash) == {manifest["judges"]["keyword"]["hash"]}

    started = pool.started
    again = run_recipe(recipe, out_dir=tmp_path, engines=pool, progress=False)
    assert (again.generated, again.from_cache) == (0, 9)
    assert pool.started == started
    assert read_samples(run_dir) == records
    assert len((run_dir / "history.jsonl").read_text().splitlines()) == 2

    # a new run folder over the same prompts is served by the generation cache
    other = run_recipe(recipe, out_dir=tmp_path, run_id="other", engines=pool, progress=False)
    assert (other.generated, other.from_cache) == (0, 9)
    assert read_samples(tmp_path / "other") == records

    # more depths: only the new requests are generated, and the table has exactly the new plan
    more = run_recipe(recipe_from_dict(tiny_recipe(tiny_model, depths=(0, 3, 7, 11))), out_dir=tmp_path, engines=pool,
                      progress=False)
    assert (more.generated, more.from_cache) == (3, 9)
    assert list(pd.read_csv(run_dir / "summary.csv").setting) == ["depth=0", "depth=3", "depth=7", "depth=11"]


@pytest.mark.vllm
def test_table_has_exactly_what_the_current_recipe_plans(tmp_path, tiny_model, pool):
    """The README's `--set engine.backend=hf --set attacks.0.depths=[0,10]` after a full vLLM run gives
    a table of HF rows at depths 0 and 10 only; `--limit` gives n = limit; a dropped model is gone."""
    raw = tiny_recipe(tiny_model, limit=4, depths=(0, 5, 20))
    raw["models"].append({"name": "twin", "spec": str(tiny_model)})
    run_recipe(recipe_from_dict(raw), out_dir=tmp_path, engines=pool, progress=False)
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(tiny_model, limit=4, depths=(0, 5, 20))))  # without twin
    out = cli("run", str(recipe_path), "--out", str(tmp_path), "--set", "engine.backend=hf",
              "--set", "attacks.0.depths=[0,10]")
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "tiny"
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary.setting) == ["depth=0", "depth=10"] and set(summary.model) == {"tiny"}
    assert list(summary.n) == [4, 4]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    [descriptor] = manifest["engines"].values()
    assert descriptor["backend"] == "hf" and set(manifest["models"]) == {"tiny"}
    assert manifest["recipe"]["engine"]["backend"] == "hf"
    records = read_samples(run_dir)
    assert {r["engine_hash"] for r in records} == set(manifest["engines"]) and len(records) == 8

    res = run_recipe(recipe_from_dict(tiny_recipe(tiny_model, backend="hf", limit=4, depths=(0, 10))), out_dir=tmp_path,
                     limit=2, engines=pool, progress=False)
    assert (res.generated, res.samples) == (0, 4)
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary.n) == [2, 2] and json.loads((run_dir / "manifest.json").read_text())["limit"] == 2


def _run(tmp_path, pool, raw):
    return run_recipe(recipe_from_dict(raw), out_dir=tmp_path, engines=pool, progress=False)


def _verdict_hashes(run_dir):
    return {r["verdicts"]["keyword"]["judge_hash"] for r in read_samples(run_dir)}


@pytest.mark.parametrize("change", ["temperature", "seed", "max_tokens", "stop",
                                    pytest.param("backend", marks=pytest.mark.vllm), "hf_batch_size"])
def test_generation_settings_change_what_is_generated_and_nothing_else(tmp_path, tiny_model, pool, change):
    base = tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 4))
    base["attacks"][0]["sampling"].update(temperature=0.7, seed=1)
    first = _run(tmp_path, pool, base)
    assert first.generated == 4
    before = read_samples(tmp_path / "tiny")
    changed = json.loads(json.dumps(base))
    s = changed["attacks"][0]["sampling"]
    if change == "temperature":
        s["temperature"] = 1.3
    elif change == "seed":
        s["seed"] = 2
    elif change == "max_tokens":
        s["max_tokens"] = 5
    elif change == "stop":
        s["stop"] = ["."]
    elif change == "backend":
        changed["engine"].update(backend="vllm", extra=dict(TEST_VLLM_EXTRA))
    else:
        changed["engine"]["batch_size"] = 2  # HF: part of the engine's identity, like vLLM's `extra`
    second = _run(tmp_path, pool, changed)
    assert (second.generated, second.from_cache) == (4, 0), change
    after = read_samples(tmp_path / "tiny")
    assert [r["cache_key"] for r in after] != [r["cache_key"] for r in before]
    assert _verdict_hashes(tmp_path / "tiny") == {before[0]["verdicts"]["keyword"]["judge_hash"]}
    assert [r["sample_id"] for r in after] == [r["sample_id"] for r in before]


@pytest.mark.vllm
def test_vllm_extra_is_part_of_the_generation_key(tmp_path, tiny_model, pool):
    base = tiny_recipe(tiny_model, limit=2, depths=(0,))
    assert _run(tmp_path, pool, base).generated == 2
    base["engine"]["extra"]["max_num_seqs"] = 8
    assert (_run(tmp_path, pool, base).generated) == 2


def test_judge_settings_change_verdicts_and_nothing_else(tmp_path, tiny_model, pool, flaky):
    """Keyword phrases and an LLM judge's threshold re-judge from the caches: no generation, and
    the LLM judge's answers come from the judge cache (the loopback server sees no new request)."""
    raw = tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 4))
    judge = {"type": "llm", "name": "hexphi", "rubric": "hexphi", "model": "ok-#thescore: 4", "base_url": flaky.url,
             "api_key_env": None}
    raw["judges"] = [{"type": "keyword"}, judge]
    before = flaky.requests.count("ok-#thescore: 4")  # the server is shared by the whole session
    first = _run(tmp_path, pool, raw)
    recs = read_samples(tmp_path / "tiny")
    assert {r["verdicts"]["hexphi"]["label"] for r in recs} == {"safe"}  # score 4 < threshold 5
    requests = flaky.requests.count("ok-#thescore: 4")
    assert requests - before == first.samples

    raw["judges"][0]["phrases"] = "gcg"
    raw["judges"][1]["threshold"] = 4
    second = _run(tmp_path, pool, raw)
    assert (second.generated, second.from_cache) == (0, 4)
    after = read_samples(tmp_path / "tiny")
    assert {r["verdicts"]["hexphi"]["label"] for r in after} == {"harmful"}
    assert flaky.requests.count("ok-#thescore: 4") == requests
    for b, a in zip(recs, after):
        assert a["completion"] == b["completion"] and a["cache_key"] == b["cache_key"]
        for j in ("keyword", "hexphi"):
            assert a["verdicts"][j]["judge_hash"] != b["verdicts"][j]["judge_hash"]
    summary = pd.read_csv(tmp_path / "tiny" / "summary.csv")
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert set(summary[summary.judge == "hexphi"].judge_hash) == {manifest["judges"]["hexphi"]["hash"]}


@pytest.mark.vllm
def test_skipped_rows_are_reported(tmp_path, tiny_model, pool):
    raw = tiny_recipe(tiny_model, limit=2, depths=(0, 5))
    raw["attacks"][0]["source"] = "target"
    raw["attacks"][0]["depths"] = [0, 500]
    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path, engines=pool, progress=False)
    assert res.skipped == 2 and res.generated == 2
    row = res.summary[res.summary.setting == "depth=500"].iloc[0]
    assert row["skipped"] == 2 and row["n"] == 0


def _cached_generations(path: Path) -> int:
    with sqlite3.connect(path, timeout=10) as db:
        return db.execute("SELECT COUNT(*) FROM gen").fetchone()[0]


def paused_run(recipe_path: Path, out: Path, marker: Path, after_chunks: int) -> subprocess.Popen:
    """A real `harness run` subprocess that stops after its ``after_chunks``-th committed chunk of
    generations and waits (tests/paused_run.py), and has written ``marker`` by the time this
    returns: no race with a process that might finish first, on any machine."""
    log = marker.with_name(marker.name + ".log")
    with open(log, "w") as fh:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "paused_run.py"), str(marker), str(after_chunks),
                                 "run", str(recipe_path), "--out", str(out)], env=ENV, stdout=fh, stderr=fh)
    deadline = time.monotonic() + 600  # only a guard against a hang; nothing asserts on time
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before its chunk {after_chunks}:\n"
                                 f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run did not reach its pause point in 10 minutes")
        time.sleep(0.05)
    return proc


def test_killed_run_resumes_from_the_cache(tmp_path, tiny_model, pool):
    """SIGKILL a real `harness run` part-way (paused after its 2nd chunk of 4), then resume:
    nothing finished is generated again."""
    raw = tiny_recipe(tiny_model, backend="hf", limit=40, depths=(0, 2, 4, 6, 8), chunk_size=4)
    raw["attacks"][0]["sampling"]["max_tokens"] = 24
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    db = tmp_path / "out" / ".cache" / "generations.sqlite"
    marker = tmp_path / "paused"
    proc = paused_run(recipe_path, tmp_path / "out", marker, after_chunks=2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _cached_generations(db)
    assert done_before == int(marker.read_text()) == 8  # two committed chunks of 4
    assert not (tmp_path / "out" / "tiny" / "samples.jsonl").exists()  # no half-written run log

    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    assert res.from_cache == done_before and res.generated == 200 - done_before
    recs = read_samples(tmp_path / "out" / "tiny")
    assert len(recs) == 200 and len({r["sample_id"] for r in recs}) == 200
    assert all(r["verdicts"] for r in recs)
    history = [json.loads(line) for line in (tmp_path / "out" / "tiny" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["status"] == "complete"


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, tiny_model):
    raw = tiny_recipe(tiny_model, backend="hf", limit=40, depths=(0, 2, 4, 6), chunk_size=4)
    raw["attacks"][0]["sampling"]["max_tokens"] = 24
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    lock = tmp_path / "out" / "tiny" / ".lock"
    proc = paused_run(recipe_path, tmp_path / "out", tmp_path / "paused", after_chunks=1)  # holds its lock
    try:
        assert lock.read_text().startswith("pid")
        second = cli("run", str(recipe_path), "--out", str(tmp_path / "out"))
        assert proc.poll() is None  # still paused: the refusal below is the lock's doing
        assert second.returncode == 2
        assert f"is in use by another harness run (pid {proc.pid}" in second.stderr and "--run-id" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.kill()
        proc.wait()
    # the kernel drops the lock with the process: a new run may start
    assert cli("validate", str(recipe_path)).returncode == 0


def test_a_failed_run_says_so_and_keeps_the_last_complete_run(tmp_path, tiny_model, pool, monkeypatch):
    """A run that dies before writing anything (its model resolver raises as a full disk does)
    is recorded as failed in history.jsonl with the error, and the folder keeps the last
    complete run's files; one that dies while rewriting the folder also marks its manifest."""
    import harness.run.runner as runner

    raw = tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 2))
    raw["attacks"][0]["sampling"]["max_tokens"] = 4
    run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    run_dir = tmp_path / "out" / "tiny"
    kept = {name: (run_dir / name).read_bytes() for name in ("manifest.json", "samples.jsonl", "summary.csv")}

    def no_space(*args, **kwargs):  # what a full disk raises
        raise OSError(28, "No space left on device")

    raw["attacks"][0]["depths"] = [0, 2, 4]  # another configuration, which would replace the tables
    with pytest.raises(OSError, match="No space left"):
        run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False,
                   resolver=no_space)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["status"] for h in history] == ["complete", "failed"]
    assert history[1]["error"] == "OSError: [Errno 28] No space left on device"
    assert "error" not in history[0]
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept

    monkeypatch.setattr(runner, "finalize", no_space)  # the disk fills while the tables are rewritten
    with pytest.raises(OSError):
        run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["error"]) == ("failed", "OSError: [Errno 28] No space left on device")
    assert manifest["finished"] >= manifest["started"]
    assert json.loads((run_dir / "history.jsonl").read_text().splitlines()[-1])["status"] == "failed"


def test_damaged_lines_are_named_and_the_rest_kept(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    lines = [json.dumps({"sample_id": f"s{i}", "x": i}) for i in range(5)]
    lines[2] = '{"sample_id": "s2", "x": '  # torn in the middle of the file
    lines.insert(4, "not json at all")
    (run_dir / "samples.jsonl").write_text("\n".join(lines) + "\n")
    recs = read_samples(run_dir)
    assert [r["sample_id"] for r in recs] == ["s0", "s1", "s3", "s4"]
    err = capsys.readouterr().err
    assert "line(s) 3, 5 are not sample records" in err and "other 4 records are kept" in err


def test_cli_run_and_validate(tmp_path, tiny_model):
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(yaml.safe_dump(tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 4))))
    out = cli("validate", str(recipe_path))
    assert out.returncode == 0 and "OK" in out.stdout and "demo: 2 examples" in out.stdout
    out = cli("run", str(recipe_path), "--out", str(tmp_path / "o"), "--set", "attacks.0.depths=[0,2]")
    assert out.returncode == 0, out.stderr
    assert "depth=2" in out.stdout and "ASR" in out.stdout
    assert (tmp_path / "o" / "tiny" / "summary.csv").exists()
    out = cli("list", timeout=60)
    assert out.returncode == 0
    for word in ("smollm2-135m-instruct", "advbench", "harmbench", "hexphi", "prefill", "keyword"):
        assert word in out.stdout
    out = cli("run", "--help", timeout=60)
    assert "holds exactly one" in out.stdout and "history.jsonl" in out.stdout


def test_training_recipe_commands_apply_set(tmp_path):
    """`--set` reaches training recipes (it used to be ignored silently)."""
    out = cli("validate", str(ROOT / "recipes" / "align.yaml"), "--set", "training.steps=0", timeout=120)
    assert out.returncode == 2 and "training.steps" in out.stderr
    out = cli("validate", str(ROOT / "recipes" / "align.yaml"), "--set", "models.0.objective=magic", timeout=120)
    assert out.returncode == 2 and "models.0.objective" in out.stderr


@pytest.mark.vllm
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
