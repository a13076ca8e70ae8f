"""Engine interface: token-id prompts in, completions out (vLLM's core call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

from pydantic import Field

from harness.core import Sampling, StrictModel

__all__ = ["Completion", "Engine", "EngineConfig", "EngineSettings", "GenRequest", "Sampling"]


@dataclass(frozen=True)
class GenRequest:
    prompt_ids: tuple[int, ...]
    sampling: Sampling


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" | "length"

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": list(self.token_ids), "finish_reason": self.finish_reason}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Completion":
        return cls(d["text"], tuple(d["token_ids"]), d["finish_reason"])


@dataclass
class EngineConfig:
    backend: str = "vllm"  # vllm | hf
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.4
    kv_cache_gib: float | None = None  # CPU: explicit KV cache size (None: 2 GiB on CPU)
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    enforce_eager: bool | None = None
    batch_size: int = 16  # HF backend batch; vLLM schedules its own
    extra: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as-is


class Engine(Protocol):
    backend: str

    def generate(self, requests: Sequence[GenRequest], progress: bool = False) -> list[list[Completion]]:
        """One list of ``sampling.n`` completions per request, in request order."""
        ...

    def close(self) -> None: ...


class EngineSettings(StrictModel):
    """The `engine:` section of a recipe."""

    backend: Literal["vllm", "hf"] = "vllm"
    dtype: str = Field("auto", description="auto: float32 on CPUs without native bf16, else the model's dtype")
    max_model_len: int = Field(2048, ge=64)
    gpu_memory_utilization: float = Field(0.4, gt=0.0, le=1.0)
    kv_cache_gib: float | None = Field(None, gt=0.0, description="KV cache size; on CPU defaults to 2 GiB")
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool | None = None
    batch_size: int = Field(16, ge=1, description="HF backend batch size")
    chunk_size: int = Field(256, ge=1, description="requests generated between checkpoints to the generation cache")
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM unchanged")

    def engine_config(self, seed: int) -> EngineConfig:
        return EngineConfig(seed=seed, **self.model_dump(exclude={"chunk_size"}))
