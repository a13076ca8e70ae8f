"""Depth diagnostics (Qi et al. 2025, §2–3): where along a response two models differ, where a
fine-tuning attack's gradient pushes, and how much prefilled harm silences a refusal.

Everything is teacher-forced. A prompt x is rendered with the chat template
(``PromptBuilder.chat_ids``: up to and including the assistant header) and a response y is
appended as token ids, so response token t is exactly the t-th token of the response text
(t = 1, 2, …), predicted from c_t = (x, y_<t).

- ``kl_by_position``: KL(π_a ‖ π_b)(c_t) at each response position t, e.g. KL(aligned ‖ base)
  on harmful responses, which a shallow alignment concentrates in the first few tokens
  (the paper's Figure 1);
- ``grad_by_position``: the mean cross-entropy CE_t on attack pairs (harmful x → harmful y)
  and ‖∇_θ CE_t‖ (Figure 3: an attack's first steps mostly move the first tokens);
- ``refusal_by_depth``: log P(refusal prefix | x, h≤k) for prefill depths k (what a k-token
  prefilling attack has to overcome, measured without generation).

The maths is in pure, batch-vectorised tensor functions in TRL style (``token_kl``,
``position_stats``, ``position_means``, ``grouped_logsumexp``); the model loops batch
(right-padded, masked) sequences and compute the LM head only over the response window.
``harness.analysis.output.write_*`` put each result into a CSV and an SVG chart (``harness.results.plots``).

Outputs (stable; ``harness.results.rundir``/the HTML report read them by their header). A run writes
into one folder: ``results/<run-id>/`` for ``harness run <kind: analyze recipe>`` (``--out``
the results root, ``--run-id`` default the recipe name, e.g. ``results/diagnostics/``), or
``--out`` (default ``results/analyze-<kl|grad|refusal>/``) for ``harness analyze …``. Each
analysis writes files named by its label ``<label>`` (the recipe's ``name``, else its type),
listed in ``manifest.json`` (``files``, and per analysis ``analyses.<label>.files``):

- KL, ``<label>.csv`` + ``<label>.svg``, one row per (pair, position), positions 1..max_tokens:
  ``a, b, position, n, mean, std, ci95_low, ci95_high`` — a/b the recipe's model names
  (KL(a ‖ b), nats), n the number of responses with ≥ position tokens, mean/std over them,
  ci95 = mean ± 1.96·std/√n (NaN, written ``nan``, where n < 2; mean NaN where n = 0);
- gradient, ``<label>.csv`` + ``<label>_ce.svg`` + ``<label>_grad_norm.svg``:
  ``model, position, n, mean_ce, std_ce, grad_norm``;
- refusal, ``<label>.csv`` + ``<label>.svg``, one row per (model, depth):
  ``model, depth, n, skipped, mean_logprob, std_logprob, ci95_low, ci95_high, mean_prob``
  (n examples scored, skipped those whose harmful response is shorter than the depth;
  mean_prob is the mean of P, not exp of the mean log P).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.core import Example
from harness.errors import DataError
from harness.intervals import Z95, half_width
from harness.prompts import PromptBuilder
from harness.training.data import collate
from harness.training.losses import IGNORE, response_positions, shift, token_logprobs



# --------------------------------------------------------------------------- sequences


@dataclass(frozen=True)
class Pair:
    """One teacher-forced sequence: ``context`` ids (chat prompt, maybe a prefill), then
    ``target`` ids, the tokens that are scored."""

    example_id: str
    context: tuple[int, ...]
    target: tuple[int, ...]


def field_ids(ex: Example, field: str, builder: PromptBuilder, source: str = "dataset",
              role: str = "the scored response") -> tuple[int, ...]:
    """The token ids of ``example.<field>``; a missing or empty field is an error naming the
    dataset, the example id and the field."""
    text = getattr(ex, field, None)
    if not text:
        raise DataError(f"{source}: example {ex.id!r} has no {field!r} (needed as {role})")
    return tuple(builder.encode(text))


def encode_pairs(examples: Sequence[Example], builder: PromptBuilder, field: str = "response",
                 max_tokens: int | None = None, source: str = "dataset") -> list[Pair]:
    """(chat prompt, first ``max_tokens`` tokens of ``example.<field>``) per example."""
    return [Pair(ex.id, tuple(builder.chat_ids(ex.prompt)), field_ids(ex, field, builder, source)[:max_tokens])
            for ex in examples]


def pad_token_id(tokenizer: Any) -> int:
    """An id to pad with (padding is masked out, so any valid id does): pad, else EOS, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def make_batch(pairs: Sequence[Pair], idx: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """``pairs[idx]`` right-padded (``collate``: input_ids, attention_mask, labels with IGNORE
    outside the target)."""
    seqs = [(pairs[i].context, pairs[i].target) for i in idx]
    return collate(seqs, max(len(c) + len(t) for c, t in seqs), pad_id)


def batches(pairs: Sequence[Pair], batch_size: int, pad_id: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Right-padded batches (``make_batch``), longest first so each batch pads little; yields
    (indices into pairs, batch)."""
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i].context) + len(pairs[i].target)))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, make_batch(pairs, idx, pad_id)


def _n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- forward passes


def response_window(labels: torch.Tensor) -> int:
    """The first column of a batch that the shifted loss over its supervised labels needs (the
    one before the first supervised label of any row). Targets end their sequences (see
    ``collate``), so the window runs from there to the batch's last column."""
    cols = (labels != IGNORE).any(dim=0).nonzero().flatten()
    if cols.numel() == 0:
        raise ValueError("batch has no supervised (target) tokens")
    return max(int(cols[0]) - 1, 0)


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def window_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over the response window only, (B, W, V) and (B, W), aligned as the
    model's full outputs are (``shift`` applies). Where the model takes ``logits_to_keep``
    (HF causal LMs: keep the last W columns) the LM head runs on the window alone, so the
    prompt's (B, T, V) logits are never built."""
    lo = response_window(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if _accepts_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=batch["labels"].shape[1] - lo).logits
    else:
        logits = model(**inputs).logits[:, lo:]
    return logits, batch["labels"][:, lo:]


# --------------------------------------------------------------------------- pure maths


def token_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, labels: torch.Tensor,
             labels_b: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token KL(π_a ‖ π_b) of the next-token distributions that predict each supervised token:

        KL_t = Σ_v π_a(v | c_t) · (log π_a(v | c_t) − log π_b(v | c_t)),

    over the full vocabulary, in fp32 whatever the logits' dtype. Only the supervised rows
    are normalised (N × V, not B × T × V). ``labels_b`` (default ``labels``) are model b's
    labels when its sequences differ (its own chat template): row for row the same supervised
    tokens, at other columns; the k-th supervised token of a row in a is paired with the k-th
    in b. Returns ``(kl, mask)``, both (B, T-1) and aligned like ``token_logprobs`` on a's
    ``labels``; ``kl`` is 0 where ``mask`` is False."""
    if logits_a.shape[-1] != logits_b.shape[-1]:
        raise ValueError(f"token_kl: vocabulary sizes differ ({logits_a.shape[-1]} vs {logits_b.shape[-1]}); "
                         "the two models need the same vocabulary")
    la, shifted = shift(logits_a, labels)
    lb, shifted_b = shift(logits_b, labels if labels_b is None else labels_b)
    mask, mask_b = shifted != IGNORE, shifted_b != IGNORE
    if labels_b is None and logits_a.shape != logits_b.shape:
        raise ValueError(f"token_kl: logits shapes differ {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    if not torch.equal(shifted[mask], shifted_b[mask_b]) or not torch.equal(mask.sum(1), mask_b.sum(1)):
        raise ValueError("token_kl: the two sides' supervised tokens differ (the same responses are needed)")
    logp_a = F.log_softmax(la[mask].float(), dim=-1)
    logp_b = F.log_softmax(lb[mask_b].float(), dim=-1)
    kl = torch.zeros(mask.shape, dtype=torch.float32, device=la.device)
    kl[mask] = (logp_a.exp() * (logp_a - logp_b)).sum(dim=-1)
    return kl, mask


@dataclass(frozen=True)
class PositionStats:
    """A per-token quantity at response positions t = 1..T (index t − 1): mean, sample
    standard deviation and count; mean is NaN where count = 0, std where count < 2."""

    mean: torch.Tensor
    std: torch.Tensor
    count: torch.Tensor

    @property
    def half_width(self) -> torch.Tensor:
        """Half-width of the normal 95% interval of the mean, Z95 · s_t / √n_t."""
        return Z95 * self.std / self.count.clamp(min=1).double().sqrt()

    def rows(self) -> list[dict[str, Any]]:
        hw = self.half_width
        return [{"position": t + 1, "n": int(self.count[t]), "mean": float(self.mean[t]), "std": float(self.std[t]),
                 "ci95_low": float(self.mean[t] - hw[t]), "ci95_high": float(self.mean[t] + hw[t])}
                for t in range(len(self.mean))]


def position_stats(positions: torch.Tensor, values: torch.Tensor, max_position: int) -> PositionStats:
    """Per-position statistics of flat (``positions``, ``values``) pairs, two-pass:

        n_t = Σ_i [p_i = t],    m_t = (1/n_t) Σ_{i: p_i = t} v_i,
        s_t = √( 1/(n_t − 1) · Σ_{i: p_i = t} (v_i − m_t)² ),

    for t = 1..max_position (1-based ``positions``; larger ones are ignored), in float64."""
    keep = (positions >= 1) & (positions <= max_position)
    idx, v = positions[keep].long() - 1, values[keep].detach().double()
    count = torch.zeros(max_position, dtype=torch.long, device=v.device).index_add_(0, idx, torch.ones_like(idx))
    n = count.double()
    mean = torch.zeros(max_position, dtype=torch.float64, device=v.device).index_add_(0, idx, v) / n
    sq = torch.zeros_like(mean).index_add_(0, idx, (v - mean[idx]) ** 2)
    std = torch.where(count > 1, (sq / (n - 1).clamp(min=1)).sqrt(), torch.full_like(mean, math.nan))
    return PositionStats(mean.cpu(), std.cpu(), count.cpu())


def position_means(values: torch.Tensor, mask: torch.Tensor, max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable mean of a per-token quantity at each response position over the batch:

        m_t = (1/n_t) Σ_b v_{b, τ_b(t)},   n_t = #{b : |y_b| ≥ t},

    τ_b(t) being the column of row b's t-th supervised token. Returns (m, n), both
    (max_position,); m_t = 0 where n_t = 0 (the division uses max(n_t, 1), so no NaN ever
    reaches a backward pass)."""
    pos = response_positions(mask).clamp(max=max_position + 1)
    sums = torch.zeros(max_position + 2, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, pos.flatten(), (values * mask).flatten())
    counts = torch.zeros(max_position + 2, dtype=torch.long, device=values.device)
    counts = counts.index_add(0, pos.flatten(), mask.flatten().long())
    return sums[1:max_position + 1] / counts[1:max_position + 1].clamp(min=1), counts[1:max_position + 1]


def grouped_logsumexp(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """log Σ_{i: g_i = j} exp(v_i) for each group j = 0..n_groups-1 (−inf for an empty group),
    stabilised by each group's maximum: m_j + log Σ exp(v_i − m_j)."""
    v = values.double()
    m = torch.full((n_groups,), -math.inf, dtype=torch.float64, device=v.device)
    m = m.scatter_reduce(0, groups, v, reduce="amax", include_self=True)
    shifted = torch.where(torch.isfinite(m[groups]), v - m[groups], torch.full_like(v, -math.inf))
    s = torch.zeros_like(m).index_add_(0, groups, shifted.exp())
    return torch.where(s > 0, m + s.log(), torch.full_like(m, -math.inf))


# --------------------------------------------------------------------------- KL by position


def _truncate(pairs: Sequence[Pair], max_tokens: int) -> list[Pair]:
    return [Pair(p.example_id, p.context, p.target[:max_tokens]) for p in pairs if p.target]


@torch.no_grad()
def kl_by_position(model_a: torch.nn.Module, model_b: torch.nn.Module, pairs: Sequence[Pair], pad_id: int,
                   max_position: int = 64, batch_size: int = 8, progress: bool = False,
                   pairs_b: Sequence[Pair] | None = None) -> PositionStats:
    """Mean, std and count over ``pairs`` of KL(π_a ‖ π_b)(c_t) at response positions
    t = 1..max_position (see ``token_kl``); targets are cut to ``max_position`` tokens.

    ``pairs_b`` (default ``pairs``) are model b's sequences when its context differs, e.g. its
    own chat template rendering the same prompts: one per pair, the same example and target."""
    if pairs_b is not None:
        if len(pairs_b) != len(pairs) or any(p.example_id != q.example_id or p.target != q.target
                                             for p, q in zip(pairs, pairs_b)):
            raise ValueError("kl_by_position: pairs_b must hold the same examples and targets as pairs")
        keep = [i for i, p in enumerate(pairs) if p.target]
        pairs_b = _truncate([pairs_b[i] for i in keep], max_position)
    pairs = _truncate(pairs, max_position)
    if not pairs:
        raise ValueError("kl_by_position: no pairs with a non-empty target")
    positions, values = [], []
    for idx, batch in tqdm(batches(pairs, batch_size, pad_id), total=_n_batches(len(pairs), batch_size),
                           desc="KL by position", disable=not progress, leave=False):
        batch_b = batch if pairs_b is None else make_batch(pairs_b, idx, pad_id)
        logits_a, labels = window_logits(model_a, _to(batch, _device(model_a)))
        logits_b, labels_b = window_logits(model_b, _to(batch_b, _device(model_b)))
        kl, mask = token_kl(logits_a, logits_b.to(logits_a.device), labels, labels_b.to(labels.device))
        positions.append(response_positions(mask)[mask].cpu())
        values.append(kl[mask].cpu())
    return position_stats(torch.cat(positions), torch.cat(values), max_position)


# --------------------------------------------------------------------------- CE and gradient norm


@dataclass(frozen=True)
class GradStats:
    """Cross-entropy statistics by response position and ‖∇_θ CE_t‖₂ (NaN where n_t = 0)."""

    ce: PositionStats
    grad_norm: torch.Tensor

    def rows(self) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in r.items() if k in ("position", "n")}, "mean_ce": r["mean"], "std_ce": r["std"],
                 "grad_norm": float(g)} for r, g in zip(self.ce.rows(), self.grad_norm)]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an attack would update (each shared/tied tensor once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def grad_by_position(model: torch.nn.Module, pairs: Sequence[Pair], pad_id: int, max_position: int = 32,
                     progress: bool = False) -> GradStats:
    """Per-position cross-entropy on attack pairs and the norm of its gradient, exactly.

    With ℓ_{b,t} = −log π_θ(y_{b,t} | x_b, y_{b,<t}) and n_t = #{b : |y_b| ≥ t},

        CE_t = (1/n_t) Σ_b ℓ_{b,t},      G_t = ‖∇_θ CE_t‖₂ = √( Σ_{p ∈ θ} ‖∂CE_t/∂p‖² ),

    θ being every trainable parameter. A first SFT attack step on these pairs has gradient
    ∇L = Σ_t (n_t/N) ∇CE_t, so G_t shows which positions drive it. ``pairs`` form one batch
    (the attack's first step): one forward pass, then one backward per position through the
    retained graph (exact; the graph is shared, only the output cotangent changes). The model
    is put in eval mode (no dropout) and its ``.grad`` fields are left untouched."""
    model.eval()
    params = trainable_parameters(model)
    pairs = _truncate(pairs, max_position)
    if not pairs:
        raise ValueError("grad_by_position: no pairs with a non-empty target")
    (_, batch), = batches(pairs, len(pairs), pad_id)
    logits, labels = window_logits(model, _to(batch, _device(model)))
    logp, mask = token_logprobs(logits, labels)
    ce, counts = position_means(-logp, mask, max_position)
    norms = torch.full((max_position,), math.nan, dtype=torch.float64)
    for t in tqdm(counts.nonzero().flatten().tolist(), desc="gradient norm by position", disable=not progress,
                  leave=False):
        grads = torch.autograd.grad(ce[t], params, retain_graph=True, allow_unused=True)
        norms[t] = torch.stack([g.detach().double().pow(2).sum() for g in grads if g is not None]).sum().sqrt().cpu()
    stats = position_stats(response_positions(mask)[mask], -logp[mask], max_position)
    return GradStats(stats, norms)


# --------------------------------------------------------------------------- refusal by prefill depth


PrefixSpec = Union[Literal["example"], Sequence[str]]


def refusal_prefixes(examples: Sequence[Example], builder: PromptBuilder, prefix: PrefixSpec,
                     prefix_tokens: int = 8, source: str = "dataset") -> list[list[tuple[int, ...]]]:
    """Per example, the refusal prefixes whose probability is summed.

    ``"example"``: the first ``prefix_tokens`` tokens of the example's own refusal. A list of
    strings (e.g. "I cannot", "I'm sorry"): each string's tokens. Their probabilities add
    up to P(the reply starts with one of them) only if no prefix is a token-prefix of another
    (disjoint events), so that is checked. Prefixes are tokenized on their own, as the
    refusal targets of recovery training are (``build_pairs``)."""
    if prefix == "example":
        out = []
        for ex in examples:
            if not ex.refusal:
                raise DataError(f"{source}: example {ex.id!r} has no 'refusal' (prefix: example scores its refusal)")
            out.append([tuple(builder.encode(ex.refusal)[:prefix_tokens])])
        return out
    fixed = [tuple(builder.encode(s)) for s in prefix]
    for s, ids in zip(prefix, fixed):
        if not ids:
            raise ValueError(f"refusal prefix {s!r} is empty")
    for i, a in enumerate(fixed):
        for j, b in enumerate(fixed):
            if i != j and b[:len(a)] == a:
                raise ValueError(f"refusal prefix {prefix[i]!r} is a token-prefix of {prefix[j]!r}; their "
                                 "probabilities would be counted twice — drop one")
    return [fixed for _ in examples]


@dataclass(frozen=True)
class RefusalByDepth:
    """log P(refusal prefix | x, h≤k) per example (rows) and depth (columns); NaN where the
    example's harmful response is shorter than k (skipped, never padded)."""

    example_ids: tuple[str, ...]
    depths: tuple[int, ...]
    logprob: torch.Tensor

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for d, k in enumerate(self.depths):
            col = self.logprob[:, d]
            ok = col[~col.isnan()]
            n = int(ok.numel())
            mean = float(ok.mean()) if n else math.nan
            std = float(ok.std()) if n > 1 else math.nan
            hw = half_width(std, n)
            out.append({"depth": k, "n": n, "skipped": int(col.numel()) - n, "mean_logprob": mean, "std_logprob": std,
                        "ci95_low": mean - hw, "ci95_high": mean + hw,
                        "mean_prob": float(ok.exp().mean()) if n else math.nan})
        return out


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, pairs: Sequence[Pair], pad_id: int, batch_size: int = 16,
                      progress: bool = False, desc: str = "log-probs") -> torch.Tensor:
    """log P(target | context) = Σ_j log π(r_j | context, r_<j) for each pair, (S,) float64."""
    out = torch.empty(len(pairs), dtype=torch.float64)
    for idx, batch in tqdm(batches(pairs, batch_size, pad_id), total=_n_batches(len(pairs), batch_size),
                           desc=desc, disable=not progress, leave=False):
        logits, labels = window_logits(model, _to(batch, _device(model)))
        logp, _ = token_logprobs(logits, labels)
        out[idx] = logp.double().sum(dim=1).cpu()
    return out


