"""Where an assistant turn ends: the token training targets end with, the ids generation
stops on, and a check for completions that run on into a made-up next turn.

A tokenizer's ``eos_token`` is not always the token its chat template closes a turn with
(ChatML models close turns with ``<|im_end|>``; a converted or re-saved tokenizer may call
``<|endoftext|>`` its EOS). A model trained to end on one and stopped on the other never
ends its turn: it writes the closing token, then the next ``user`` header, then an answer to
a question nobody asked. So targets end with the template's own end-of-turn token, and
generation stops on every id any of template, tokenizer or generation config names.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

_PLACEHOLDER = "\ue001HARNESS_TURN\ue001"


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, t in decoder.items() if getattr(t, "special", False))
    return ids


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message (ChatML:
    ``<|im_end|>``, Llama-3: ``<|eot_id|>``, Llama-2: ``</s>``); the tokenizer's EOS when the
    tokenizer has no chat template or the template closes the turn with plain text."""
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PLACEHOLDER}]
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if _PLACEHOLDER in text:
            special = _special_ids(tokenizer)
            after = tokenizer.encode(text.split(_PLACEHOLDER, 1)[1], add_special_tokens=False)
            for i in after:
                if i in special:
                    return int(i)
    return tokenizer.eos_token_id


def _as_list(ids: Any) -> list[int]:
    if ids is None:
        return []
    return [int(i) for i in ids] if isinstance(ids, (list, tuple)) else [int(ids)]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every id that ends a turn, in order: the template's end of turn, the tokenizer's EOS,
    then the generation config's ``eos_token_id`` (an int or a list)."""
    out: list[int] = []
    for i in [end_of_turn_id(tokenizer), *_as_list(tokenizer.eos_token_id),
              *_as_list(getattr(generation_config, "eos_token_id", None))]:
        if i is not None and i not in out:
            out.append(i)
    return out


def load_stop_token_ids(model_path: Any, tokenizer: Any) -> list[int]:
    """``stop_token_ids`` for a model folder (its generation_config.json is optional)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        gen = None
    return stop_token_ids(tokenizer, gen)


# A completion decoded without special tokens that runs past its turn shows the next turn's
# header as text: ChatML / Llama-3 leave a line holding just the role name ("…harm.\nuser\nI'm
# sorry…"); other templates leave their markers. Judge-independent, like recovery_rate.
FABRICATED_TURN = re.compile(
    r"(?:^|\n)[ \t]*(?:user|assistant|system)[ \t]*(?:\n|$)"
    r"|<\|(?:im_start|im_end|eot_id|start_header_id|end_header_id|user|assistant|endoftext)\|>"
    r"|\[/?INST\]|<start_of_turn>|<end_of_turn>"
    r"|(?:^|\n)#{2,3} ?(?:Human|User|Instruction|Assistant|Response):",
)  # role lines are matched in lower case only: ChatML writes them so, and "User" heads prose


def has_fabricated_turn(text: str | None) -> bool:
    """True when a completion contains a chat-turn marker: it did not end its turn."""
    return bool(text) and FABRICATED_TURN.search(text) is not None


def count_fabricated(texts: Iterable[str | None]) -> int:
    return sum(has_fabricated_turn(t) for t in texts)
