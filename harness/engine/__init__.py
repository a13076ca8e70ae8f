"""Generation engines: vLLM and HF transformers (reference), plug-ins named in
``harness.registry.ENGINES``; ``auto`` (the default) picks one per machine (``harness.engine.auto``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.core import content_hash
from harness.engine.auto import backend_record, resolve_backend
from harness.engine.base import Completion, Engine, EngineConfig, EngineSettings, GenRequest, Sampling, package_version
from harness.registry import ENGINES

_DTYPE_NAMES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def _model_dtype(model_path: Path) -> str | None:
    try:
        cfg = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = cfg.get("torch_dtype") or cfg.get("dtype")
    return _DTYPE_NAMES.get(value, value) if isinstance(value, str) else None


def resolve_dtype(dtype: str, model_path: Path) -> str:
    """``auto`` made explicit, so the cache key names what actually ran:
    CPU: bfloat16 where the CPU has native bf16 (AVX512-BF16/AMX), else float32 (bf16 is
    emulated, and several times slower, on AVX2-only CPUs); GPU: the model's bf16/fp16,
    and bf16 (fp16 on GPUs without bf16) for fp32 checkpoints."""
    dtype = _DTYPE_NAMES.get(dtype, dtype)
    if dtype != "auto":
        return dtype
    from harness import hardware

    if hardware.gpu_name() is None:
        return "bfloat16" if hardware.cpu_native_bf16() else "float32"
    native = _model_dtype(model_path)
    if native in ("bfloat16", "float16"):
        return native
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_config(config: EngineConfig, model_path: Path) -> EngineConfig:
    """``auto`` settings made explicit for this machine: the backend, the dtype, and eager mode
    on CPUs (vLLM's torch.compile costs minutes per engine start there for a few percent of speed)."""
    from harness import hardware

    backend = resolve_backend(config.backend)
    eager = config.enforce_eager
    if eager is None and ENGINES.get(backend).eager_on_cpu and hardware.gpu_name() is None:
        eager = True
    return config.model_copy(update={"backend": backend, "dtype": resolve_dtype(config.dtype, model_path),
                                     "enforce_eager": eager})


def engine_descriptor(config: EngineConfig) -> dict[str, Any]:
    """Everything about the engine that can change a completion (config resolved first):
    backend, dtype, ``extra`` (quantization, kv_cache_dtype…), parallelism, package versions,
    and the device, then what the backend adds (``describe``). Not: KV cache size, chunking, eager
    mode or batch scheduling of vLLM."""
    from harness import hardware

    backend = resolve_backend(config.backend)  # the resolved name: `auto` shares the caches of what it ran
    d: dict[str, Any] = {"backend": backend, "dtype": config.dtype,
                         "tensor_parallel_size": config.tensor_parallel_size, "device": hardware.device_tag(),
                         "torch": package_version("torch"), "transformers": package_version("transformers"),
                         # 2: stops on the template's end of turn as well as EOS (harness.turns)
                         "stop_rule": 2}
    d.update(ENGINES.get(backend).describe(config))
    return d


def engine_hash(config: EngineConfig) -> str:
    return content_hash(engine_descriptor(config))


def make_engine(model_path: Path, config: EngineConfig) -> Engine:
    """Start an engine of ``config.backend`` on an HF model folder (one per data-parallel rank)."""
    config = resolve_config(config, model_path)
    if config.data_parallel_size > 1:
        from harness.engine.data_parallel import DataParallelEngine

        return DataParallelEngine(model_path, config)
    return ENGINES.get(config.backend)(model_path, config)


__all__ = ["backend_record", "resolve_backend", "Completion", "Engine", "EngineConfig", "EngineSettings", "GenRequest", "Sampling",
           "engine_descriptor", "engine_hash", "make_engine", "resolve_config", "resolve_dtype"]
