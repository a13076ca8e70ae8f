"""Engine interface: token-id prompts in, completions out (vLLM's core call)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding settings. ``top_k=0`` and ``top_p=1`` mean off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


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
