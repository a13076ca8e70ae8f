"""Token-exact prompts: the target's own chat template, edited at the token level.

An attack may put a suffix at the end of the user turn, switch the system prompt on or off,
drop the chat template (raw text), and prefill the start of the assistant turn. The harness
never lets the template or a re-tokenisation move those boundaries: a k-token prefill is
exactly k tokens of the target's tokenizer, and a suffix is exactly the ids an optimiser chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

from harness.core import BuiltPrompt

__all__ = ["BuiltPrompt", "PromptBuilder", "Segments", "SystemPrompt"]

# "default": whatever the recipe / template gives; "none": no system prompt; any other text: that text.
SystemPrompt = Union[Literal["default", "none"], str]
_PLACEHOLDER = "\ue000HARNESS_SUFFIX\ue000"


@dataclass(frozen=True)
class Segments:
    """A chat prompt split where a user-turn suffix goes: ``before + suffix + after``.
    ``before`` ends with the user's text (and the separator); ``after`` closes the user turn
    and opens the assistant's."""

    before: tuple[int, ...]
    after: tuple[int, ...]


class PromptBuilder:
    def __init__(self, tokenizer: Any, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self._drops_default: bool | None = None

    # -- messages ------------------------------------------------------------------------
    def messages(self, user: str, system: SystemPrompt = "default") -> list[dict[str, str]]:
        if system == "default":
            text = self.system_prompt
        elif system == "none":
            text = "" if self._template_injects_system() else None
        else:
            text = system
        msgs = [{"role": "system", "content": text}] if text is not None and (text or system == "none") else []
        return msgs + [{"role": "user", "content": user}]

    def _template_injects_system(self) -> bool:
        """Whether the template adds a default system prompt when none is given (SmolLM2 and
        Qwen do). Then "no system prompt" can only be an empty system turn; otherwise it is
        the plain user turn. Decided by which rendering is shorter."""
        if self._drops_default is None:
            bare = self._render([{"role": "user", "content": "x"}])
            empty = self._render([{"role": "system", "content": ""}, {"role": "user", "content": "x"}])
            self._drops_default = len(empty) < len(bare)
        return self._drops_default

    def _render(self, msgs: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    # -- ids -----------------------------------------------------------------------------
    def chat_ids(self, user: str, system: SystemPrompt = "default") -> list[int]:
        """Template ids up to and including the assistant header."""
        enc = self.tokenizer.apply_chat_template(
            self.messages(user, system), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(enc["input_ids"])

    def raw_ids(self, user: str) -> list[int]:
        """No chat template: the prompt text as it is, after the tokenizer's BOS if it has one."""
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None and getattr(self.tokenizer, "add_bos_token", False) else []) + self.encode(user)

    def segments(self, user: str, separator: str = " ", system: SystemPrompt = "default") -> Segments:
        """The template split at the end of the user's text (after ``separator``), for a suffix
        inserted as token ids. Each side is tokenized on its own, as GCG implementations do."""
        text = self._render(self.messages(user + separator + _PLACEHOLDER, system))
        if text.count(_PLACEHOLDER) != 1:
            raise ValueError("the chat template altered the user turn; cannot place a suffix at the token level")
        before, after = text.split(_PLACEHOLDER)
        return Segments(tuple(self.encode(before)), tuple(self.encode(after)))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def build(self, user: str, prefill_ids: list[int] | tuple[int, ...] = (), *,
              suffix_ids: list[int] | tuple[int, ...] = (), separator: str = " ",
              system: SystemPrompt = "default", chat: bool = True) -> BuiltPrompt:
        """The prompt ids: template (or raw text) with ``suffix_ids`` ending the user turn and
        ``prefill_ids`` opening the assistant turn."""
        prefill_ids = tuple(prefill_ids)
        if not chat:
            if suffix_ids:
                head: tuple[int, ...] = tuple(self.raw_ids(user + separator)) + tuple(suffix_ids)
            else:
                head = tuple(self.raw_ids(user))
        elif suffix_ids:
            seg = self.segments(user, separator, system)
            head = seg.before + tuple(suffix_ids) + seg.after
        else:
            head = tuple(self.chat_ids(user, system))
        return BuiltPrompt(prompt_ids=head + prefill_ids, prefill_ids=prefill_ids,
                           prefill_text=self.decode(prefill_ids) if prefill_ids else "")
