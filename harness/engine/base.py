"""Engine interface: token-id prompts in, completions out (vLLM's core call)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, Sequence

from pydantic import Field, field_validator

from harness.core import Sampling, StrictModel
from harness.registry import ENGINES

__all__ = ["AUTO", "Completion", "Engine", "EngineConfig", "EngineOptions", "EngineSettings", "GenRequest", "Sampling",
           "package_version"]


AUTO = "auto"  # engine.backend: chosen per machine by harness.engine.resolve_backend


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


class Engine(Protocol):
    backend: str

    def generate(self, requests: Sequence[GenRequest], progress: bool = False) -> list[list[Completion]]:
        """One list of ``sampling.n`` completions per request, in request order."""
        ...

    def close(self) -> None: ...


class EngineOptions(StrictModel):
    """What an engine is started with (written once: the recipe's ``EngineSettings`` and one
    engine's ``EngineConfig`` both extend it); ``backend`` names an entry of ``ENGINES``."""

    backend: str = Field("auto", description="an engine backend (`harness list`): auto | vllm | hf; auto: vLLM "
                                             "where it imports and runs on this device, else hf")
    dtype: str = Field("auto", description="auto: float32 on CPUs without native bf16, else the model's dtype")
    max_model_len: int = Field(2048, ge=64)
    gpu_memory_utilization: float = Field(0.4, gt=0.0, le=1.0)
    kv_cache_gib: float | None = Field(None, gt=0.0, description="KV cache size; on CPU defaults to 2 GiB")
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool | None = None
    batch_size: int = Field(16, ge=1, description="HF backend batch size (vLLM schedules its own)")
    extra: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM unchanged")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v != AUTO and v not in ENGINES.names():
            raise ValueError(f"unknown engine backend {v!r}; Input should be 'auto' or {ENGINES.choices()}")
        return v


class EngineConfig(EngineOptions):
    """One engine's settings: the options and the seed (``EngineSettings.engine_config``)."""

    seed: int = 0


class EngineSettings(EngineOptions):
    """The `engine:` section of a recipe."""

    chunk_size: int = Field(256, ge=1, description="requests generated between checkpoints to the generation cache")

    def engine_config(self, seed: int) -> EngineConfig:
        return EngineConfig(seed=seed, **self.model_dump(exclude={"chunk_size"}))


def package_version(pkg: str) -> str | None:
    """The installed version of ``pkg`` (None when it is not installed)."""
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None
