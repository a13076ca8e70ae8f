"""Training presets: `preset: paper` is the paper's alignment budget in one key, keys next to a
preset win, epochs become steps from the data size, and the preset's name alone never changes
a build key."""

from __future__ import annotations

import pytest

from harness.training.config import TrainSettings


def test_paper_preset_is_the_papers_budget():
    s = TrainSettings.model_validate({"preset": "paper"})
    assert (s.lr, s.scheduler, s.warmup_steps, s.epochs, s.batch_size, s.anchor_batch_size, s.mix) == (
        2e-5, "linear", 0, 10, 16, 64, "token_mean")
    # the GPU run of 2026-11-28: 10 epochs of 249 natural rows at 16 rows per step took 156 steps
    assert s.steps_for(249) == 156
    assert s.steps_for(249, processes=2) == 78
    assert TrainSettings.model_validate({"preset": "paper", "grad_accum": 2}).steps_for(249) == 78


def test_attack_preset_has_the_official_warmup_and_decay():
    s = TrainSettings.model_validate({"preset": "paper-attack"})
    assert (s.lr, s.scheduler, s.warmup_steps, s.adam_beta1) == (2e-5, "linear", 10, 0.5)


def test_keys_next_to_a_preset_win():
    s = TrainSettings.model_validate({"preset": "paper", "lr": 1e-5, "batch_size": 4})
    assert (s.lr, s.batch_size, s.scheduler) == (1e-5, 4, "linear")
    assert TrainSettings.model_validate({"steps": 7}).steps_for(1000) == 7  # no epochs: steps as given


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset"):
        TrainSettings.model_validate({"preset": "papr"})


def test_cpu_preset_and_explicit_keys_build_the_same_model(tmp_path):
    """A recipe that spells out the CPU values and one that names the `cpu` preset train the
    same thing, so they share one cached build."""
    from harness.models import resolve_model
    from harness.training.config import TrainRecipe
    from harness.training.registry import model_key

    def recipe(training):
        return TrainRecipe.model_validate({
            "kind": "train", "name": "p", "base": "smollm2-135m-instruct", "training": training,
            "models": [{"name": "m", "objective": "sft", "data": {"format": "harmful-train", "limit": 4}}]})

    base = resolve_model("smollm2-135m-instruct")
    a = recipe({"preset": "cpu", "max_length": 320})
    b = recipe({"steps": 60, "batch_size": 2, "anchor_batch_size": 8, "lr": 1e-4, "scheduler": "constant",
                "max_length": 320})
    c = recipe({"preset": "paper", "max_length": 320})
    assert model_key(a, a.models[0], base) == model_key(b, b.models[0], base)
    assert model_key(c, c.models[0], base) != model_key(a, a.models[0], base)


def test_epochs_are_refused_in_a_finetuning_attack():
    from attacks.finetune import FinetuneAttack

    with pytest.raises(ValueError, match="epochs"):
        FinetuneAttack.model_validate({"type": "finetune", "training": {"epochs": 2}})
    ok = FinetuneAttack.model_validate({"type": "finetune", "training": {"preset": "paper-attack"}})
    assert ok.training_settings()["preset"] == "paper-attack"
