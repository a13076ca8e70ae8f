"""Generation engines: vLLM (default) and HF transformers (reference)."""

from __future__ import annotations

from pathlib import Path

from harness.engine.base import Completion, Engine, EngineConfig, GenRequest, Sampling
from harness.errors import RecipeError

BACKENDS = ("vllm", "hf")


def make_engine(model_path: Path, config: EngineConfig) -> Engine:
    """Start an engine of ``config.backend`` on an HF model folder (one per data-parallel rank)."""
    if config.data_parallel_size > 1:
        from harness.engine.data_parallel import DataParallelEngine

        return DataParallelEngine(model_path, config)
    if config.backend == "vllm":
        from harness.engine.vllm_backend import VLLMEngine

        return VLLMEngine(model_path, config)
    if config.backend == "hf":
        from harness.engine.hf_backend import HFEngine

        return HFEngine(model_path, config)
    raise RecipeError(f"engine.backend: unknown backend {config.backend!r}; allowed: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Completion", "Engine", "EngineConfig", "GenRequest", "Sampling", "make_engine"]
