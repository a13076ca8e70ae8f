"""Training data: safety-recovery triples (x, h, r), utility anchors, and batches.

Every micro-batch is a pure function of (seed, step, micro-step): examples are drawn
from a per-epoch permutation and the recovery depths k from a generator seeded by the
step, so a run resumed from a checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from harness.data import Example
from harness.errors import DataError
from harness.prompts import PromptBuilder
from harness.training.losses import IGNORE, sample_recovery_depth

if TYPE_CHECKING:
    from harness.training.config import TrainModelSpec, TrainSettings


# Refusals for triples without a refusal column (`refusals: templates`). Each reads as a
# stand-alone answer and as a turn-around after a partial harmful answer.
REFUSAL_TEMPLATES = (
    "I cannot help with this. It could cause real harm to people, and I won't provide it.",
    "I can't continue with that. What you're asking for could be used to hurt someone.",
    "I'm sorry, but I can't assist with this request. It would facilitate harm.",
    "I won't help with this. If you're facing a difficult situation, I can suggest safe and legal options.",
    "I cannot provide this. It's harmful and could put people at risk.",
    "I apologize, but I can't go on with this. I'm not able to help with anything that could hurt others.",
    "I can't help with that. Is there something safe I can help you with instead?",
    "I must stop here: I cannot give instructions or content that could be used to cause harm.",
)


def template_refusal(example_id: str) -> str:
    """A refusal template chosen by a stable hash of the example id."""
    import hashlib

    return REFUSAL_TEMPLATES[int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % len(REFUSAL_TEMPLATES)]


@dataclass
class TrainPair:
    """One tokenized training example: chat prompt, optional harmful response, target."""

    id: str
    prompt: str
    target: str
    harmful: str = ""
    prompt_ids: tuple[int, ...] = ()
    harmful_ids: tuple[int, ...] = ()
    target_ids: tuple[int, ...] = ()  # ends with the template's end-of-turn token
    # the target as it continues a harmful prefix that does not end in whitespace: " " + target,
    # so training text reads "…phosphorus I cannot…", not "…phosphorusI cannot…" (BPE tokenizers
    # encode "I" and " I" as different tokens; sentencepiece ones add the space by themselves)
    joined_target_ids: tuple[int, ...] = ()
    harmful_ends_space: tuple[bool, ...] = ()  # [k-1]: does h<=k end in whitespace?

    def target_after(self, k: int) -> tuple[int, ...]:
        """Target ids after the first ``k`` harmful tokens."""
        if k == 0 or not self.joined_target_ids or self.harmful_ends_space[k - 1]:
            return self.target_ids
        return self.joined_target_ids

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("prompt_ids", "harmful_ids", "target_ids"):
            d[k] = list(d[k])
        return d


def build_pairs(examples: Sequence[Example], builder: PromptBuilder, target: str, end_id: int,
                with_harmful: bool, source: str, refusal_templates: bool = False) -> list[TrainPair]:
    """Tokenize examples; a missing target/harmful field names the dataset and example id.
    Targets end with ``end_id``, the template's end-of-turn token (``harness.turns.end_of_turn_id``,
    which need not be the tokenizer's EOS); an example whose ``meta["finished"]`` is False (an
    answer cut by a length limit) gets no end token. With ``refusal_templates`` the refusal
    target comes from REFUSAL_TEMPLATES, not a column."""
    pairs = []
    adds_space = _encoding_adds_space(builder)
    for ex in examples:
        tgt = template_refusal(ex.id) if refusal_templates and target == "refusal" else getattr(ex, target)
        if not tgt:
            raise DataError(f"{source}: example {ex.id!r} has no {target!r} (needed as the training target)")
        harmful = (ex.response or "") if with_harmful else ""
        if with_harmful and not harmful:
            raise DataError(f"{source}: example {ex.id!r} has no 'response' (the harmful h of an (x, h, r) triple)")
        eos = (end_id,) if ex.meta.get("finished", True) else ()
        harmful_ids = tuple(builder.encode(harmful)) if harmful else ()
        pairs.append(TrainPair(
            id=ex.id, prompt=ex.prompt, target=tgt, harmful=harmful,
            prompt_ids=tuple(builder.chat_ids(ex.prompt)),
            harmful_ids=harmful_ids,
            target_ids=tuple(builder.encode(tgt)) + eos,
            joined_target_ids=(tuple(builder.encode(tgt if adds_space else " " + tgt.lstrip())) + eos
                               if harmful else ()),
            harmful_ends_space=_ends_in_space(builder, harmful_ids),
        ))
    return pairs


def refusal_openings(pairs: Sequence[TrainPair]) -> list[int]:
    """The first token of every refusal target, alone and after a harmful prefix ("I", " I")."""
    return sorted({ids[0] for p in pairs for ids in (p.target_ids, p.joined_target_ids) if ids})


def _encoding_adds_space(builder: PromptBuilder) -> bool:
    """True for tokenizers whose encoding of "I" already reads " I" after other text
    (sentencepiece with a dummy prefix); BPE ones need the space spelled out."""
    a, b = builder.encode("a"), builder.encode("I")
    return builder.tokenizer.decode(a + b).startswith("a ")


def _ends_in_space(builder: PromptBuilder, ids: Sequence[int]) -> tuple[bool, ...]:
    """For each k = 1..len(ids): does the text of ids[:k] end in whitespace? Decoded token
    by token (a prefix's text ends where its last token's text ends)."""
    tok = builder.tokenizer
    return tuple(tok.decode([i]).endswith((" ", "\n", "\t")) for i in ids)


def assert_disjoint(train: Sequence[Example], evaluation: Sequence[Example], what: str) -> None:
    """Training prompts must never be evaluation prompts (normalised exact match)."""
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    seen = {norm(e.prompt): e.id for e in evaluation}
    clash = [(t.id, seen[norm(t.prompt)]) for t in train if norm(t.prompt) in seen]
    if clash:
        raise DataError(f"{what}: training prompts overlap evaluation prompts: {clash[:5]}")


class Batcher:
    """Deterministic micro-batches mixing main (safety) and anchor (utility) pairs."""

    def __init__(self, main: list[TrainPair], anchor: list[TrainPair], batch_size: int, anchor_batch_size: int,
                 max_length: int, pad_id: int, seed: int, augment: bool = False, p_zero: float = 0.5,
                 max_k: int = 100, contrast_rows: int = 0, contrast_window: int = 32,
                 contrast_p_zero: float | None = None, contrast_max_k: int | None = None) -> None:
        if not main:
            raise DataError("no training examples")
        if contrast_rows and not anchor:
            raise DataError("contrast rows are drawn from the utility anchors, and there are none")
        self.main, self.anchor = main, anchor
        self.batch_size = batch_size
        self.anchor_batch_size = anchor_batch_size if anchor else 0
        self.max_length, self.pad_id, self.seed = max_length, pad_id, seed
        self.augment, self.p_zero, self.max_k = augment, p_zero, max_k
        self.contrast_rows, self.contrast_window = contrast_rows, contrast_window
        self.contrast_p_zero = p_zero if contrast_p_zero is None else contrast_p_zero
        self.contrast_max_k = max_k if contrast_max_k is None else contrast_max_k

    def _draw(self, n_items: int, per_batch: int, index: int, salt: int) -> list[int]:
        """Items for micro-batch ``index``: consecutive slots of per-epoch permutations."""
        out = []
        for slot in range(index * per_batch, (index + 1) * per_batch):
            epoch, pos = divmod(slot, n_items)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + salt)
            out.append(int(torch.randperm(n_items, generator=g)[pos]))
        return out

    def micro_batch(self, index: int) -> dict[str, torch.Tensor]:
        """Tensors for global micro-batch ``index``: input_ids, attention_mask, labels,
        is_anchor (B,), is_contrast (B,), example (B,) index into main/anchor, depth (B,)
        prefix tokens used. Rows come in the order main, contrast, anchor.

        Contrast rows (``contrast_rows``) are benign anchors cut at a depth drawn as for the
        main rows: (x_b, b<=k) -> the next ``contrast_window`` tokens of b. They join the main
        (safety) term, so each depth's turn-around is learned against a benign continuation of
        equal weight: whether to turn around must come from what x and h say, not from the
        position alone."""
        main_idx = self._draw(len(self.main), self.batch_size, index, salt=1)
        contrast_idx = self._draw(len(self.anchor), self.contrast_rows, index, salt=3) if self.contrast_rows else []
        anchor_idx = self._draw(len(self.anchor), self.anchor_batch_size, index, salt=2) if self.anchor_batch_size else []
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pairs = [self.main[i] for i in main_idx]
        benign = [self.anchor[i] for i in contrast_idx]
        depths, benign_depths = self._depths([len(p.harmful_ids) for p in pairs], g, self.p_zero, self.max_k), []
        if benign:  # never the whole answer: at least one token is left to supervise
            benign_depths = self._depths([len(p.target_ids) - 1 for p in benign], g,
                                         self.contrast_p_zero, self.contrast_max_k)
        seqs = [(p.prompt_ids + p.harmful_ids[:k], p.target_after(k)) for p, k in zip(pairs, depths)]
        seqs += [(p.prompt_ids + p.target_ids[:k], p.target_ids[k:k + self.contrast_window])
                 for p, k in zip(benign, benign_depths)]
        seqs += [(self.anchor[i].prompt_ids, self.anchor[i].target_ids) for i in anchor_idx]
        batch = collate(seqs, self.max_length, self.pad_id)
        n_main, n_contrast, n_anchor = len(pairs), len(benign), len(anchor_idx)
        batch["is_anchor"] = torch.tensor([False] * (n_main + n_contrast) + [True] * n_anchor)
        batch["is_contrast"] = torch.tensor([False] * n_main + [True] * n_contrast + [False] * n_anchor)
        batch["example"] = torch.tensor(main_idx + contrast_idx + anchor_idx)
        batch["depth"] = torch.tensor(depths + benign_depths + [0] * n_anchor)
        return batch

    def _depths(self, lengths: list[int], g: torch.Generator, p_zero: float, max_k: int) -> list[int]:
        if not self.augment:
            return [0] * len(lengths)
        return sample_recovery_depth(torch.tensor(lengths), g, p_zero, max_k).tolist()


def batcher_for(spec: TrainModelSpec, settings: TrainSettings, main: list[TrainPair], anchor: list[TrainPair],
                pad_id: int) -> Batcher:
    """The Batcher a model's training draws from (the trainer's, and bench/train_step.py's)."""
    c = spec.contrast
    return Batcher(main, anchor, settings.batch_size, settings.anchor_batch_size, settings.max_length, pad_id,
                   settings.seed, augment=spec.objective == "augmented", p_zero=spec.augmentation.p_zero,
                   max_k=spec.augmentation.max_k,
                   **({"contrast_rows": c.rows, "contrast_window": c.window, "contrast_p_zero": c.p_zero,
                       "contrast_max_k": c.max_k} if c else {}))


def collate(seqs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """(context, target) id pairs -> right-padded tensors; loss only on target tokens.
    Sequences longer than ``max_length`` lose their tail, never their context."""
    rows = [(list(c) + list(t))[:max_length] for c, t in seqs]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ((ctx, _), row) in enumerate(zip(seqs, rows)):
        ids[i, :len(row)] = torch.tensor(row)
        attn[i, :len(row)] = 1
        labels[i, len(ctx):len(row)] = torch.tensor(row[len(ctx):], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def save_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def row_chunks(lengths: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Row indices of a padded batch in length-sorted chunks whose padded size (rows × longest
    row) stays within ``max_tokens`` (a longer row is a chunk of its own). 0: one chunk, the
    batch as it is. Sorted chunks waste little on padding: with complete anchors (up to ~300
    tokens beside ~100-token safety rows) padding the whole batch to its longest row wastes
    about 40% of the positions."""
    if max_tokens <= 0:
        return [torch.arange(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda i: int(lengths[i]))
    chunks: list[list[int]] = [[]]
    for i in order:
        if chunks[-1] and (len(chunks[-1]) + 1) * int(lengths[i]) > max_tokens:
            chunks.append([])
        chunks[-1].append(i)
    return [torch.tensor(c) for c in chunks]
