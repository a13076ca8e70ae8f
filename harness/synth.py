"""Generate responses with a model through the engine (anchors, harmful h, `harness data synth`)."""

from __future__ import annotations

from typing import Sequence

from harness.engine import GenRequest, Sampling, make_engine
from harness.models import ResolvedModel
from harness.prompts import PromptBuilder


def generate_responses(model: ResolvedModel, prompts: Sequence[str], engine_settings, max_tokens: int = 160,
                       seed: int = 0, system_prompt: str | None = None,
                       progress: bool = True) -> list[tuple[str, bool]]:
    """Greedy responses of ``model`` to ``prompts`` (chat template applied), in order, each
    with whether it finished (False: cut off at ``max_tokens``)."""
    from transformers import AutoTokenizer

    builder = PromptBuilder(AutoTokenizer.from_pretrained(model.path), system_prompt)
    sampling = Sampling(max_tokens=max_tokens, seed=seed)
    engine = make_engine(model.path, engine_settings.engine_config(seed))
    try:
        outs = engine.generate([GenRequest(builder.build(p).prompt_ids, sampling) for p in prompts], progress=progress)
    finally:
        engine.close()
    return [(o[0].text.strip(), o[0].finish_reason == "stop") for o in outs]
