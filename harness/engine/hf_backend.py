"""HF transformers reference backend: batched ``generate`` with left padding.

Greedy requests are batched. A sampled request is generated on its own, seeded with its own
seed, so its completions depend on that request alone (as in vLLM), never on which other
prompts shared its batch."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Any, Sequence

from harness.engine.base import Completion, EngineConfig, GenRequest, Sampling

_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16"}


class HFEngine:
    """HF transformers reference backend: batched generate with left padding."""

    backend = "hf"
    eager_on_cpu = False

    @staticmethod
    def describe(config: EngineConfig) -> dict[str, Any]:
        """What of ``config`` can change a completion, beyond the shared part (``engine_descriptor``)."""
        return {"batch_size": config.batch_size}  # padding in a batch can flip low-precision greedy ties

    def __init__(self, model_path: Path, config: EngineConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        dtype = _DTYPES.get(config.dtype, config.dtype)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype, dtype))
        self.model.to(device).eval()
        self.device = device
        from harness.turns import load_stop_token_ids

        # the template's end of turn, the tokenizer's EOS and the generation config's, together
        self.stop_ids = load_stop_token_ids(model_path, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0] if self.stop_ids else 0

    def _batch(self, prompts: list[tuple[int, ...]], s: Sampling) -> list[list[Completion]]:
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding keeps the last prompt token aligned
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        kwargs = dict(max_new_tokens=s.max_tokens, num_return_sequences=s.n, pad_token_id=self.pad_id,
                      eos_token_id=self.stop_ids or None)
        if s.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)  # 0 = off; None would fall back to top_k=50
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self.tokenizer)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kwargs)
        new = out[:, width:].tolist()
        eos = set(self.stop_ids)
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            comps = []
            for toks in new[i * s.n:(i + 1) * s.n]:
                cut, reason = len(toks), "length"
                for j, t in enumerate(toks):
                    if t in eos:
                        cut, reason = j, "stop"
                        break
                toks = toks[:cut]
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                if s.stop:
                    hits = [text.find(x) for x in s.stop if x in text]
                    if hits:
                        text, reason = text[: min(hits)], "stop"
                comps.append(Completion(text, tuple(toks), reason))
            results.append(comps)
        return results

    def generate(self, requests: Sequence[GenRequest], progress: bool = False) -> list[list[Completion]]:
        from tqdm.auto import tqdm

        order = sorted(range(len(requests)), key=lambda i: (repr(requests[i].sampling), len(requests[i].prompt_ids)))
        out: list[list[Completion] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="hf generate", disable=not progress)
        for s, group in groupby(order, key=lambda i: requests[i].sampling):
            idx = list(group)
            size = self.config.batch_size if s.greedy else 1
            for start in range(0, len(idx), size):
                chunk = idx[start:start + size]
                for i, comps in zip(chunk, self._batch([requests[i].prompt_ids for i in chunk], s)):
                    out[i] = comps
                bar.update(len(chunk))
        bar.close()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        del self.model