def refusal_by_depth(model: torch.nn.Module, examples: Sequence[Example], builder: PromptBuilder,
                     depths: Sequence[int], prefix: PrefixSpec = "example", prefix_tokens: int = 8,
                     harmful_field: str = "response", batch_size: int = 16, progress: bool = False,
                     source: str = "dataset") -> RefusalByDepth:
    """log P(refusal prefix | x, h≤k) for every example and depth k, teacher-forced:

        log P = log Σ_{r ∈ R} Π_j π(r_j | x, h_1..h_k, r_<j),

    h the example's harmful response (``harmful_field``) cut to its first k tokens (k = 0:
    the bare chat prompt), R the refusal prefixes (``refusal_prefixes``). All (example,
    depth, prefix) sequences are scored in batches; the sum over R is a grouped logsumexp."""
    prefixes = refusal_prefixes(examples, builder, prefix, prefix_tokens, source)
    harmful = [field_ids(ex, harmful_field, builder, source, "the harmful prefill h") if max(depths, default=0) > 0
               else () for ex in examples]
    pairs, groups = [], []
    for e, (ex, h) in enumerate(zip(examples, harmful)):
        head = tuple(builder.chat_ids(ex.prompt))
        for d, k in enumerate(depths):
            if len(h) < k:
                continue
            for r in prefixes[e]:
                pairs.append(Pair(ex.id, head + h[:k], r))
                groups.append(e * len(depths) + d)
    n_cells = len(examples) * len(depths)
    logprob = torch.full((n_cells,), math.nan, dtype=torch.float64)
    if pairs:
        group = torch.tensor(groups)
        scores = sequence_logprobs(model, pairs, pad_token_id(builder.tokenizer), batch_size, progress,
                                   "refusal by depth")
        lse = grouped_logsumexp(scores, group, n_cells)
        present = torch.zeros(n_cells, dtype=torch.bool).index_fill_(0, group, True)
        logprob = torch.where(present, lse, logprob)
    return RefusalByDepth(tuple(e.id for e in examples), tuple(depths), logprob.view(len(examples), len(depths)))
