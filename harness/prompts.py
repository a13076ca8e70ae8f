"""Token-exact prompts: the target's own chat template, then the assistant prefill as ids.

The harness never lets the template or a re-tokenisation move the prefill boundary:
a k-token prefill is exactly k tokens of the target model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BuiltPrompt:
    prompt_ids: tuple[int, ...]  # chat prefix followed by the prefill ids
    prefill_ids: tuple[int, ...]
    prefill_text: str


class PromptBuilder:
    def __init__(self, tokenizer: Any, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    def messages(self, user: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": user}]

    def chat_ids(self, user: str) -> list[int]:
        """Template ids up to and including the assistant header."""
        enc = self.tokenizer.apply_chat_template(
            self.messages(user), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(enc["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def build(self, user: str, prefill_ids: list[int] | tuple[int, ...] = ()) -> BuiltPrompt:
        prefill_ids = tuple(prefill_ids)
        return BuiltPrompt(
            prompt_ids=tuple(self.chat_ids(user)) + prefill_ids,
            prefill_ids=prefill_ids,
            prefill_text=self.decode(prefill_ids) if prefill_ids else "",
        )
