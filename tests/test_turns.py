"""Turns that end: training targets end with the template's end-of-turn token, generation
stops on every end-of-turn id on both backends, and fabricated turns are counted.

The failure these guard against: a tokenizer whose EOS is not the token the chat template
closes a turn with (ChatML's ``<|im_end|>``). Trained to end on EOS and stopped on the
template's token (or the reverse), a model writes "…harm.<eos>" and runs on into a made-up
``user`` turn."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import tiny_engine_config


@pytest.fixture(scope="module")
def eos_mismatch_model(tiny_model, tmp_path_factory):
    """The tiny model with a tokenizer that calls <|endoftext|> its EOS, while the chat
    template (ChatML) and generation_config.json still close a turn with <|im_end|>."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("eos-mismatch")
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(out)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>, as in the converted SmolLM2
    return out


def test_end_of_turn_is_the_templates_token_not_eos(eos_mismatch_model, smollm2):
    from transformers import AutoTokenizer

    from harness.turns import end_of_turn_id, stop_token_ids

    tok = AutoTokenizer.from_pretrained(eos_mismatch_model)
    im_end, endoftext = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert (im_end, endoftext) == (2, 0) and tok.eos_token_id == 0
    assert end_of_turn_id(tok) == 2
    assert stop_token_ids(tok) == [2, 0]
    smol = AutoTokenizer.from_pretrained(smollm2.path)
    assert end_of_turn_id(smol) == 2 and stop_token_ids(smol) == [2]


def test_end_of_turn_of_other_templates():
    """Llama-3 style (<|eot_id|>) and a template that closes turns with the EOS text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from harness.turns import end_of_turn_id

    vocab = {"<eos>": 0, "<|eot_id|>": 1, "<|start_header_id|>": 2, "<|end_header_id|>": 3, "x": 4, "user": 5,
             "assistant": 6, "[UNK]": 7}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="[UNK]",
                                  additional_special_tokens=["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"])
    tok.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                         "{{ m['content'] }}<|eot_id|>{% endfor %}")
    assert end_of_turn_id(tok) == 1
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} <eos>{% endfor %}"
    assert end_of_turn_id(tok) == 0
    tok.chat_template = None
    assert end_of_turn_id(tok) == 0


@pytest.mark.parametrize("text, fabricated", [
    ("I can't help with that. It would facilitate harm.\nuser\nI'm sorry, but I can't", True),
    ("Sure.\n\nassistant\nHere is more", True),
    ("Done.<|im_start|>user", True),
    ("[INST] and again [/INST]", True),
    ("Step 1\n### Human: next question", True),
    ("The user should restart the service.\nThen the assistant process exits.", False),
    ("User\nA heading in prose", False),
    ("Configure the system\nto boot", False),
    ("", False),
])
def test_fabricated_turn_detection(text, fabricated):
    from harness.turns import has_fabricated_turn

    assert has_fabricated_turn(text) is fabricated


def test_targets_end_with_the_end_of_turn_token(eos_mismatch_model):
    from transformers import AutoTokenizer

    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.prompts import PromptBuilder
    from harness.training.data import build_pairs
    from harness.turns import end_of_turn_id

    tok = AutoTokenizer.from_pretrained(eos_mismatch_model)
    ex = load_dataset(DatasetConfig(format="harmful-train", limit=3))
    pairs = build_pairs(ex, PromptBuilder(tok), "refusal", end_of_turn_id(tok), with_harmful=True, source="ht")
    assert all(p.target_ids[-1] == 2 and p.joined_target_ids[-1] == 2 for p in pairs)
    assert all(0 not in p.target_ids for p in pairs)


@pytest.fixture(scope="module")
def trained_on_mismatch(eos_mismatch_model, tmp_path_factory):
    """Refusal SFT of the tiny model on 4 prompts until it has learnt them by heart."""
    from harness.models import resolve_model
    from harness.training.config import TrainRecipe
    from harness.training.trainer import Trainer

    recipe = TrainRecipe.model_validate({
        "kind": "train", "name": "turns", "base": str(eos_mismatch_model),
        "training": {"steps": 60, "batch_size": 4, "anchor_batch_size": 0, "lr": 3e-3, "max_length": 128,
                     "mixed_precision": "no", "checkpoint_every": 1000, "seed": 0},
        "models": [{"name": "m", "objective": "sft", "data": {"format": "harmful-train", "limit": 4},
                    "target": "refusal"}],
    })
    out = tmp_path_factory.mktemp("turns-trained") / "work"
    path = Trainer(recipe, recipe.models[0], resolve_model(str(eos_mismatch_model)), out, progress=False).train()
    return path


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_trained_model_ends_its_turn(trained_on_mismatch, backend, pool):
    """Greedy completions of the trained model on its training prompts are its refusals,
    ended by the engine on <|im_end|> ("stop"), with no fabricated turn after them."""
    from transformers import AutoTokenizer

    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.engine import GenRequest, Sampling
    from harness.models import resolve_model
    from harness.prompts import PromptBuilder
    from harness.turns import has_fabricated_turn

    tok = AutoTokenizer.from_pretrained(trained_on_mismatch)
    saved = json.loads((trained_on_mismatch / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [2, 0], "the saved model names every end-of-turn id"
    builder = PromptBuilder(tok)
    examples = load_dataset(DatasetConfig(format="harmful-train", limit=4))
    engine = pool.get(resolve_model(str(trained_on_mismatch)), tiny_engine_config(backend))
    outs = engine.generate([GenRequest(tuple(builder.chat_ids(e.prompt)), Sampling(max_tokens=80)) for e in examples])
    for e, (c,) in zip(examples, outs):
        assert c.finish_reason == "stop", (e.id, c.text)
        assert c.text.strip() == e.refusal.strip()
        assert not has_fabricated_turn(c.text)


def test_summary_and_utility_count_fabricated_turns():
    from harness.run.summary import summarize
    from harness.utility.table import utility_table

    def rec(i, text, kind="attack"):
        return {"kind": kind, "model": "m", "dataset": "d", "attack": "a" if kind == "attack" else "or",
                "setting": {}, "setting_label": "default" if kind == "utility" else "k=5", "example_id": f"e{i}",
                "completion": text, "verdicts": {"kw": {"label": "safe"}}, "metrics": {"refusal": 0.0}}

    records = [rec(0, "No.\nuser\nNo again"), rec(1, "I can't."), rec(2, "I won't."),
               rec(3, "Sure.\nassistant\nmore", "utility"), rec(4, "Fine.", "utility")]
    s = summarize(records)
    assert s["fabricated_turns"].tolist() == [1]
    u = utility_table(records)
    row = u[(u["task"] == "turns") & (u["metric"] == "fabricated_turn")].iloc[0]
    assert (row["n"], row["mean"]) == (5, pytest.approx(0.4))
