"""Training: loss maths, recovery-depth sampling and masking, tiny end-to-end runs, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from harness.data import load_dataset
from harness.data.base import DatasetConfig
from harness.errors import DataError
from harness.training.config import TrainRecipe
from harness.training.data import Batcher, TrainPair, collate
from harness.training.losses import (
    IGNORE,
    beta_schedule,
    constrained_loss,
    loss_by_position,
    mix_losses,
    response_positions,
    sample_recovery_depth,
    sft_loss,
    token_logprobs,
)
from tests.conftest import SHARED_DATA


def test_beta_schedule_matches_official_defaults():
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7]])
    assert beta_schedule(pos)[0, 1:].tolist() == pytest.approx([0.5, 2, 2, 2, 2, 0.1, 0.1])


def _random_case(seed=0, B=3, T=9, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = IGNORE  # prompt
    labels[1, 7:] = IGNORE  # padding
    logp_ref = -torch.rand(B, T - 1, generator=g, dtype=torch.float64) * 4
    return logits, labels, logp_ref


def test_constrained_gradient_equals_closed_form_and_per_token():
    logits, labels, logp_ref = _random_case()
    logp, mask = token_logprobs(logits, labels)
    betas = beta_schedule(response_positions(mask)).double()
    loss = constrained_loss(logp, logp_ref * mask, betas, mask)
    (g_auto,) = torch.autograd.grad(loss, logits, retain_graph=True)

    # closed form: ∇L = −(1/N) Σ 2σ(β_t Δ_t) ∇log π_θ(y_t)  — a reweighted cross-entropy
    delta = (logp_ref * mask - logp).detach()
    weights = (2 * torch.sigmoid(betas * delta) * mask / mask.sum()).detach()
    (g_closed,) = torch.autograd.grad(-(weights * logp).sum(), logits)
    assert torch.allclose(g_auto, g_closed, atol=1e-6, rtol=0)

    # direct per-token computation of the loss value, one token at a time
    total, n = 0.0, 0
    lp = F.log_softmax(logits.detach(), -1)
    for b in range(labels.shape[0]):
        t_in_response = 0
        for t in range(1, labels.shape[1]):
            if labels[b, t] == IGNORE:
                continue
            t_in_response += 1
            beta = 0.5 if t_in_response == 1 else 2.0 if t_in_response <= 5 else 0.1
            d = float(logp_ref[b, t - 1]) - float(lp[b, t - 1, labels[b, t]])
            total += (2 / beta) * math.log1p(math.exp(beta * d))
            n += 1
    assert float(loss.detach()) == pytest.approx(total / n, abs=1e-6)


def test_constrained_loss_tends_to_sft_as_beta_vanishes():
    logits, labels, logp_ref = _random_case(seed=1)
    logp, mask = token_logprobs(logits, labels)
    tiny = torch.full_like(logp, 1e-7)
    (g_c,) = torch.autograd.grad(constrained_loss(logp, logp_ref * mask, tiny, mask), logits)
    (g_s,) = torch.autograd.grad(sft_loss(logits, labels), logits)
    assert torch.allclose(g_c, g_s, atol=1e-6)


def test_token_logprobs_and_positions():
    logits, labels, _ = _random_case(seed=2)
    logp, mask = token_logprobs(logits, labels)
    lp = F.log_softmax(logits.detach(), -1)
    assert float(logp[0, 4].detach()) == pytest.approx(float(lp[0, 4, labels[0, 5]]))
    assert response_positions(mask)[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    by_pos = loss_by_position(logp.detach(), mask, 8)
    assert float(by_pos[0]) == pytest.approx(float(-logp[:, 2].detach().mean()))
    assert math.isnan(float(by_pos[7]))


def test_recovery_depth_distribution():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([0, 3, 50, 250] * 5000)
    k = sample_recovery_depth(lengths, g)
    assert (k[lengths == 0] == 0).all()
    assert (k <= lengths.clamp(max=100)).all()
    for L in (3, 50, 250):
        kk = k[lengths == L]
        assert float((kk == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
        nz = kk[kk > 0].float()
        cap = min(L, 100)
        assert float(nz.min()) == 1 and float(nz.max()) == cap
        assert float(nz.mean()) == pytest.approx((1 + cap) / 2, rel=0.05)  # uniform on 1..cap


def test_augmented_batches_mask_the_harmful_prefix():
    main = [TrainPair(f"m{i}", "x", "r", "h", prompt_ids=(1, 2, 3), harmful_ids=tuple(range(100, 100 + 20 + i)),
                      target_ids=(7, 8, 9, 2)) for i in range(6)]
    anchor = [TrainPair("a", "q", "y", prompt_ids=(1, 4), target_ids=(5, 6, 2))]
    b = Batcher(main, anchor, batch_size=4, anchor_batch_size=2, max_length=64, pad_id=0, seed=3, augment=True)
    batch = b.micro_batch(0)
    assert batch["is_anchor"].tolist() == [False] * 4 + [True] * 2
    for row in range(4):
        k = int(batch["depth"][row])
        n = 3 + k + 4
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert ids[:3].tolist() == [1, 2, 3] and ids[3:3 + k].tolist() == list(range(100, 100 + k))
        assert ids[3 + k:n].tolist() == [7, 8, 9, 2]
        assert (labels[:3 + k] == IGNORE).all() and labels[3 + k:n].tolist() == [7, 8, 9, 2]
        assert (labels[n:] == IGNORE).all() and (batch["attention_mask"][row, n:] == 0).all()
    again = b.micro_batch(0)
    assert all(torch.equal(batch[k], again[k]) for k in batch), "batches are a pure function of the index"
    depths = torch.cat([b.micro_batch(i)["depth"][:4] for i in range(50)])
    assert 0.3 < float((depths == 0).float().mean()) < 0.7


def test_contrast_rows_cut_benign_answers_and_join_the_safety_term():
    main = [TrainPair(f"m{i}", "x", "r", "h", prompt_ids=(1, 2, 3), harmful_ids=tuple(range(100, 130)),
                      target_ids=(7, 8, 9, 2)) for i in range(4)]
    answer = tuple(range(200, 260)) + (2,)  # 60 answer tokens and the end of turn
    anchor = [TrainPair(f"a{i}", "q", "y", prompt_ids=(1, 4), target_ids=answer) for i in range(3)]
    plain = Batcher(main, anchor, batch_size=2, anchor_batch_size=1, max_length=128, pad_id=0, seed=5, augment=True)
    b = Batcher(main, anchor, batch_size=2, anchor_batch_size=1, max_length=128, pad_id=0, seed=5, augment=True,
                contrast_rows=3, contrast_window=8)
    seen = set()
    for index in range(40):
        batch = b.micro_batch(index)
        assert batch["is_contrast"].tolist() == [False] * 2 + [True] * 3 + [False]
        assert batch["is_anchor"].tolist() == [False] * 5 + [True]  # contrast rows are in the safety term
        # the safety rows are the ones a batcher without contrast rows draws
        assert torch.equal(batch["depth"][:2], plain.micro_batch(index)["depth"][:2])
        for row in range(2, 5):
            k = int(batch["depth"][row])
            seen.add(k)
            assert 0 <= k <= 60
            ids, labels = batch["input_ids"][row], batch["labels"][row]
            assert ids[:2 + k].tolist() == [1, 4] + list(answer[:k])  # the benign answer so far is context
            want = list(answer[k:k + 8])  # its next 8 tokens are the target
            assert labels[2 + k:2 + k + len(want)].tolist() == want
            assert (labels[:2 + k] == IGNORE).all() and (labels[2 + k + len(want):] == IGNORE).all()
    assert 0 in seen and max(seen) > 40, seen  # k = 0 and deep cuts both occur
    with pytest.raises(DataError, match="anchors"):
        Batcher(main, [], batch_size=2, anchor_batch_size=0, max_length=64, pad_id=0, seed=0, contrast_rows=1)


def test_contrast_depths_follow_their_own_p_zero_and_max_k():
    """contrast.p_zero / max_k move only the contrast rows' cuts: with p_zero 0 and max_k 12 every
    cut lies in 1..12 (both ends reached), while the safety rows keep the augmentation's depths."""
    main = [TrainPair(f"m{i}", "x", "r", "h", prompt_ids=(1, 2, 3), harmful_ids=tuple(range(100, 130)),
                      target_ids=(7, 8, 9, 2)) for i in range(4)]
    answer = tuple(range(200, 260)) + (2,)
    anchor = [TrainPair(f"a{i}", "q", "y", prompt_ids=(1, 4), target_ids=answer) for i in range(3)]
    common = dict(batch_size=2, anchor_batch_size=1, max_length=128, pad_id=0, seed=5, augment=True,
                  contrast_rows=4, contrast_window=8)
    default, own = Batcher(main, anchor, **common), Batcher(main, anchor, **common, contrast_p_zero=0.0,
                                                            contrast_max_k=12)
    cuts = []
    for index in range(60):
        a, b = default.micro_batch(index), own.micro_batch(index)
        assert torch.equal(a["depth"][:2], b["depth"][:2])
        cuts += b["depth"][2:6].tolist()
    assert min(cuts) == 1 and max(cuts) == 12, (min(cuts), max(cuts))
    shallow = Batcher(main, anchor, **{**common, "augment": False}, contrast_p_zero=0.0, contrast_max_k=12)
    assert shallow.micro_batch(0)["depth"].tolist() == [0] * 7  # SFT rows are never cut


