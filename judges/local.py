"""Local judge transport: a judge model run through the harness engine (the recipe's backend).

The model spec resolves like any target (alias, HF folder, .gguf, hub id); the judge's
chat template is applied here and the prompt sent as token ids through
``harness.engine.make_engine``, so a judge can run on the same GPU after the target (the
runner frees the target engine before judging). The engine starts on the first batch
that misses the judge cache and is closed by :meth:`LocalTransport.close`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from harness.engine import Engine, GenRequest, Sampling, make_engine, resolve_backend
from harness.models import ResolvedModel, resolve_model
from harness.engine.base import EngineSettings
from judges.transport import Messages, Reply

log = logging.getLogger(__name__)


class LocalTransport:
    """Greedy (or sampled) chat completions from a local engine."""

    def __init__(self, spec: str, engine: EngineSettings, seed: int = 0) -> None:
        self.spec = spec
        self.settings = engine
        self.seed = seed
        self._model: ResolvedModel | None = None
        self._engine: Engine | None = None
        self._tokenizer: Any = None
        self.generated = 0  # prompts sent to the engine (for tests and logs)

    @property
    def model(self) -> ResolvedModel:
        if self._model is None:
            self._model = resolve_model(self.spec)
        return self._model

    @property
    def model_id(self) -> str:
        # the resolved backend: a judge on `auto` shares the verdict cache of the backend it ran
        return f"local:{self.model.fingerprint_id}:{resolve_backend(self.settings.backend)}:{self.settings.dtype}"

    def _encode(self, messages: Messages) -> list[int]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model.path)
        enc = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)
        return list(enc["input_ids"])

    def complete(self, conversations: Sequence[Messages], max_tokens: int, temperature: float,
                 progress: bool = False, desc: str = "judge") -> list[Reply]:
        if not conversations:
            return []
        budget = self.settings.max_model_len - max_tokens
        replies: list[Reply | None] = [None] * len(conversations)
        requests: list[tuple[int, GenRequest]] = []
        sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=self.seed)
        for i, conv in enumerate(conversations):
            ids = self._encode(conv)
            if len(ids) > budget:
                replies[i] = Reply(None, f"judge prompt is {len(ids)} tokens; engine.max_model_len "
                                         f"{self.settings.max_model_len} minus max_tokens {max_tokens} leaves {budget}")
            else:
                requests.append((i, GenRequest(tuple(ids), sampling)))
        if requests:
            if self._engine is None:
                log.info("starting local judge engine on %s", self.model.path)
                self._engine = make_engine(self.model.path, self.settings.engine_config(self.seed))
            outs = self._engine.generate([r for _, r in requests], progress=progress)
            self.generated += len(requests)
            for (i, _), comps in zip(requests, outs):
                replies[i] = Reply(comps[0].text if comps else "")
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __repr__(self) -> str:
        return f"LocalTransport(spec={self.spec!r}, backend={self.settings.backend!r})"
