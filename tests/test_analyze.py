"""Depth diagnostics: KL, CE/gradient norm and refusal log-probability by position/depth, each
checked against a direct per-position computation written here, one unpadded sequence at a
time; then the `harness analyze` commands and a `kind: analyze` recipe end to end (tiny model)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.analysis.diagnostics import (
    encode_pairs,
    grad_by_position,
    grouped_logsumexp,
    kl_by_position,
    position_stats,
    refusal_by_depth,
)
from harness.core import Example
from harness.data import load_dataset
from harness.data.base import DatasetConfig
from harness.errors import RecipeError
from harness.models import resolve_model
from harness.prompts import PromptBuilder
from tests.conftest import ROOT

SVG = "{http://www.w3.org/2000/svg}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_pert(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with seeded noise on every weight: a second model on the same vocabulary."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-perturbed")
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def models(tiny_model, tiny_pert):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(tiny_pert, dtype=torch.float32).eval()
    return a, b, PromptBuilder(AutoTokenizer.from_pretrained(tiny_model))


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """Demo rows with responses cut to different lengths, so batches pad and counts per
    position differ (positions past a short response have fewer examples)."""
    demo = load_dataset(DatasetConfig(format="demo", limit=5))
    cuts = [200, 18, 45, 9, 30]
    return [Example(e.id, e.prompt, e.category, target=e.target, response=e.response[:c], refusal=e.refusal)
            for e, c in zip(demo, cuts)]


def _sequence(builder: PromptBuilder, ex: Example, max_tokens: int) -> tuple[list[int], list[int]]:
    return builder.chat_ids(ex.prompt), builder.encode(ex.response)[:max_tokens]


# --------------------------------------------------------------------------- KL by position


def _plain_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) of two logit vectors, with plain softmax/log-softmax."""
    la, lb = logits_a.double(), logits_b.double()
    return float((torch.softmax(la, dim=-1) * (torch.log_softmax(la, dim=-1) - torch.log_softmax(lb, dim=-1))).sum())


def _direct_kl(a, b, builder, examples, max_tokens, builder_b=None) -> dict[int, list[float]]:
    """KL(a ‖ b) at each response position, one unpadded example and one position at a time;
    model b reads the prompt through ``builder_b`` (default: a's)."""
    out: dict[int, list[float]] = defaultdict(list)
    with torch.no_grad():
        for ex in examples:
            prompt, resp = _sequence(builder, ex, max_tokens)
            prompt_b, resp_b = _sequence(builder_b or builder, ex, max_tokens)
            assert resp_b == resp
            la = a(torch.tensor([prompt + resp])).logits[0]
            lb = b(torch.tensor([prompt_b + resp])).logits[0]
            for t in range(1, len(resp) + 1):
                # the logits that predict response token t: the row before it in each sequence
                out[t].append(_plain_kl(la[len(prompt) + t - 2], lb[len(prompt_b) + t - 2]))
    return out


def test_kl_by_position_matches_a_direct_per_position_computation(models, examples):
    a, b, builder = models
    T = 12
    pairs = encode_pairs(examples, builder, "response", T)
    stats = kl_by_position(a, b, pairs, pad_id=builder.tokenizer.pad_token_id, max_position=T, batch_size=3)
    direct = _direct_kl(a, b, builder, examples, T)
    lengths = sorted(len(builder.encode(e.response)[:T]) for e in examples)
    assert lengths[0] < lengths[-1]  # the padding and per-position counts are exercised
    for t in range(1, T + 1):
        vals = direct[t]
        assert int(stats.count[t - 1]) == len(vals) == sum(n >= t for n in lengths)
        assert float(stats.mean[t - 1]) == pytest.approx(statistics.fmean(vals), rel=1e-4, abs=1e-6)
        if len(vals) > 1:
            assert float(stats.std[t - 1]) == pytest.approx(statistics.stdev(vals), rel=1e-3, abs=1e-6)
        else:
            assert math.isnan(float(stats.std[t - 1]))
    assert float(stats.mean.min()) > 0.0


