"""``engine.backend: auto``: vLLM where it imports and runs on this machine's device, else the
HF backend. Decided once per process, with one log line saying which and why; everything
downstream (cache keys, the manifest, synthesis, anchors, local judges) sees the resolved name,
so a run on ``auto`` shares its caches with one that named the same backend."""

from __future__ import annotations

import functools
import logging

from harness.engine.base import AUTO

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def auto_choice() -> tuple[str, str]:
    """(backend, why) for ``auto`` on this machine."""
    from harness import hardware

    gpu = hardware.gpu_name()
    try:
        from vllm.platforms import current_platform
    except Exception as e:  # ImportError, or a vLLM build that breaks on import (wrong torch, no CUDA libs)
        return "hf", f"vllm does not import ({type(e).__name__}: {e})"
    try:
        if gpu is not None:
            if current_platform.is_cuda_alike():
                return "vllm", f"vllm imports and supports the GPU ({gpu})"
            return "hf", (f"this vLLM build runs on {current_platform.device_type or 'no device'}, "
                          f"not the GPU ({gpu}); the HF backend uses the GPU")
        if current_platform.is_cpu():
            return "vllm", f"vllm imports and supports the CPU (no GPU; {hardware.cpu_tag()})"
        return "hf", f"no GPU, and this vLLM build does not run on CPU ({current_platform.device_type or 'no device'})"
    except Exception as e:  # a platform probe that fails means vLLM cannot be trusted here
        return "hf", f"vllm's platform check failed ({type(e).__name__}: {e})"


_logged: set[str] = set()


def resolve_backend(backend: str) -> str:
    """``backend`` itself, or for ``auto`` the backend this machine runs (logged once)."""
    if backend != AUTO:
        return backend
    chosen, why = auto_choice()
    if chosen not in _logged:
        _logged.add(chosen)
        # WARNING: the CLI shows warnings only, and which engine ran is worth one line
        log.warning("engine.backend auto -> %s: %s", chosen, why)
    return chosen


def backend_record(requested: str) -> dict[str, str]:
    """What the manifest records about the choice: requested, resolved and why."""
    if requested != AUTO:
        return {"requested": requested, "resolved": requested, "why": "named by the recipe"}
    chosen, why = auto_choice()
    return {"requested": requested, "resolved": chosen, "why": why}
