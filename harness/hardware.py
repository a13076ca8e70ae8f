"""What machine this is: CPU features and GPU, recorded with every run and benchmark figure."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

# Flags that change speed or numerics of the CPU kernels torch and vLLM pick.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    if model:
                        break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": sorted(f for f in CPU_FLAGS if f in flags),
            "arch": platform.machine()}


def cpu_native_bf16() -> bool:
    """bf16 matrix work in hardware (AVX512-BF16 or AMX); without it torch emulates bf16,
    several times slower than fp32."""
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_tag() -> str:
    """Short label of the CPU's vector ISA, for cache keys and reports: amx | avx512_bf16 | avx512 | avx2."""
    flags = set(cpu_info()["flags"])
    for tag, need in (("amx", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if need in flags:
            return tag
    return platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # no torch, or a broken CUDA set-up: treat as CPU
        return None
    return None


def device_tag() -> str:
    """``cuda:<GPU name>`` or ``cpu:<ISA>``: where generation runs, for cache keys."""
    gpu = gpu_name()
    return f"cuda:{gpu}" if gpu else f"cpu:{cpu_tag()}"


def describe() -> dict[str, Any]:
    return {"cpu": cpu_info(), "gpu": gpu_name(), "device": device_tag()}