def test_kl_with_its_own_chat_context_for_model_b(models, examples):
    """Model b may read the prompts through another template (here: another system prompt, so
    other context lengths); position t still pairs the two models' predictions of token t."""
    a, b, builder = models
    builder_b = PromptBuilder(builder.tokenizer, "You are a terse assistant. Answer in one line, always.")
    T = 10
    pairs, pairs_b = encode_pairs(examples, builder, "response", T), encode_pairs(examples, builder_b, "response", T)
    assert all(len(p.context) != len(q.context) for p, q in zip(pairs, pairs_b))
    stats = kl_by_position(a, b, pairs, pad_id=0, max_position=T, batch_size=2, pairs_b=pairs_b)
    direct = _direct_kl(a, b, builder, examples, T, builder_b)
    for t in range(1, T + 1):
        assert int(stats.count[t - 1]) == len(direct[t])
        assert float(stats.mean[t - 1]) == pytest.approx(statistics.fmean(direct[t]), rel=1e-4, abs=1e-6)
    same = kl_by_position(a, a, pairs, pad_id=0, max_position=T, pairs_b=encode_pairs(examples, builder, "response", T))
    assert torch.all(same.mean.abs() <= 1e-7)
    with pytest.raises(ValueError, match="same examples and targets"):
        kl_by_position(a, b, pairs, pad_id=0, max_position=T, pairs_b=pairs_b[1:])


def test_kl_of_a_model_with_itself_is_zero(models, examples):
    a, _, builder = models
    pairs = encode_pairs(examples, builder, "response", 8)
    stats = kl_by_position(a, a, pairs, pad_id=0, max_position=10, batch_size=2)
    assert stats.count[:8].min() >= 1 and stats.count[8:].sum() == 0  # cut to 8 tokens
    assert torch.all(stats.mean[:8].abs() <= 1e-7)
    assert torch.all(stats.mean[8:].isnan())


