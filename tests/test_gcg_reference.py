"""GCG's ``reference: nanogcg`` mode against worked examples from the reference code: nanoGCG's
mellowmax of the negative target logits (``compute_candidates_loss``), llm-attacks' per-prompt
gradient normalisation (``token_gradients`` returns ``grad / grad.norm(dim=-1)``, summed over
prompts, normalised again per model) and nanoGCG's early stop (off by default; the flag is set
when any candidate of the batch argmax-matches the target and checked after the step).

Expected values are worked by hand in each test's docstring, or come from plain forward passes
written here (no code of ``attacks.gcg``)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import attacks.gcg_optim as gcg
from attacks.gcg import GCGAttack
from attacks.gcg_optim import GCGConfig, combine_gradients
from attacks.gcg_problem import Problem, target_loss
from harness.core import content_hash
from harness.recipes import load_recipe

from tests.test_gcg import INIT, PROMPT, model, seg, tok  # noqa: F401  (shared fixtures)

TARGET = "Sure, here is a tutorial"
NEW_KEYS = {"reference", "mellowmax_on", "grad_norm", "early_stop_on", "source_model"}  # unhashed while unset


# --------------------------------------------------------------------------- the config


def test_reference_mode_fixes_three_semantics_and_turns_early_stop_off_by_default():
    a = GCGAttack(reference="nanogcg")
    assert (a.mellowmax_on, a.grad_norm, a.early_stop_on, a.early_stop) == ("neg_logits", "prompt", "any", False)
    assert GCGAttack(reference="nanogcg", early_stop=True, num_steps=20).early_stop  # nanoGCG's config allows it
    for key, value in [("mellowmax_on", "ce"), ("grad_norm", "model"), ("early_stop_on", "best")]:
        with pytest.raises(ValueError, match=f"reference: nanogcg fixes {key}"):
            GCGAttack(reference="nanogcg", **{key: value})
    GCGAttack(reference="nanogcg", grad_norm="prompt")  # the fixed value itself is fine
    with pytest.raises(ValueError, match="not a GCG reference mode"):
        GCGAttack(reference="llm_attacks")
    cfg = a.gcg_config(3)  # the optimiser gets the mode too
    assert (cfg.reference, cfg.mellowmax_on, cfg.grad_norm, cfg.early_stop_on, cfg.early_stop, cfg.seed) == \
        ("nanogcg", "neg_logits", "prompt", "any", False, 3)


def test_hashes_record_the_mode_and_stay_unchanged_without_it():
    plain = GCGAttack()
    assert plain.config_hash() == content_hash(plain.model_dump(mode="json", exclude={"name"} | NEW_KEYS))
    assert not NEW_KEYS & set(plain.algorithm())  # artefact keys of suffixes cached before the mode
    ref = GCGAttack(reference="nanogcg", early_stop=True)
    assert ref.algorithm()["reference"] == "nanogcg" and ref.algorithm()["mellowmax_on"] == "neg_logits"
    assert ref.config_hash() != GCGAttack(early_stop=True).config_hash()
    assert ref.model_dump(mode="json")["reference"] == "nanogcg"  # what the manifest's attacks entry holds
    recipe = load_recipe("recipes/gcg.yaml", ["attacks.0.reference=nanogcg"])  # the override the recipe documents
    attack = recipe.attacks[0]
    assert (attack.reference, attack.early_stop_on, attack.early_stop) == ("nanogcg", "any", True)  # set there


# --------------------------------------------------------------------------- mellowmax of -logits


def test_mellowmax_of_negative_target_logits_worked_example(model, seg):
    """Logits over a 3-token vocabulary at T = 2 target positions, target ids (1, 2):
        t0: (0, 0, 0)      target logit 0      CE = ln 3
        t1: (0, 0, ln 3)   target logit ln 3   CE = −ln(3 / (1 + 1 + 3)) = ln(5/3)
    nanoGCG, α = 1: mm(−z) = ln((e^0 + e^−ln3) / 2) = ln((1 + 1/3) / 2) = ln(2/3)
             α = 2: ½·ln((e^0 + e^−2ln3) / 2) = ½·ln((1 + 1/9) / 2) = ½·ln(5/9)
    ours (CE), α = 1: ln((3 + 5/3) / 2) = ln(7/3); no mellowmax: (ln 3 + ln(5/3)) / 2 = ½·ln 5.
    A second row with every logit + 1: the logits move, the CEs do not: nanoGCG's loss is
    ln(2/3) − 1 there (−logits are not shift-invariant), ours stays ln(7/3)."""
    row = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(3)]])
    logits = torch.stack([row, row + 1])  # (B = 2, T = 2, V = 3)
    target = torch.tensor([1, 2])
    assert target_loss(logits, target, 1.0, "neg_logits").tolist() == pytest.approx(
        [math.log(2 / 3), math.log(2 / 3) - 1], abs=1e-6)
    assert target_loss(logits, target, 2.0, "neg_logits").tolist() == pytest.approx(
        [0.5 * math.log(5 / 9), 0.5 * math.log(5 / 9) - 1], abs=1e-6)
    assert target_loss(logits, target, 1.0).tolist() == pytest.approx([math.log(7 / 3)] * 2, abs=1e-6)
    assert target_loss(logits, target).tolist() == pytest.approx([0.5 * math.log(5)] * 2, abs=1e-6)
    assert target_loss(logits, target, None, "neg_logits").tolist() == pytest.approx([0.5 * math.log(5)] * 2,
                                                                                     abs=1e-6)  # off: mean CE
    # the mode reaches a problem's loss through the config
    problem = Problem(model, seg, [1, 2], GCGAttack(reference="nanogcg", use_mellowmax=True).gcg_config(0))
    assert problem.loss_of(logits).tolist() == pytest.approx([math.log(2 / 3), math.log(2 / 3) - 1], abs=1e-6)
    ours = Problem(model, seg, [1, 2], GCGAttack(use_mellowmax=True).gcg_config(0))
    assert ours.loss_of(logits).tolist() == pytest.approx([math.log(7 / 3)] * 2, abs=1e-6)


def test_run_reports_the_nanogcg_loss_of_a_plain_forward_pass(model, tok, seg):
    """init_loss under the mode is mellowmax (α = 2) of the negative target logits of one plain
    forward pass over the whole sequence."""
    config = GCGConfig(reference="nanogcg", use_mellowmax=True, mellowmax_alpha=2.0, num_steps=1, search_width=8,
                       topk=4, optim_str_init=INIT, seed=0)
    res = gcg.run(model, tok, seg, TARGET, config)
    target = tok.encode(TARGET, add_special_tokens=False)
    seq = list(seg.before) + tok.encode(INIT, add_special_tokens=False) + list(seg.after) + target
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq])).logits[0].double()
    t = len(target)
    z = logits[-t - 1:-1].gather(1, torch.tensor(target).unsqueeze(1)).squeeze(1)
    expect = float((torch.logsumexp(-2.0 * z, 0) - math.log(t)) / 2.0)
    assert res.init_loss == pytest.approx(expect, rel=1e-4)
    ce = F.cross_entropy(logits[-t - 1:-1], torch.tensor(target), reduction="none")
    assert abs(expect - float((torch.logsumexp(2.0 * ce, 0) - math.log(t)) / 2.0)) > 1e-2  # not ours


# --------------------------------------------------------------------------- the universal gradient


GRAD_A = torch.tensor([[-8.0, -6.0, 0.0]])  # one suffix position, |V| = 3; row norm 10
GRAD_B = torch.tensor([[0.0, -0.8, 0.6]])  # row norm 1


def test_per_prompt_gradient_normalisation_worked_example():
    """Two prompts, one model, gradients A = (−8, −6, 0) (norm 10) and B = (0, −0.8, 0.6) (norm 1):
    ours: A + B = (−8, −6.8, 0.6), / √(64 + 46.24 + 0.36) = √110.6; most negative: token 0.
    llm-attacks: A/10 + B = (−0.8, −0.6, 0) + (0, −0.8, 0.6) = (−0.8, −1.4, 0.6), normalised per
    model: / √(0.64 + 1.96 + 0.36) = √2.96; most negative: token 1 (B is no longer drowned)."""
    grads = torch.stack([GRAD_A, GRAD_B])
    ours = combine_gradients(grads, n_models=1)
    theirs = combine_gradients(grads, n_models=1, per_prompt=True)
    assert ours[0].tolist() == pytest.approx([v / math.sqrt(110.6) for v in (-8, -6.8, 0.6)], abs=1e-6)
    assert theirs[0].tolist() == pytest.approx([v / math.sqrt(2.96) for v in (-0.8, -1.4, 0.6)], abs=1e-6)
    assert (int(ours[0].argmin()), int(theirs[0].argmin())) == (0, 1)
    # two models with one prompt each: both rules normalise each pair once, the sum of unit rows
    two = combine_gradients(grads, n_models=2)
    assert two[0].tolist() == pytest.approx([-0.8, -1.4, 0.6], abs=1e-6)
    assert combine_gradients(grads, n_models=2, per_prompt=True)[0].tolist() == pytest.approx(two[0].tolist(), abs=1e-6)


def test_objective_combines_per_prompt_under_the_mode(monkeypatch):
    """The optimiser's gradient step uses the mode's rule: the same two per-prompt gradients as
    above, returned by a stand-in ``token_gradient``."""
    by_problem = {"a": GRAD_A, "b": GRAD_B}
    monkeypatch.setattr(gcg, "token_gradient", lambda p, ids: (by_problem[p.name], 1.0, False, None))
    problems = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    ids = torch.tensor([5])
    ours, _, _ = gcg._Objective(problems, 1, GCGConfig()).gradient(ids)
    ref, loss, _ = gcg._Objective(problems, 1, GCGConfig(reference="nanogcg")).gradient(ids)
    assert (int(ours[0].argmin()), int(ref[0].argmin()), loss) == (0, 1, 1.0)


# --------------------------------------------------------------------------- early stop


class _FakeObjective:
    def __init__(self, losses, matches):
        self.l, self.m = torch.tensor(losses), torch.tensor(matches)

    def losses(self, cands):
        return self.l, self.m


def test_step_reports_a_match_of_a_non_best_candidate():
    """Three candidates, losses (0.5, 0.2, 0.9), only the third (the worst) matches: the best is
    the second, unmatched; any-candidate match is true."""
    cands = torch.tensor([[1, 1], [2, 2], [3, 3]])
    loss, ids, best_match, any_match, n = gcg._evaluate(_FakeObjective([0.5, 0.2, 0.9], [False, False, True]), None,
                                                       cands, GCGConfig(), torch.Generator())
    assert (loss, ids.tolist(), best_match, any_match, n) == (pytest.approx(0.2), [2, 2], False, True, 3)


def worst_candidate_matches(monkeypatch):
    """Candidate losses as computed, but the greedy-match flag set on the highest-loss candidate
    only (never the step's best when the step has two or more distinct candidates)."""
    real = gcg.candidate_losses

    def patched(problem, cands, *args, **kw):
        losses, _ = real(problem, cands, *args, **kw)
        match = torch.zeros_like(losses, dtype=torch.bool)
        match[int(losses.argmax())] = True
        return losses, match

    monkeypatch.setattr(gcg, "candidate_losses", patched)


def test_early_stop_fires_on_a_non_best_candidate_only_under_the_mode(model, tok, seg, monkeypatch):
    """With a match on the worst candidate of every step: nanoGCG's rule (early_stop on) stops
    after step 1, keeping the step's best (lowest-loss, unmatched) suffix; our rule never fires
    (4 steps); the mode's default (early stop off) runs all 4 steps too."""
    worst_candidate_matches(monkeypatch)
    base = dict(num_steps=4, search_width=16, topk=8, optim_str_init=INIT, seed=0)
    ref = gcg.run(model, tok, seg, TARGET, GCGConfig(reference="nanogcg", early_stop=True, **base))
    assert (ref.steps, ref.stop_reason) == (1, "early_stop")
    assert ref.best_loss == pytest.approx(ref.losses[0]) and ref.best_loss < ref.init_loss
    ours = gcg.run(model, tok, seg, TARGET, GCGConfig(early_stop=True, **base))
    assert (ours.steps, ours.stop_reason) == (4, "num_steps")
    off = gcg.run(model, tok, seg, TARGET, GCGConfig(reference="nanogcg", **base))
    assert (off.steps, off.stop_reason) == (4, "num_steps")
    assert ours.losses[0] == pytest.approx(ref.losses[0])  # same first step: only the stop rule differs


def test_a_matching_init_stops_after_one_step_under_the_mode(model, tok, seg, monkeypatch):
    """nanoGCG sets its flag while scoring the initial buffer and checks it only after a step:
    an init that already gives the target runs one step (ours: none), even when no candidate of
    that step matches (candidate matches forced off here; the init's comes from its gradient pass)."""
    real = gcg.candidate_losses

    def no_match(*args, **kw):
        losses, _ = real(*args, **kw)
        return losses, torch.zeros_like(losses, dtype=torch.bool)

    monkeypatch.setattr(gcg, "candidate_losses", no_match)
    suffix = tok.encode(INIT, add_special_tokens=False)
    ids = list(seg.before) + suffix + list(seg.after)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    k = max(k for k in range(1, len(out) + 1) if tok.encode(tok.decode(out[:k]), add_special_tokens=False) == out[:k])
    text = tok.decode(out[:k])
    base = dict(num_steps=5, search_width=16, topk=8, optim_str_init=INIT, early_stop=True)
    ref = gcg.run(model, tok, seg, text, GCGConfig(reference="nanogcg", **base))
    assert (ref.steps, ref.stop_reason) == (1, "early_stop")
    ours = gcg.run(model, tok, seg, text, GCGConfig(**base))
    assert (ours.steps, ours.stop_reason) == (0, "early_stop")