def test_contrast_needs_anchors_and_a_reference_free_objective():
    from harness.training.config import TrainModelSpec

    base = {"name": "m", "data": {"format": "harmful-train"}, "contrast": {"rows": 2}}
    with pytest.raises(ValueError, match="set `anchor`"):
        TrainModelSpec.model_validate({**base, "objective": "augmented"})
    with pytest.raises(ValueError, match="constrained"):
        TrainModelSpec.model_validate({**base, "objective": "constrained", "anchor": {"format": "benign-train"}})
    ok = TrainModelSpec.model_validate({**base, "objective": "augmented", "anchor": {"format": "benign-train"}})
    assert ok.contrast.rows == 2 and ok.contrast.window == 32


def test_collate_truncates_tail_not_context():
    out = collate([((1, 2, 3), (4, 5, 6, 7))], max_length=5, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and out["labels"].tolist() == [[IGNORE] * 3 + [4, 5]]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _bundled_training_prompts() -> list:
    return load_dataset(DatasetConfig(format="harmful-train")) + load_dataset(DatasetConfig(format="benign-train"))


def _near_duplicates(train: list, evaluation: set[str]) -> list[str]:
    """Training prompts within difflib ratio 0.85 of an evaluation prompt (normalised)."""
    import difflib

    return [e.prompt for e in train if difflib.get_close_matches(_norm(e.prompt), evaluation, n=1, cutoff=0.85)]


def test_training_sets_are_disjoint_from_evaluation_sets():
    train = _bundled_training_prompts()
    assert len(load_dataset(DatasetConfig(format="harmful-train"))) >= 150
    assert len(load_dataset(DatasetConfig(format="benign-train"))) >= 150
    evaluation = {_norm(e.prompt) for e in load_dataset(DatasetConfig(format="demo"))}
    from harness.data.base import bundled_path, read_rows

    for name, col in (("utility_demo.jsonl", "instruction"), ("overrefusal_demo.csv", "prompt")):
        evaluation |= {_norm(r[col]) for _, r in read_rows(bundled_path(name))}
    clash = [e.id for e in train if _norm(e.prompt) in evaluation]
    assert not clash
    near = _near_duplicates(train, evaluation)
    assert not near, near[:3]


@pytest.mark.skipif(not (SHARED_DATA / "xstest").exists() or not (SHARED_DATA / "advbench").exists(),
                    reason="../shared/data not present")
def test_bundled_training_sets_hold_no_public_evaluation_prompt():
    """The bundled training prompts repeat no XSTest prompt (safe or unsafe) and no AdvBench prompt
    held out for evaluation (rows 260-), word for word or nearly (difflib >= 0.85): the borderline
    benign prompts share XSTest's categories, never its prompts."""
    from harness.data.base import read_rows

    evaluation = {_norm(r["prompt"]) for _, r in read_rows(SHARED_DATA / "xstest" / "xstest_prompts.csv")}
    advbench = [_norm(r["goal"]) for _, r in read_rows(SHARED_DATA / "advbench" / "harmful_behaviors.csv")]
    assert len(evaluation) >= 450 and len(advbench) >= 520
    evaluation |= set(advbench[260:])
    near = _near_duplicates(_bundled_training_prompts(), evaluation)
    assert not near, near[:3]


# ---- end to end on a tiny random model -------------------------------------------------

def tiny_train_recipe(tiny_model, objective="augmented", steps=4, **training) -> TrainRecipe:
    return TrainRecipe.model_validate({
        "kind": "train", "name": "tiny-align", "base": str(tiny_model),
        "training": {"steps": steps, "batch_size": 2, "anchor_batch_size": 1, "lr": 1e-3, "max_length": 256,
                     "checkpoint_every": 2, **training},
        "models": [{"name": f"tiny-{objective}", "objective": objective,
                    "data": {"format": "harmful-train", "limit": 6},
                    "target": "refusal",
                    "anchor": {"format": "benign-train", "limit": 4, "responses": "dataset"}}],
    })


@pytest.fixture()
def harness_cache(tmp_path, monkeypatch):
    """Trained models go to a private cache; converted models stay shared."""
    from harness.models import cache_dir

    real = cache_dir()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(real / "models", target_is_directory=True)
    return tmp_path / "cache"


def test_tiny_end_to_end_training_and_cache(tiny_model, harness_cache):
    from harness.training.registry import build_model

    recipe = tiny_train_recipe(tiny_model)
    m = build_model(recipe, recipe.models[0], progress=False)
    assert m.source == "trained" and (m.path / "config.json").is_file()
    work = m.path.parent
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(len(r["nll_by_position"]) == 16 and r["loss"] > 0 for r in log)
    assert log[-1]["main_loss"] < log[0]["main_loss"]
    prov = json.loads((work / "provenance.json").read_text())
    assert prov["data"]["main"]["format"] == "harmful-train" and prov["base"]["fingerprint"]
    rows = [json.loads(line) for line in (work / "train_data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["harmful"] and rows[0]["target"]
    # the engine loads the result like any other model
    from harness.models import resolve_model

    assert resolve_model(str(m.path)).fingerprint["weights_sha256"] != resolve_model(str(tiny_model)).fingerprint["weights_sha256"]
    # unchanged recipe: cached; changed recipe content: a new build key
    mtime = (m.path / "model.safetensors").stat().st_mtime_ns
    assert build_model(recipe, recipe.models[0], progress=False).path == m.path
    assert (m.path / "model.safetensors").stat().st_mtime_ns == mtime
    from harness.training.registry import model_key
    from harness.models import resolve_model as rm

    other = tiny_train_recipe(tiny_model, lr=5e-4)
    assert model_key(other, other.models[0], rm(str(tiny_model))) != model_key(recipe, recipe.models[0], rm(str(tiny_model)))


def test_resume_from_checkpoint_is_exact(tiny_model, tmp_path):
    from harness.models import resolve_model
    from harness.training.trainer import Trainer

    recipe = tiny_train_recipe(tiny_model, objective="constrained", steps=4, checkpoint_every=100)
    spec = recipe.models[0]
    base = resolve_model(str(tiny_model))
    full = Trainer(recipe, spec, base, tmp_path / "full", progress=False).train()
    part = Trainer(recipe, spec, base, tmp_path / "part", progress=False)
    assert part.train(stop_after=2) is None
    assert (tmp_path / "part" / "ref_logprobs.pt").exists()
    resumed = Trainer(recipe, spec, base, tmp_path / "part", progress=False).train()
    from safetensors.torch import load_file

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    la = [json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "part" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert not (tmp_path / "part" / "checkpoints").exists(), "a finished build drops its resume checkpoints"
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-6)


def test_lora_training_merges_into_plain_folder(tiny_model, tmp_path):
    """The export is the base with the low-rank update folded in: same tensors as the base (no
    lora_A/lora_B, no PEFT prefixes), every targeted linear layer changed by a matrix of rank
    <= r (an unmerged save leaves it unchanged, a full fine-tune would change it at full rank),
    everything else bit-identical, and the engine-facing model computes different logits."""
    from safetensors.torch import load_file
    from harness.models import resolve_model
    from harness.training.trainer import Trainer
    from transformers import AutoModelForCausalLM

    recipe = tiny_train_recipe(tiny_model, objective="sft", steps=2, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    out = Trainer(recipe, recipe.models[0], resolve_model(str(tiny_model)), tmp_path / "lora", progress=False).train()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and not (out / "adapter_config.json").exists()
    assert not list(out.glob("adapter_model.*"))
    base, merged = load_file(tiny_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert merged.keys() == base.keys()
    linear = [k for k in base if k.endswith("_proj.weight")]  # q k v o gate up down ("all-linear"; head tied)
    assert len(linear) == 2 * 7
    for k in base:
        if k not in linear:
            assert torch.equal(merged[k], base[k]), k
            continue
        delta = (merged[k].double() - base[k].double())
        s = torch.linalg.svdvals(delta)
        assert s[0] > 1e-5, f"{k}: the update was not merged"
        assert s[4] < 1e-3 * s[0], f"{k}: update of rank > 4 ({s[:6].tolist()})"
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)(ids).logits
        b = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
    assert not torch.allclose(a, b, atol=1e-4)


def test_eval_recipe_builds_a_named_trained_model_on_demand(tiny_model, harness_cache, tmp_path, pool):
    """`train: <recipe>#<name>` in an eval recipe builds the model once, then reuses it."""
    import yaml

    from harness.recipes import recipe_from_dict
    from harness.run.runner import run_recipe
    from tests.test_run import tiny_recipe

    train = tiny_train_recipe(tiny_model, objective="sft", steps=2).model_dump(mode="json")
    path = tmp_path / "tiny-align.yaml"
    path.write_text(yaml.safe_dump(train))
    raw = tiny_recipe(tiny_model, backend="hf", limit=2, depths=(0, 3))
    raw["models"] = [{"name": "sft", "train": f"{path}#tiny-sft"}]
    res = run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    assert res.models["sft"]["source"] == "trained" and res.generated == 4
    built = list((harness_cache / "trained").glob("tiny-sft-*/provenance.json"))
    assert len(built) == 1
    again = run_recipe(recipe_from_dict(raw), out_dir=tmp_path / "out", engines=pool, progress=False)
    assert again.generated == 0 and list((harness_cache / "trained").glob("tiny-sft-*/provenance.json")) == built


def test_validate_training_recipe_cli():
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    # With vLLM hidden (tests/no_vllm.py; exit 7 if any vllm module is imported): validating loads
    # no model, so it works on an image without vLLM. On the GPU box of issue 20 it failed there:
    # validate loaded the training data with its `synth:` column, which started the synth model
    # on vLLM (then the default backend); it now loads datasets and anchors with synth=False.
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "no_vllm.py"), "validate", "recipes/align.yaml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert "smollm2-deep: augmented, 260 examples (advbench-train)" in out.stdout and "OK" in out.stdout
    assert "smollm2-deep-template: augmented, 165 examples (harmful-train)" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "train", "recipes/prefill.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert bad.returncode == 2 and "not a training recipe (it needs `kind: train`)" in bad.stderr


def test_refusal_templates_replace_the_column(smollm2):
    from transformers import AutoTokenizer

    from harness.prompts import PromptBuilder
    from harness.training.data import REFUSAL_TEMPLATES, build_pairs

    tok = AutoTokenizer.from_pretrained(smollm2.path)
    ex = load_dataset(DatasetConfig(format="demo", limit=12))
    pairs = build_pairs(ex, PromptBuilder(tok), "refusal", tok.eos_token_id, with_harmful=True, source="demo",
                        refusal_templates=True)
    assert all(p.target in REFUSAL_TEMPLATES for p in pairs) and len({p.target for p in pairs}) > 1
    again = build_pairs(ex, PromptBuilder(tok), "refusal", tok.eos_token_id, with_harmful=True, source="demo",
                        refusal_templates=True)
    assert [p.target for p in again] == [p.target for p in pairs], "the choice is stable"
    assert pairs[0].target_ids[-1] == tok.eos_token_id and pairs[0].harmful_ids


# ---- fidelity to the paper (issue 9) ----------------------------------------------------

class BigramLM(torch.nn.Module):
    """A real (if minimal) causal LM: the logits at t depend only on the token at t."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.head = torch.nn.Identity()  # the output embedding the trainer restricts to supervised positions

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.head(self.table[input_ids]))

    def get_output_embeddings(self):
        return self.head


@pytest.mark.parametrize("chunk_tokens", [0, 3, 7])  # one forward; chunks of 1 row; chunks of 2 rows
@pytest.mark.parametrize("mix, expected", [
    # data rows: uniform over V=8 -> loss ln 8 = 3 ln 2 per token; anchor rows: p = 1/2 -> ln 2
    ("weighted", 0.2 * 3 * math.log(2) + 0.8 * math.log(2)),     # α on the safety (data) term
    # 2 data rows × 2 tokens, 4 anchor rows × 2 tokens: (4·3 ln2 + 8·ln2) / 12
    ("token_mean", (4 * 3 * math.log(2) + 8 * math.log(2)) / 12),
])
def test_safety_weight_is_alpha_on_the_safety_term(mix, expected, chunk_tokens, tiny_model):
    from harness.models import resolve_model
    from harness.training.trainer import Trainer

    V = 8
    table = torch.zeros(V, V)
    table[4, 5] = table[5, 6] = math.log(V - 1)  # anchor continuations: p = 7/14 = 1/2
    main = [TrainPair(f"m{i}", "x", "r", prompt_ids=(1,), target_ids=(2, 3)) for i in range(3)]
    anchor = [TrainPair(f"a{i}", "q", "y", prompt_ids=(4,), target_ids=(5, 6)) for i in range(5)]
    batch = Batcher(main, anchor, batch_size=2, anchor_batch_size=4, max_length=16, pad_id=0, seed=0).micro_batch(0)
    recipe = tiny_train_recipe(tiny_model, objective="sft", chunk_tokens=chunk_tokens)
    spec = recipe.models[0].model_copy(update={"safety_weight": 0.2, "mix": mix})
    trainer = Trainer(recipe, spec, resolve_model(str(tiny_model)), tiny_model, progress=False)
    model = BigramLM(table)
    trainer._head = model.get_output_embeddings()
    stats = trainer._forward_backward(trainer._accelerator(), model, batch, None)
    assert stats["loss"] == pytest.approx(expected, abs=1e-5)
    assert stats["main_loss"] == pytest.approx(3 * math.log(2), abs=1e-5)
    assert stats["anchor_loss"] == pytest.approx(math.log(2), abs=1e-5)
    # the gradient is the one of the whole batch in one forward, whatever the chunking
    ref = BigramLM(table)
    logp, mask = token_logprobs(ref(batch["input_ids"]).logits, batch["labels"])
    anchor = batch["is_anchor"][:, None]
    mix_losses(-logp, mask & ~anchor, -logp, mask & anchor, 0.2, mix).backward()
    assert torch.allclose(model.table.grad, ref.table.grad, atol=1e-6)


def test_contrast_rows_weigh_as_safety_rows(tiny_model):
    """2 refusal rows (3 ln 2 per token) + 2 benign contrast rows (ln 2 per token) of 2 tokens each
    make the data term: mean (4·3 ln2 + 4·ln2) / 8 = 2 ln2, weighted by α = 0.2 beside the anchors."""
    from harness.models import resolve_model
    from harness.training.config import ContrastSettings
    from harness.training.trainer import Trainer

    table = torch.zeros(8, 8)
    table[4, 5] = table[5, 6] = math.log(7)  # benign continuations: p = 1/2
    main = [TrainPair(f"m{i}", "x", "r", prompt_ids=(1,), target_ids=(2, 3)) for i in range(3)]
    anchor = [TrainPair(f"a{i}", "q", "y", prompt_ids=(4,), target_ids=(5, 6)) for i in range(5)]
    batch = Batcher(main, anchor, batch_size=2, anchor_batch_size=4, max_length=16, pad_id=0, seed=0,
                    contrast_rows=2, contrast_window=4).micro_batch(0)
    recipe = tiny_train_recipe(tiny_model, objective="sft")
    spec = recipe.models[0].model_copy(update={"safety_weight": 0.2, "contrast": ContrastSettings(rows=2, window=4)})
    trainer = Trainer(recipe, spec, resolve_model(str(tiny_model)), tiny_model, progress=False)
    model = BigramLM(table)
    trainer._head = model.get_output_embeddings()
    stats = trainer._forward_backward(trainer._accelerator(), model, batch, None)
    assert stats["main_loss"] == pytest.approx(2 * math.log(2), abs=1e-5)
    assert stats["contrast_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert stats["loss"] == pytest.approx(0.2 * 2 * math.log(2) + 0.8 * math.log(2), abs=1e-5)


def test_unlikelihood_pushes_down_refusal_openings_inside_benign_answers(tiny_model):
    """Refusal opening = token 2 (the refusal targets start (2, 3)). At the benign contexts 4 and
    5 the bigram LM gives token 2 probability 1/14 (logit 0 against ln 7 for the benign next
    token and 0 for the 6 others), so each of the 4 contrast tokens adds w·ln(14/13) to the
    data term; a contrast label that is itself an opening adds nothing."""
    from harness.models import resolve_model
    from harness.training.config import ContrastSettings
    from harness.training.data import refusal_openings
    from harness.training.losses import avoided_token_loss
    from harness.training.trainer import Trainer

    table = torch.zeros(8, 8)
    table[4, 5] = table[5, 6] = math.log(7)
    main = [TrainPair(f"m{i}", "x", "r", prompt_ids=(1,), target_ids=(2, 3)) for i in range(3)]
    anchor = [TrainPair(f"a{i}", "q", "y", prompt_ids=(4,), target_ids=(5, 6)) for i in range(5)]
    assert refusal_openings(main) == [2]
    batch = Batcher(main, anchor, batch_size=2, anchor_batch_size=4, max_length=16, pad_id=0, seed=0,
                    contrast_rows=2, contrast_window=4).micro_batch(0)
    recipe = tiny_train_recipe(tiny_model, objective="sft")
    w = 0.5
    spec = recipe.models[0].model_copy(update={"safety_weight": 0.2,
                                               "contrast": ContrastSettings(rows=2, unlikelihood=w)})
    trainer = Trainer(recipe, spec, resolve_model(str(tiny_model)), tiny_model, progress=False)
    model = BigramLM(table)
    trainer._head = model.get_output_embeddings()
    trainer._avoid = torch.tensor([2])
    stats = trainer._forward_backward(trainer._accelerator(), model, batch, None)
    data_term = (4 * 3 * math.log(2) + 4 * math.log(2) + 4 * w * math.log(14 / 13)) / 8
    assert stats["main_loss"] == pytest.approx(data_term, abs=1e-5)
    assert stats["loss"] == pytest.approx(0.2 * data_term + 0.8 * math.log(2), abs=1e-5)
    # a label that is an opening itself is not penalised; unsupervised positions are 0
    labels = torch.tensor([[IGNORE, 2, 5]])
    out = avoided_token_loss(torch.zeros(2, 8), labels, torch.tensor([2]))  # uniform: π(2) = 1/8
    assert out.tolist() == [[0.0, pytest.approx(math.log(8 / 7))]]


def test_old_anchor_weight_key_is_refused_with_the_conversion():
    with pytest.raises(Exception) as e:
        TrainRecipe.model_validate({"kind": "train", "name": "x", "base": "b", "models": [
            {"name": "m", "objective": "sft", "data": {"format": "harmful-train"}, "anchor_weight": 0.2}]})
    assert "safety_weight" in str(e.value) and "0.8" in str(e.value)


def test_refusal_follows_the_harmful_prefix_with_a_space_on_smollm2(smollm2):
    """'…Sure, hereI can't…' was the old join; the BPE tokenizer needs the space spelled out."""
    from transformers import AutoTokenizer

    from harness.prompts import PromptBuilder
    from harness.training.data import build_pairs

    tok = AutoTokenizer.from_pretrained(smollm2.path)
    ex = load_dataset(DatasetConfig(format="harmful-train", limit=20))
    pairs = build_pairs(ex, PromptBuilder(tok), "refusal", tok.eos_token_id, with_harmful=True, source="ht")
    joins = 0
    for p in pairs:
        for k in range(1, min(len(p.harmful_ids), 30)):
            text = tok.decode(list(p.prompt_ids + p.harmful_ids[:k] + p.target_after(k)), skip_special_tokens=True)
            prefix = tok.decode(list(p.harmful_ids[:k]))
            refusal = p.target.strip()
            assert refusal in text
            between = text[text.index(prefix) + len(prefix):text.index(refusal, text.index(prefix) + len(prefix) - 1)]
            assert between in (" ", "") and (between == " ") != prefix.endswith((" ", "\n")), (prefix, between)
            joins += between == " "
        assert tok.decode(list(p.target_after(0))).startswith(p.target.strip()[:5]), "k = 0: no leading space"
    assert joins > 100


def test_constrained_weight_is_floored():
    logp = torch.tensor([[-0.1, -0.1]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-30.0, -0.1]], dtype=torch.float64)  # token 0 far above the reference: 2σ(-59) ≈ 0
    betas = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    (g,) = torch.autograd.grad(constrained_loss(logp, ref, betas, mask, weight_floor=1e-3), logp)
    assert g[0].tolist() == pytest.approx([-1e-3 / 2, -1.0 / 2])  # −w_t / N, w = max(2σ(βΔ), 1e-3)
    (g0,) = torch.autograd.grad(constrained_loss(logp, ref, betas, mask, weight_floor=0.0), logp)
    assert abs(float(g0[0, 0])) < 1e-20


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_constrained_delta_is_zero_at_step_zero(tiny_model, tmp_path, precision):
    """The reference log-probs come from the policy's own forward (same autocast), so the
    first step's Δ = log π_ref − log π_θ is 0, not a precision gap.

    fp32 ("no"): 1e-4 on CPU. On CUDA the trainer turns TF32 off (trainer.exact_fp32_matmuls;
    with it Δ was 2.4e-4 on an H200), but the one-row reference pass and the padded training
    batch still run different kernels (cuBLAS and SDPA choose by shape), each fp32-exact to
    ~1e-6 relative but summed in another order over this random model's large logits: 1e-3
    there, still far below the bf16 gap the shared autocast removes (2e-2 bounds bf16 on both)."""
    from harness.models import resolve_model
    from harness.training.trainer import Trainer

    recipe = tiny_train_recipe(tiny_model, objective="constrained", steps=1, mixed_precision=precision,
                               adam_beta1=0.5)
    Trainer(recipe, recipe.models[0], resolve_model(str(tiny_model)), tmp_path / "w", progress=False).train()
    log = [json.loads(x) for x in (tmp_path / "w" / "train_log.jsonl").read_text().splitlines()]
    import torch

    fp32_bound = 1e-3 if torch.cuda.is_available() else 1e-4
    assert log[0]["max_abs_delta"] < (fp32_bound if precision == "no" else 2e-2)


def test_rounds_are_loadable_models(tiny_model, harness_cache):
    from transformers import AutoModelForCausalLM

    from harness.training.registry import build_rounds

    recipe = tiny_train_recipe(tiny_model, objective="sft", steps=3, checkpoint_every=100)
    rounds = build_rounds(recipe, recipe.models[0], [1, 2, 3], progress=False)
    assert [r.spec.rsplit("@", 1)[-1] for r in rounds[:2]] == ["step1", "step2"]
    assert rounds[2].path.name == "model"
    written = sorted(p.name for p in (rounds[2].path.parent / "rounds").iterdir())
    assert written == ["step-000001", "step-000002"], "the last round is model/, not a second copy"
    shas = {r.fingerprint["weights_sha256"] for r in rounds}
    assert len(shas) == 3, "every round is a different model"
    for r in rounds:
        AutoModelForCausalLM.from_pretrained(r.path)
    again = build_rounds(recipe, recipe.models[0], [1, 2, 3], progress=False)
    assert [r.path for r in again] == [r.path for r in rounds]


@pytest.mark.parametrize("recipe", ["recipes/align.yaml", "recipes/prefill.yaml", "recipes/cross-source.yaml"])
def test_validate_loads_no_model_and_generates_nothing(recipe, tmp_path):
    """`harness validate` on recipes whose data is synthesised by a model: it checks schema and
    data in seconds and leaves an empty cache (no synthesis, no anchors, no model conversion)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    cache = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-m", "harness.cli", "validate", recipe], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_CACHE=str(cache)))
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout
    assert not cache.exists() or not any(cache.iterdir()), sorted(p.name for p in cache.iterdir())


def test_synth_follows_the_recipes_engine_backend(tiny_model, tmp_path):
    """A dataset's `synth` without a backend is written by the recipe's engine: in an HF-backend
    recipe vLLM is never imported (a machine without vLLM can run it)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"""
import sys
from harness.data import load_dataset
from harness.data.base import DatasetConfig
cfg = DatasetConfig(format="demo", limit=2, synth={{"model": {str(tiny_model)!r}, "max_tokens": 4,
                    "drop_refusals": False}})
assert cfg.synth.backend is None
rows = load_dataset(cfg, backend="hf")
assert len(rows) == 2 and all(r.response for r in rows), rows
assert "vllm" not in sys.modules, "synthesis started vLLM in an hf recipe"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), HARNESS_CACHE=str(tmp_path / "cache")))
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_fp32_training_turns_tf32_off_on_cuda_and_restores_it(monkeypatch):
    """`exact_fp32_matmuls` (the trainer wraps the reference pass and every step in it when it
    trains without mixed precision): IEEE fp32 inside on CUDA, the process's setting after."""
    import torch

    from harness.training.trainer import exact_fp32_matmuls

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA branch, on any machine
    before = (matmul.fp32_precision, cudnn.fp32_precision)
    try:
        matmul.fp32_precision = cudnn.fp32_precision = "tf32"
        with exact_fp32_matmuls(True):
            assert (matmul.fp32_precision, cudnn.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, cudnn.fp32_precision) == ("tf32", "tf32")
        with exact_fp32_matmuls(False):  # bf16/fp16 autocast: left alone
            assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision, cudnn.fp32_precision = before