class _FullLogitsOnly(torch.nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` (the window is cut after the head)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_kl_without_logits_to_keep_gives_the_same_result(models, examples):
    a, b, builder = models
    pairs = encode_pairs(examples, builder, "response", 6)
    fast = kl_by_position(a, b, pairs, pad_id=0, max_position=6, batch_size=5)
    full = kl_by_position(_FullLogitsOnly(a), _FullLogitsOnly(b), pairs, pad_id=0, max_position=6, batch_size=5)
    assert torch.equal(fast.count, full.count)
    assert torch.allclose(fast.mean, full.mean, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- CE and gradient norm


def _direct_grad(model, builder, examples, t: int, max_tokens: int) -> tuple[float, float, int]:
    """Mean CE at position t over the examples that reach it, and the norm of its gradient,
    with one unpadded, truncated sequence per example and a plain .backward()."""
    model.zero_grad(set_to_none=True)
    losses = []
    for ex in examples:
        prompt, resp = _sequence(builder, ex, max_tokens)
        if len(resp) < t:
            continue
        ids = torch.tensor([prompt + resp[:t]])
        logits = model(ids).logits[0, -2]
        losses.append(F.cross_entropy(logits, torch.tensor(resp[t - 1])))
    loss = torch.stack(losses).mean()
    loss.backward()
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), norm, len(losses)


def test_grad_norm_by_position_matches_direct_single_position_backward(models, examples):
    a, _, builder = models
    T = 8
    pairs = encode_pairs(examples, builder, "response", T)
    res = grad_by_position(a, pairs, pad_id=builder.tokenizer.pad_token_id, max_position=T + 2)
    assert all(p.grad is None for p in a.parameters())  # autograd.grad leaves .grad alone
    for t in (1, 3, T):
        ce, norm, n = _direct_grad(a, builder, examples, t, T)
        assert int(res.ce.count[t - 1]) == n
        assert float(res.ce.mean[t - 1]) == pytest.approx(ce, rel=1e-5)
        assert float(res.grad_norm[t - 1]) == pytest.approx(norm, rel=1e-4)
    assert math.isnan(float(res.grad_norm[T])) and int(res.ce.count[T]) == 0
    assert len({round(float(g), 6) for g in res.grad_norm[:T]}) == T  # a different gradient per position


# --------------------------------------------------------------------------- refusal by depth


def _direct_logprob(model, ids: list[int], n_target: int) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    start = len(ids) - n_target
    return sum(float(logp[start + j - 1, ids[start + j]]) for j in range(n_target))


def test_refusal_by_depth_matches_direct_computation(models, examples):
    a, _, builder = models
    depths = [0, 3, 7, 1000]
    res = refusal_by_depth(a, examples, builder, depths, prefix="example", prefix_tokens=5, batch_size=4)
    assert res.logprob.shape == (len(examples), len(depths))
    assert res.example_ids == tuple(e.id for e in examples)
    for i, ex in enumerate(examples):
        prompt, h = builder.chat_ids(ex.prompt), builder.encode(ex.response)
        r = builder.encode(ex.refusal)[:5]
        for d, k in enumerate(depths):
            if len(h) < k:
                assert math.isnan(float(res.logprob[i, d]))
                continue
            want = _direct_logprob(a, prompt + h[:k] + r, len(r))
            assert float(res.logprob[i, d]) == pytest.approx(want, rel=1e-5)
    rows = {r["depth"]: r for r in res.rows()}
    assert rows[1000]["n"] == 0 and rows[1000]["skipped"] == len(examples)
    short = sum(len(builder.encode(e.response)) < 7 for e in examples)
    assert 0 < short < len(examples) and rows[7]["skipped"] == short and rows[7]["n"] == len(examples) - short
    assert rows[0]["mean_logprob"] == pytest.approx(statistics.fmean(float(v) for v in res.logprob[:, 0]))
    assert all(r["mean_logprob"] < 0 for r in res.rows() if r["n"])


def _direct_prob(model, context: list[int], target: list[int]) -> float:
    """P(target | context) as a plain product of softmax probabilities, one token at a time."""
    prob = 1.0
    with torch.no_grad():
        for j, tok in enumerate(target):
            logits = model(torch.tensor([context + target[:j]])).logits[0, -1].double()
            prob *= float(torch.softmax(logits, dim=-1)[tok])
    return prob


def test_refusal_probability_is_a_product_of_token_probabilities_in_0_1(models, examples):
    a, _, builder = models
    depths = [0, 2, 5]
    res = refusal_by_depth(a, examples[:3], builder, depths, prefix="example", prefix_tokens=4, batch_size=5)
    for i, ex in enumerate(examples[:3]):
        r = builder.encode(ex.refusal)[:4]
        for d, k in enumerate(depths):
            p = math.exp(float(res.logprob[i, d]))
            assert 0.0 <= p <= 1.0
            want = _direct_prob(a, builder.chat_ids(ex.prompt) + builder.encode(ex.response)[:k], r)
            assert p == pytest.approx(want, rel=1e-4, abs=1e-30)
    for row in res.rows():
        assert 0.0 <= row["mean_prob"] <= 1.0 and row["mean_logprob"] <= 0.0


def test_refusal_prefix_set_sums_the_probabilities_of_its_members(models, examples):
    a, _, builder = models
    phrases = ["I cannot", "I'm sorry", "Sorry"]
    res = refusal_by_depth(a, examples[:2], builder, [0, 4], prefix=phrases)
    for i, ex in enumerate(examples[:2]):
        for d, k in enumerate([0, 4]):
            context = builder.chat_ids(ex.prompt) + builder.encode(ex.response)[:k]
            probs = [math.exp(_direct_logprob(a, context + builder.encode(s), len(builder.encode(s))))
                     for s in phrases]
            assert math.exp(float(res.logprob[i, d])) == pytest.approx(sum(probs), rel=1e-5)
    with pytest.raises(ValueError, match="token-prefix"):
        refusal_by_depth(a, examples[:1], builder, [0], prefix=["I can", "I can't"])


# --------------------------------------------------------------------------- pure helpers


def test_position_stats_and_grouped_logsumexp_against_plain_python():
    positions = torch.tensor([1, 2, 1, 3, 1, 2, 9])
    values = torch.tensor([0.5, 2.0, 1.5, 4.0, 1.0, 3.0, 100.0])
    s = position_stats(positions, values, max_position=4)
    assert s.count.tolist() == [3, 2, 1, 0]
    assert s.mean[:3].tolist() == pytest.approx([1.0, 2.5, 4.0])
    assert s.std[:2].tolist() == pytest.approx([statistics.stdev([0.5, 1.5, 1.0]), statistics.stdev([2.0, 3.0])])
    assert math.isnan(s.std[2]) and math.isnan(s.mean[3])

    v = torch.tensor([-1.0, -2.0, -800.0, -801.0, 0.5])
    g = torch.tensor([0, 0, 2, 2, 0])
    out = grouped_logsumexp(v, g, 4)
    assert float(out[0]) == pytest.approx(math.log(math.exp(-1) + math.exp(-2) + math.exp(0.5)))
    assert float(out[2]) == pytest.approx(-800 + math.log(1 + math.exp(-1)))  # stable far below exp's range
    assert out[1] == -math.inf and out[3] == -math.inf


# --------------------------------------------------------------------------- CLI and recipe


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _polylines(path: Path) -> list[ET.Element]:
    root = ET.fromstring(path.read_text(encoding="utf-8"))
    return [e for e in root.iter(SVG + "polyline") if e.get("class") == "line"]


def test_cli_analyze_commands_on_the_tiny_model(tiny_model, tiny_pert, models, tmp_path):
    from harness.cli import main

    a, b, builder = models
    out = tmp_path / "kl"
    assert main(["analyze", "kl", "--a", str(tiny_model), "--b", str(tiny_pert), "--limit", "3",
                 "--max-tokens", "6", "--out", str(out)]) == 0
    rows = _rows(out / "kl.csv")
    assert [int(r["position"]) for r in rows] == [1, 2, 3, 4, 5, 6] and {r["n"] for r in rows} == {"3"}
    demo = load_dataset(DatasetConfig(format="demo", limit=3))
    direct = _direct_kl(a, b, builder, demo, 6)
    assert [float(r["mean"]) for r in rows] == pytest.approx([statistics.fmean(direct[t]) for t in range(1, 7)],
                                                             rel=1e-4)
    assert len(_polylines(out / "kl.svg")) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["kind"] == "analyze"
    fps = {m["fingerprint_id"] for m in manifest["models"].values()}
    assert fps == {resolve_model(str(tiny_model)).fingerprint_id, resolve_model(str(tiny_pert)).fingerprint_id}

    out = tmp_path / "refusal"
    assert main(["analyze", "refusal", "--model", f"t={tiny_model}", "--depths", "0,2", "--limit", "2",
                 "--prefix", "I cannot", "--prefix", "I'm sorry", "--out", str(out)]) == 0
    rows = _rows(out / "refusal.csv")
    assert [(r["model"], r["depth"], r["n"]) for r in rows] == [("t", "0", "2"), ("t", "2", "2")]

    out = tmp_path / "grad"
    assert main(["analyze", "grad", "--model", str(tiny_model), "--limit", "2", "--max-tokens", "3",
                 "--out", str(out)]) == 0
    rows = _rows(out / "grad.csv")
    assert [r["position"] for r in rows] == ["1", "2", "3"] and all(float(r["grad_norm"]) > 0 for r in rows)
    assert {p.name for p in out.iterdir()} >= {"grad.csv", "grad_ce.svg", "grad_grad_norm.svg", "manifest.json"}

    assert main(["analyze", "refusal", "--model", str(tiny_model), "--prefix", "I can", "--prefix", "I can't",
                 "--limit", "1", "--out", str(tmp_path / "bad")]) == 2  # a user error, not a traceback


def test_diagnostics_recipe_end_to_end_on_the_tiny_model(tiny_model, tiny_pert, tmp_path):
    from harness.cli import main
    from harness.recipes import read_recipe_kind

    recipe = ROOT / "recipes" / "diagnostics.yaml"
    assert read_recipe_kind(recipe) == "analyze"
    sets = ["--set", f"models.0.spec={tiny_model}", "--set", f"models.1.spec={tiny_pert}",
            "--set", f"models.2.spec={tiny_model}"]
    args = ["run", str(recipe), *sets, "--limit", "2", "--out", str(tmp_path), "--run-id", "diag"]
    assert main(args) == 0
    run = tmp_path / "diag"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert set(manifest["analyses"]) == {"kl", "refusal", "grad"}
    assert {a["dataset"]["n"] for a in manifest["analyses"].values()} == {2}
    assert manifest["models"]["shallow"]["fingerprint_id"] == resolve_model(str(tiny_pert)).fingerprint_id
    assert manifest["models"]["base"]["fingerprint_id"] == manifest["models"]["deep"]["fingerprint_id"]
    for f in manifest["files"]:
        assert (run / f).is_file(), f

    kl = _rows(run / "kl.csv")
    by_pair = defaultdict(list)
    for r in kl:
        by_pair[(r["a"], r["b"])].append(float(r["mean"]))
    assert len(by_pair[("shallow", "base")]) == len(by_pair[("deep", "base")]) == 32
    assert min(by_pair[("shallow", "base")]) > 0 and max(abs(v) for v in by_pair[("deep", "base")]) <= 1e-7
    assert len(_polylines(run / "kl.svg")) == 2

    refusal = _rows(run / "refusal.csv")
    assert [(r["model"], int(r["depth"])) for r in refusal] == [
        (m, k) for m in ("base", "shallow", "deep") for k in (0, 5, 10, 20, 40)]
    base = [r["mean_logprob"] for r in refusal if r["model"] == "base"]
    assert base == [r["mean_logprob"] for r in refusal if r["model"] == "deep"]  # the same weights
    grad = _rows(run / "grad.csv")
    assert [r["model"] for r in grad] == ["shallow"] * 16 + ["deep"] * 16

    # a second run into the folder replaces the first one's files
    assert main(args + ["--set", "analyses.0.name=kl2", "--set", "analyses.1.depths=[0]",
                        "--set", "analyses.2.max_tokens=2"]) == 0
    assert not (run / "kl.csv").exists() and (run / "kl2.csv").is_file()


def test_written_outputs_have_the_documented_columns_and_parse_as_svg(models, examples, tmp_path):
    from harness.analysis.output import write_grad, write_kl, write_refusal

    a, b, builder = models
    pairs = encode_pairs(examples[:2], builder, "response", 3)
    kl = kl_by_position(a, b, pairs, pad_id=0, max_position=3)
    files = write_kl(tmp_path, "kl", {("x", "y"): kl})
    grad = write_grad(tmp_path, "grad", {"x": grad_by_position(a, pairs, pad_id=0, max_position=2)})
    ref = write_refusal(tmp_path, "refusal", {"x": refusal_by_depth(a, examples[:2], builder, [0, 1])})
    assert files == ["kl.csv", "kl.svg"] and grad == ["grad.csv", "grad_ce.svg", "grad_grad_norm.svg"]
    assert ref == ["refusal.csv", "refusal.svg"]
    headers = {f: list(_rows(tmp_path / f)[0]) for f in ("kl.csv", "grad.csv", "refusal.csv")}
    assert headers == {
        "kl.csv": ["a", "b", "position", "n", "mean", "std", "ci95_low", "ci95_high"],
        "grad.csv": ["model", "position", "n", "mean_ce", "std_ce", "grad_norm"],
        "refusal.csv": ["model", "depth", "n", "skipped", "mean_logprob", "std_logprob", "ci95_low", "ci95_high",
                        "mean_prob"]}
    from harness.results.rundir import ANALYSIS_COLUMNS  # what the HTML report reads

    for kind, cols in ANALYSIS_COLUMNS.items():
        assert set(cols) <= set(headers[f"{kind}.csv"]), kind
    for f in files + grad + ref:
        if f.endswith(".svg"):
            data = (tmp_path / f).read_bytes()
            assert data.startswith(b"<svg") and ET.parse(tmp_path / f).getroot().tag == SVG + "svg"
    assert len(_polylines(tmp_path / "kl.svg")) == 1


def test_validate_checks_models_without_building_them(capsys):
    from harness.analysis.cli import validate_analyze_recipe

    recipe = str(ROOT / "recipes" / "diagnostics.yaml")
    assert validate_analyze_recipe(recipe) == 0
    out = capsys.readouterr().out
    assert "analysis kl: kl over shallow, base, deep, base; 66 examples (demo)" in out and "OK" in out
    with pytest.raises(RecipeError, match="models.2.spec.*no model 'nope'"):
        validate_analyze_recipe(recipe, ["models.2.spec=recipes/align.yaml#nope"])


def test_analyze_recipe_errors_name_the_file_and_key(tmp_path):
    from harness.analysis.recipe import load_analyze_recipe

    text = (ROOT / "recipes" / "diagnostics.yaml").read_text()
    cases = {
        "analyses.0.pairs.1.1": text.replace("[deep, base]]", "[deep, nobody]]"),
        "analyses.2.models.0": text.replace("models: [shallow, deep]", "models: [ghost, deep]"),
        "max_tokenz": text.replace("max_tokens: 32", "max_tokenz: 32"),
        "depths": text.replace("depths: [0, 5, 10, 20, 40]", "depths: [0, 5, 5]"),
        "'kl', 'grad', 'refusal'": text.replace("type: kl", "type: klx"),
    }
    for key, body in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(body)
        with pytest.raises(RecipeError) as err:
            load_analyze_recipe(path)
        assert str(path) in str(err.value) and key in str(err.value), str(err.value)
    with pytest.raises(RecipeError, match="models.1.spec"):
        load_analyze_recipe(ROOT / "recipes" / "diagnostics.yaml", ["models.1.spec=[1, 2]"])
