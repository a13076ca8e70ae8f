"""GCG adversarial suffixes (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on
Aligned Language Models"), optimised on the target with gradient access and judged through the engine.

The optimiser (``run``) follows nanoGCG's interface and defaults, on HF transformers 5:

- the suffix x ∈ V^n sits between the prompt's ``before`` ids (chat template up to the end of
  the user's text) and ``after`` ids (end of the user turn, assistant header); the loss is the
  cross-entropy of the target tokens y given ``before + x + after``:
  L(x) = (1/T) Σ_t −log p(y_t | before, x, after, y_<t);
- the token gradient is taken w.r.t. the one-hot suffix matrix X (n × |V|), whose embeddings are
  X·W (W the input embedding matrix): ∂L/∂X = (∂L/∂E)·Wᵀ, so
  L(x with x_i ← v) ≈ L(x) + ∂L/∂X[i, v] − ∂L/∂X[i, x_i] to first order;
- each step samples ``search_width`` candidates: ``n_replace`` random positions each take a
  random one of the ``topk`` most negative gradient entries of their row (forbidden ids are
  masked first), drops candidates that do not survive decode → encode, evaluates the exact
  loss of every candidate and moves to the best one (or keeps a buffer of the best).

What makes a step cheaper than nanoGCG's, for the same candidates and the same losses:

- the KV cache of ``before`` is computed once and shared by every candidate batch
  (``use_prefix_cache``), as nanoGCG does;
- the KV cache of the *current* suffix comes for free from the gradient pass, and a candidate
  whose first changed token is at position d reuses it up to d (``use_suffix_cache``): only
  ``x[d:] + after + y[:-1]`` is recomputed. Candidates are sorted by d and batched, so each
  batch starts at its smallest d. With one replaced token this skips ~(n−1)/2 suffix tokens;
- the last target token is never fed (its logits are not needed) and the LM head runs on the
  T target positions only (``logits_to_keep``), not on the whole sequence;
- batch sizes are picked from free memory (and, on CPU, a token count that keeps the matrix
  multiplications efficient), the retokenisation filter is one batched tokenizer call, and
  duplicate candidates are evaluated once.

``naive`` switches all of that off: every candidate's whole sequence (prompt included) in one
forward pass with logits at every position, the original llm-attacks evaluation, for checks
and benchmarks.

Universal mode: several prompts (and optionally several models sharing the tokenizer) share
one suffix; the loss is the mean (or sum) over (model, prompt) pairs, the gradient the sum over
models of each model's row-normalised gradient (as llm-attacks does). Early stopping fires
once greedy decoding of the current suffix starts with the target on every pair; that is
checked with the teacher-forced argmax of the same forward pass (greedy decoding reproduces
y exactly iff argmax p(· | …, y_<t) = y_t for every t), so it costs nothing extra.

``GCGAttack`` wraps it as a harness attack (``type: gcg``): ``prepare`` optimises a suffix per
example (or one universal suffix), caches it as an artefact keyed by everything that
determines it, and ``plan`` inserts the suffix ids at the end of the user turn.
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from attacks.base import AttackConfig, Example, PlannedSample, Target
from harness.core import StrictModel, content_hash
from harness.prompts import Segments

DEFAULT_INIT = " ".join(["x"] * 20)  # nanoGCG 0.3.0's init (Zou et al. used 20 "!" tokens)
DEFAULT_NUM_STEPS = 250  # nanoGCG 0.3.0 (Zou et al.: 500)
DEFAULT_SEARCH_WIDTH = 512
DEFAULT_TOPK = 256
CPU_TOKENS_PER_BATCH = 1024  # tokens per forward pass on CPU (see auto_batch_size)

__all__ = ["GCGAttack", "GCGConfig", "GCGResult", "ProbeSamplingConfig", "candidate_losses", "forbidden_mask",
           "load_model", "retokenizes", "run", "sample_candidates", "segments_of", "token_gradient"]


# =========================================================================== configuration


@dataclass
class ProbeSamplingConfig:
    """Probe sampling (Zhao et al. 2024): a draft model scores every candidate, the target scores
    a random probe set of B/``sampling_factor``; with α = (1 + ρ)/2 from the Spearman rank
    correlation ρ of the two on the probe set, the target also scores the
    ⌈(1 − α)·B/``r``⌉ best candidates by the draft. The draft must share the target's tokenizer."""

    draft_model: Any
    r: int = 8
    sampling_factor: int = 16


@dataclass
class GCGConfig:
    """GCG settings; the defaults are nanoGCG 0.3.0's (250 steps, 20 × "x", width 512, top-k 256), except
    ``early_stop`` (on here, off in nanoGCG)."""

    num_steps: int = DEFAULT_NUM_STEPS
    optim_str_init: str | Sequence[int] = DEFAULT_INIT
    search_width: int = DEFAULT_SEARCH_WIDTH
    topk: int = DEFAULT_TOPK
    n_replace: int = 1
    buffer_size: int = 0
    use_mellowmax: bool = False
    mellowmax_alpha: float = 1.0
    allow_non_ascii: bool = False
    filter_ids: bool = True
    use_prefix_cache: bool = True
    use_suffix_cache: bool = True
    naive: bool = False
    early_stop: bool = True
    seed: int | None = None
    batch_size: int | None = None  # None: from free memory (and a CPU token budget)
    loss_reduction: Literal["mean", "sum"] = "mean"
    time_budget_s: float | None = None
    probe_sampling: ProbeSamplingConfig | None = None
    progress: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending key."""
        positive = {"num_steps": self.num_steps, "search_width": self.search_width, "topk": self.topk,
                    "n_replace": self.n_replace}
        for key, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GCG config `{key}` must be a positive integer, got {value!r}")
        if self.buffer_size < 0:
            raise ValueError(f"GCG config `buffer_size` must be >= 0, got {self.buffer_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"GCG config `batch_size` must be >= 1 or None (auto), got {self.batch_size}")
        if self.mellowmax_alpha <= 0:
            raise ValueError(f"GCG config `mellowmax_alpha` must be > 0, got {self.mellowmax_alpha}")
        if self.loss_reduction not in ("mean", "sum"):
            raise ValueError(f"GCG config `loss_reduction` must be mean or sum, got {self.loss_reduction!r}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"GCG config `time_budget_s` must be > 0, got {self.time_budget_s}")
        if self.probe_sampling is not None and (self.probe_sampling.r < 1 or self.probe_sampling.sampling_factor < 1):
            raise ValueError("GCG config `probe_sampling.r` and `probe_sampling.sampling_factor` must be >= 1")

    @property
    def prefix_cache(self) -> bool:
        return self.use_prefix_cache and not self.naive

    @property
    def suffix_cache(self) -> bool:
        return self.use_suffix_cache and self.prefix_cache


@dataclass
class GCGResult:
    """What one optimisation produced. ``losses[i]`` is the lowest candidate loss of step i and
    ``strings[i]`` the suffix kept after it (as nanoGCG); ``step_times[i]`` the seconds from the
    start of the run to the end of step i. ``matched``: greedy decoding after the best suffix
    starts with the target (on every prompt and model; per pair in ``matched_per_prompt``),
    checked on an uncached forward pass."""

    best_loss: float
    best_string: str
    best_ids: list[int]
    losses: list[float]
    strings: list[str]
    steps: int
    wall_time_s: float
    matched: bool
    matched_per_prompt: list[bool] = field(default_factory=list)
    init_loss: float = float("nan")
    stop_reason: str = "num_steps"  # num_steps | early_stop | time_budget
    step_times: list[float] = field(default_factory=list)
    evaluated: int = 0  # candidate losses computed on the target model(s)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# =========================================================================== token filters

_FORBIDDEN_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple[int, bool], torch.Tensor]]" = weakref.WeakKeyDictionary()


def forbidden_mask(tokenizer: Any, vocab_size: int, allow_non_ascii: bool = False) -> torch.Tensor:
    """Bool mask over the embedding rows (``vocab_size``) of the ids a suffix may not use:
    rows the tokenizer does not have (embedding padding), special and added special tokens,
    tokens that decode to nothing, and, unless ``allow_non_ascii``, tokens whose text is not
    printable ASCII (newlines, tabs, non-Latin script, byte pieces)."""
    try:
        per_tok = _FORBIDDEN_CACHE.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weak-referenced: no caching
        per_tok = {}
    key = (vocab_size, allow_non_ascii)
    if key not in per_tok:
        n = min(len(tokenizer), vocab_size)
        texts = tokenizer.batch_decode(torch.arange(n).unsqueeze(1))
        if allow_non_ascii:
            bad = [not t for t in texts]
        else:
            bad = [not (t and t.isascii() and t.isprintable()) for t in texts]
        mask = torch.ones(vocab_size, dtype=torch.bool)
        mask[:n] = torch.tensor(bad, dtype=torch.bool)
        special = set(tokenizer.all_special_ids)
        special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
        special_ids = torch.tensor(sorted(i for i in special if 0 <= i < vocab_size), dtype=torch.long)
        mask[special_ids] = True
        per_tok[key] = mask
    return per_tok[key]


def retokenizes(tokenizer: Any, ids: torch.Tensor) -> torch.Tensor:
    """Bool (B,): which rows of ``ids`` (B × n) encode back to exactly themselves after decoding,
    so the suffix survives being sent as text. One batched decode and one batched encode."""
    ids = ids.cpu()
    n = ids.shape[1]
    enc = tokenizer(tokenizer.batch_decode(ids), add_special_tokens=False)["input_ids"]
    lengths = torch.tensor(list(map(len, enc)), dtype=torch.long)
    flat = torch.tensor([t for row in enc for t in row], dtype=torch.long)
    same_len = lengths == n
    out = torch.zeros(ids.shape[0], dtype=torch.bool)
    if same_len.any():
        starts = lengths.cumsum(0) - lengths
        idx = starts[same_len].unsqueeze(1) + torch.arange(n)
        out[same_len] = (flat[idx] == ids[same_len]).all(dim=1)
    return out


# =========================================================================== candidate sampling


def sample_candidates(ids: torch.Tensor, grad: torch.Tensor, search_width: int, topk: int, n_replace: int,
                      forbidden: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``search_width`` candidates (W × n) from the current suffix ``ids`` (n,): each changes
    ``n_replace`` distinct uniformly drawn positions i, each to a uniform pick among the ``topk``
    ids v with the most negative ∂L/∂X[i, v] (forbidden ids excluded)."""
    n = ids.shape[0]
    scores = grad.float()
    if forbidden is not None:
        scores = scores.masked_fill(forbidden.to(scores.device), float("inf"))
        topk = min(topk, int((~forbidden).sum()))
    top = (-scores).topk(topk, dim=1).indices  # (n, k)
    dev = ids.device
    pos = torch.rand(search_width, n, generator=generator).argsort(dim=1)[:, :n_replace].to(dev)  # (W, r)
    pick = torch.randint(topk, (search_width, n_replace), generator=generator).to(dev)
    vals = top[pos, pick]
    return ids.unsqueeze(0).expand(search_width, n).clone().scatter_(1, pos, vals)


# =========================================================================== losses


def mellowmax(x: torch.Tensor, alpha: float, dim: int = -1) -> torch.Tensor:
    """mm_α(x) = (1/α)·(log Σ_i exp(α·x_i) − log N): a smooth maximum, → mean as α → 0 and →
    max as α → ∞."""
    n = x.shape[dim]
    return (torch.logsumexp(alpha * x, dim=dim) - math.log(n)) / alpha


def target_loss(logits: torch.Tensor, target: torch.Tensor, mellowmax_alpha: float | None = None) -> torch.Tensor:
    """Per-row loss (B,) from logits (B × T × V) at the positions predicting ``target`` (T,):
    mean cross-entropy, or the mellowmax of the per-token cross-entropies."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    b, t, v = logits.shape
    ce = F.cross_entropy(logits.reshape(b * t, v), target.repeat(b), reduction="none").view(b, t)
    return ce.mean(dim=1) if mellowmax_alpha is None else mellowmax(ce, mellowmax_alpha, dim=1)


# =========================================================================== one (model, prompt) pair

KV = list[tuple[torch.Tensor, torch.Tensor]]


def _cache(model: Any, kv: KV | None, batch: int, length: int | None = None) -> Any:
    """A fresh DynamicCache holding ``kv`` (batch 1) cut to ``length`` tokens and broadcast to
    ``batch`` rows (a forward pass appends to its cache, so each pass gets its own)."""
    from transformers import DynamicCache

    if not kv:
        return DynamicCache(config=model.config)
    end = kv[0][0].shape[-2] if length is None else length
    return DynamicCache([(k[..., :end, :].expand(batch, -1, -1, -1), v[..., :end, :].expand(batch, -1, -1, -1))
                         for k, v in kv], config=model.config)


def _kv_of(cache: Any) -> KV:
    return [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]


class Problem:
    """One (model, prompt, target): its embeddings, the ``before`` KV cache, and the tail
    ``after + target[:-1]`` every candidate forward pass ends with."""

    def __init__(self, model: Any, segments: Segments, target_ids: Sequence[int], config: GCGConfig) -> None:
        if not target_ids:
            raise ValueError("GCG target is empty; give a non-empty target text (`targets` / `target_field`)")
        self.model = model
        self.config = config
        self.device = model.device
        self.weight = model.get_input_embeddings().weight
        self.dtype = self.weight.dtype
        as_ids = lambda xs: torch.tensor(list(xs), dtype=torch.long, device=self.device)  # noqa: E731
        self.before_ids, self.after_ids, self.target = as_ids(segments.before), as_ids(segments.after), as_ids(target_ids)
        self.mm_alpha = config.mellowmax_alpha if config.use_mellowmax else None
        with torch.no_grad():
            self.before_embeds = self.embed(self.before_ids).unsqueeze(0)
            self.tail_embeds = self.embed(torch.cat([self.after_ids, self.target[:-1]])).unsqueeze(0)
            self.prefix_kv: KV | None = None
            if config.prefix_cache and len(self.before_ids):
                cache = _cache(model, None, 1)
                model(inputs_embeds=self.before_embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
                self.prefix_kv = _kv_of(cache)

    @property
    def n_before(self) -> int:
        return int(self.before_ids.shape[0])

    @property
    def n_target(self) -> int:
        return int(self.target.shape[0])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def forward(self, suffix_embeds: torch.Tensor, start: int = 0, kv: KV | None = None,
                keep_cache: bool = False) -> tuple[torch.Tensor, Any]:
        """Logits (B × T × V) predicting the target after ``before + suffix + after``, where
        ``suffix_embeds`` holds the suffix from position ``start`` on and ``kv`` (batch 1) the
        cache of ``before + suffix[:start]`` (default: the ``before`` cache)."""
        b = suffix_embeds.shape[0]
        tail = self.tail_embeds.expand(b, -1, -1)
        if not self.config.prefix_cache:  # the whole sequence (naive: with logits at every position)
            embeds = torch.cat([self.before_embeds.expand(b, -1, -1), suffix_embeds, tail], dim=1)
            out = self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=0 if self.config.naive else self.n_target)
            return out.logits[:, -self.n_target:], None
        kv = self.prefix_kv if kv is None else kv
        cache = _cache(self.model, kv, b, self.n_before + start)
        out = self.model(inputs_embeds=torch.cat([suffix_embeds, tail], dim=1), past_key_values=cache,
                         use_cache=True, logits_to_keep=self.n_target)
        return out.logits, (cache if keep_cache else None)

    def loss_of(self, logits: torch.Tensor) -> torch.Tensor:
        return target_loss(logits, self.target, self.mm_alpha)

    def matches(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher-forced greedy check per row: argmax at every target position is the target."""
        return (logits.argmax(dim=-1) == self.target).all(dim=1)


def token_gradient(problem: Problem, ids: torch.Tensor) -> tuple[torch.Tensor, float, bool, KV | None]:
    """∂L/∂X (n × |V|) at the one-hot suffix X of ``ids`` (n,), with the loss and the greedy
    match at ``ids`` and (with the suffix cache) the KV cache of ``before + ids``.

    The suffix embeddings are E = X·W, so ∂L/∂X = (∂L/∂E)·Wᵀ: autograd runs to E only (no
    parameter gradients, no n × |V| one-hot product in the forward pass)."""
    embeds = problem.embed(ids).detach().unsqueeze(0).requires_grad_(True)
    with torch.enable_grad():
        logits, cache = problem.forward(embeds, 0, keep_cache=problem.config.suffix_cache)
        loss = problem.loss_of(logits)[0]
        (grad_e,) = torch.autograd.grad(loss, embeds)
    grad = grad_e[0].to(problem.dtype) @ problem.weight.detach().T
    kv = None
    if cache is not None:
        end = problem.n_before + ids.shape[0]
        kv = [(k[..., :end, :], v[..., :end, :]) for k, v in _kv_of(cache)]
    return grad, float(loss.detach()), bool(problem.matches(logits.detach())[0]), kv


def _oom(err: BaseException) -> bool:
    msg = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in msg or "out of memory" in msg


def auto_batch_size(problem: Problem, row_tokens: int, width: int) -> int:
    """Candidates per forward pass when each feeds ``row_tokens`` tokens: what fits in half the
    free memory (GPU: free device memory) and, on CPU, at most ~``CPU_TOKENS_PER_BATCH`` tokens:
    a CPU's matrix multiplications are near their peak well below that, and smaller batches of
    the sorted candidates start closer to their own first changed token (suffix cache)."""
    cfg = problem.model.config
    elt = problem.weight.element_size()
    hidden, inter = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    heads, layers = cfg.num_attention_heads, cfg.num_hidden_layers
    kv_dim = getattr(cfg, "num_key_value_heads", heads) * getattr(cfg, "head_dim", hidden // heads)
    ctx = problem.n_before + row_tokens if problem.config.prefix_cache else row_tokens
    logit_rows = row_tokens if problem.config.naive else problem.n_target
    per_cand = (row_tokens * (12 * hidden + 3 * inter + heads * ctx) * elt  # one layer's activations, attention
                + 3 * logit_rows * problem.weight.shape[0] * 4  # logits and log-softmax (fp32)
                + 4 * layers * kv_dim * ctx * elt)  # KV cache (keys + values, and the copy on append)
    if problem.device.type == "cuda":
        free = torch.cuda.mem_get_info(problem.device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    size = max(1, int(0.5 * free // per_cand))
    if problem.device.type == "cpu":
        size = min(size, max(1, CPU_TOKENS_PER_BATCH // row_tokens))
    return min(size, width)


def candidate_losses(problem: Problem, cands: torch.Tensor, ref_ids: torch.Tensor | None = None,
                     ref_kv: KV | None = None, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact losses (B,) and greedy matches (B,) of candidate suffixes ``cands`` (B × n).

    With ``ref_kv`` (the cache of ``before + ref_ids``), a candidate whose first token differing
    from ``ref_ids`` is at d reuses that cache up to d; candidates are sorted by d and batched,
    each batch recomputing from its smallest d (and holding more rows the shorter they are).
    Without it, every batch starts at the suffix."""
    b, n = cands.shape
    if ref_kv is not None and ref_ids is not None:
        differs = cands != ref_ids
        first = torch.where(differs.any(dim=1), differs.float().argmax(dim=1), torch.full_like(cands[:, 0], n))
    else:
        first = torch.zeros(b, dtype=torch.long, device=cands.device)
    order = torch.argsort(first, stable=True)
    first_sorted = first[order].tolist()
    tail = problem.tail_embeds.shape[1] + (0 if problem.config.prefix_cache else problem.n_before)
    losses = torch.empty(b, dtype=torch.float32, device=cands.device)
    matches = torch.empty(b, dtype=torch.bool, device=cands.device)
    shrink = 1  # halved on out-of-memory
    with torch.inference_mode():
        i = 0
        while i < b:
            start = first_sorted[i]
            if batch_size is not None:
                size = batch_size
            elif problem.config.naive:
                size = b
            else:
                size = auto_batch_size(problem, n - start + tail, b)
            chunk = order[i:i + max(1, size // shrink)]
            try:
                logits, _ = problem.forward(problem.embed(cands[chunk, start:]), start, ref_kv)
            except RuntimeError as err:  # out of memory: halve the batch and retry
                if not _oom(err) or len(chunk) == 1:
                    raise
                shrink *= 2
                gc.collect()
                continue
            losses[chunk] = problem.loss_of(logits).float()
            matches[chunk] = problem.matches(logits)
            i += len(chunk)
    return losses, matches


def verify_greedy(problem: Problem, ids: Sequence[int]) -> tuple[float, bool]:
    """Loss and greedy match of ``ids`` on one uncached forward pass over the whole sequence."""
    with torch.inference_mode():
        suffix = torch.tensor(list(ids), dtype=torch.long, device=problem.device)
        seq = torch.cat([problem.before_ids, suffix, problem.after_ids, problem.target[:-1]]).unsqueeze(0)
        logits = problem.model(input_ids=seq, use_cache=False, logits_to_keep=problem.n_target).logits
        return float(problem.loss_of(logits)[0]), bool(problem.matches(logits)[0])


# =========================================================================== the optimiser


class _Objective:
    """The losses over every (model, prompt) pair, reduced by ``loss_reduction``."""

    def __init__(self, problems: list[Problem], n_models: int, config: GCGConfig) -> None:
        self.problems, self.n_models, self.config = problems, n_models, config
        self.ref_ids: torch.Tensor | None = None
        self.ref_kvs: list[KV | None] = [None] * len(problems)

    def reduce(self, per_pair: torch.Tensor) -> torch.Tensor:
        return per_pair.mean(0) if self.config.loss_reduction == "mean" else per_pair.sum(0)

    def gradient(self, ids: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
        """Σ over models of the row-normalised gradient of that model's pairs' loss (one model:
        the gradient itself up to a positive per-row scale, which top-k ignores)."""
        grads, losses, matched = [], [], []
        for i, p in enumerate(self.problems):
            g, loss, match, kv = token_gradient(p, ids)
            grads.append(g.float())
            losses.append(loss)
            matched.append(match)
            self.ref_kvs[i] = kv
        self.ref_ids = ids
        per_model = torch.stack(grads).view(self.n_models, -1, *grads[0].shape).sum(1)
        per_model = per_model / per_model.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return per_model.sum(0), float(self.reduce(torch.tensor(losses))), all(matched)

    def set_reference(self, ids: torch.Tensor) -> None:
        """Make ``ids`` the reference suffix and compute its KV caches, without a gradient (the
        draft model of probe sampling)."""
        self.ref_ids = ids
        for i, p in enumerate(self.problems):
            self.ref_kvs[i] = None
            if p.config.suffix_cache:
                with torch.inference_mode():
                    cache = _cache(p.model, p.prefix_kv, 1)
                    p.model(inputs_embeds=p.embed(ids).unsqueeze(0), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
                    self.ref_kvs[i] = _kv_of(cache)

    def losses(self, cands: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_pair, match = [], []
        for p, kv in zip(self.problems, self.ref_kvs):
            loss, m = candidate_losses(p, cands, self.ref_ids, kv, self.config.batch_size)
            per_pair.append(loss)
            match.append(m)
        return self.reduce(torch.stack(per_pair)), torch.stack(match).all(dim=0)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks); 0 when undefined."""
    if a.numel() < 2:
        return 0.0
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


class _Buffer:
    """The best suffixes seen (nanoGCG's attack buffer): size 0 keeps only the latest step's
    best candidate, so the search always moves (as the original GCG)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids: list[torch.Tensor] = []
        self.losses: list[float] = []

    def add(self, loss: float, ids: torch.Tensor) -> None:
        if self.size == 0:
            self.ids, self.losses = [ids], [loss]
        elif len(self.ids) < self.size:
            self.ids.append(ids)
            self.losses.append(loss)
        elif loss < max(self.losses):
            worst = self.losses.index(max(self.losses))
            self.ids[worst], self.losses[worst] = ids, loss

    def best(self) -> tuple[float, torch.Tensor]:
        i = self.losses.index(min(self.losses))
        return self.losses[i], self.ids[i]


def _init_ids(tokenizer: Any, config: GCGConfig, device: torch.device) -> torch.Tensor:
    init = config.optim_str_init
    ids = tokenizer.encode(init, add_special_tokens=False) if isinstance(init, str) else list(init)
    if not ids:
        raise ValueError("GCG config `optim_str_init` encodes to no tokens")
    if config.n_replace > len(ids):
        raise ValueError(f"GCG config `n_replace` ({config.n_replace}) exceeds the suffix length ({len(ids)} tokens "
                         "of `optim_str_init`)")
    return torch.tensor(ids, dtype=torch.long, device=device)


def _random_inits(ids: torch.Tensor, count: int, forbidden: torch.Tensor, tokenizer: Any,
                  generator: torch.Generator) -> torch.Tensor:
    """``count`` random suffixes of the same length from single printable-ASCII-character tokens
    (the buffer's other initial entries)."""
    chars = [chr(c) for c in range(33, 127)]
    singles = [tokenizer.encode(c, add_special_tokens=False) for c in chars]
    pool = torch.tensor([s[0] for s in singles if len(s) == 1 and not forbidden[s[0]]], dtype=torch.long)
    pick = torch.randint(len(pool), (count, ids.shape[0]), generator=generator)
    return pool[pick].to(ids.device)


Messages = str | Sequence[dict[str, str]]


def segments_of(tokenizer: Any, messages: Messages | Segments) -> Segments:
    """nanoGCG's prompt convention: a user message (str) or a conversation whose contents may hold
    ``{optim_str}`` where the suffix goes (default: appended to the last message, no separator),
    rendered with the tokenizer's chat template and split there. Unlike nanoGCG 0.3.0, the BOS
    text is not stripped (it strips *every* occurrence, which breaks templates whose BOS is a
    turn marker, as SmolLM2's ``<|im_start|>``); both sides are encoded without special tokens."""
    if isinstance(messages, Segments):
        return messages
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    if not any("{optim_str}" in m["content"] for m in msgs):
        msgs[-1]["content"] += "{optim_str}"
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if text.count("{optim_str}") != 1:
        raise ValueError("GCG: `{optim_str}` must occur exactly once in the rendered conversation")
    before, after = text.split("{optim_str}")
    return Segments(tuple(tokenizer.encode(before, add_special_tokens=False)),
                    tuple(tokenizer.encode(after, add_special_tokens=False)))


def run(model: Any, tokenizer: Any, prompts: Messages | Segments | Sequence[Messages | Segments],
        targets: str | Sequence[str], config: GCGConfig | None = None) -> GCGResult:
    """Optimise one suffix for ``prompts`` towards ``targets`` (one per prompt), nanoGCG's
    ``run(model, tokenizer, messages, target, config)``. A prompt is a ``Segments`` (token
    ids around the suffix, as ``PromptBuilder.segments`` gives) or nanoGCG-style messages (see
    ``segments_of``). One prompt: individual GCG; a list of prompts (with a list of targets):
    universal GCG. ``model`` may be a list of models sharing ``tokenizer`` (multi-model)."""
    config = config or GCGConfig()
    config.validate()
    t0 = time.perf_counter()
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    single = isinstance(prompts, (str, Segments)) or (isinstance(prompts, (list, tuple)) and bool(prompts)
                                                      and isinstance(prompts[0], dict))
    prompt_list = [segments_of(tokenizer, p) for p in ([prompts] if single else list(prompts))]
    target_list = [targets] if isinstance(targets, str) else list(targets)
    if len(target_list) != len(prompt_list):
        raise ValueError(f"GCG got {len(prompt_list)} prompts but {len(target_list)} targets")
    vocab = models[0].get_input_embeddings().weight.shape[0]
    if any(m.get_input_embeddings().weight.shape[0] != vocab for m in models):
        raise ValueError("GCG models must share one vocabulary (same embedding size)")
    generator = torch.Generator().manual_seed(0 if config.seed is None else config.seed)
    device = models[0].device
    target_ids = [tokenizer.encode(t, add_special_tokens=False) for t in target_list]
    problems = [Problem(m, seg, tgt, config) for m in models for seg, tgt in zip(prompt_list, target_ids)]
    objective = _Objective(problems, len(models), config)
    forbidden = forbidden_mask(tokenizer, vocab, config.allow_non_ascii)
    draft = None
    if config.probe_sampling is not None:
        dm = config.probe_sampling.draft_model
        if dm.get_input_embeddings().weight.shape[0] != vocab:
            raise ValueError("GCG config `probe_sampling.draft_model` must share the target's tokenizer and vocabulary")
        draft = _Objective([Problem(dm, seg, tgt, config) for seg, tgt in zip(prompt_list, target_ids)], 1, config)

    ids = _init_ids(tokenizer, config, device)
    buffer = _Buffer(config.buffer_size)
    grad, init_loss, init_match = objective.gradient(ids)
    buffer.add(init_loss, ids)
    if config.buffer_size > 1:
        extra = _random_inits(ids, config.buffer_size - 1, forbidden, tokenizer, generator)
        extra_losses, _ = objective.losses(extra)
        for loss, row in zip(extra_losses.tolist(), extra):
            buffer.add(loss, row)
    best = (not init_match, init_loss, ids)  # matched suffixes first, then by loss
    losses: list[float] = []
    strings: list[str] = []
    step_times: list[float] = []
    evaluated, stop = 0, "num_steps"
    bar = _progress(config)
    if config.early_stop and init_match:
        stop = "early_stop"
    for step in range(0 if stop == "early_stop" else config.num_steps):
        if config.time_budget_s is not None and time.perf_counter() - t0 >= config.time_budget_s:
            stop = "time_budget"
            break
        _, current = buffer.best()
        if step > 0 or not torch.equal(current, ids):
            grad, _, _ = objective.gradient(current)
        cands = sample_candidates(current, grad, config.search_width, config.topk, config.n_replace, forbidden,
                                  generator)
        if config.filter_ids:
            cands = cands[retokenizes(tokenizer, cands).to(cands.device)]
            if cands.shape[0] == 0:
                raise RuntimeError("GCG: no candidate survives decode -> encode; set `filter_ids: false` or "
                                   "choose another `optim_str_init`")
        cands = torch.unique(cands, dim=0)
        step_loss, step_ids, step_match, n_eval = _evaluate(objective, draft, cands, config, generator)
        evaluated += n_eval
        buffer.add(step_loss, step_ids)
        losses.append(step_loss)
        strings.append(tokenizer.decode(buffer.best()[1].tolist()))
        step_times.append(time.perf_counter() - t0)
        best = min(best, (not step_match, step_loss, step_ids), key=lambda e: (e[0], e[1]))
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", best=f"{best[1]:.3f}")
        if config.early_stop and step_match:
            stop = "early_stop"
            break
    bar.close()
    best_ids = best[2].tolist()
    checks = [verify_greedy(p, best_ids) for p in problems]
    return GCGResult(best_loss=float(best[1]), best_string=tokenizer.decode(best_ids), best_ids=best_ids,
                     losses=losses, strings=strings, steps=len(losses), wall_time_s=time.perf_counter() - t0,
                     matched=all(m for _, m in checks), matched_per_prompt=[m for _, m in checks],
                     init_loss=init_loss, stop_reason=stop, step_times=step_times, evaluated=evaluated)


def _evaluate(objective: _Objective, draft: _Objective | None, cands: torch.Tensor, config: GCGConfig,
              generator: torch.Generator) -> tuple[float, torch.Tensor, bool, int]:
    """The step's best candidate: (loss, ids, greedy match, losses computed on the target)."""
    if draft is None:
        losses, match = objective.losses(cands)
        i = int(losses.argmin())
        return float(losses[i]), cands[i], bool(match[i]), cands.shape[0]
    ps = config.probe_sampling
    b = cands.shape[0]
    probe = torch.randperm(b, generator=generator)[:max(1, b // ps.sampling_factor)].to(cands.device)
    probe_losses, probe_match = objective.losses(cands[probe])
    draft.set_reference(objective.ref_ids)
    draft_losses, _ = draft.losses(cands)
    alpha = (1.0 + _spearman(probe_losses.cpu(), draft_losses[probe].cpu())) / 2.0
    k = max(1, min(b, int((1.0 - alpha) * b / ps.r)))
    chosen = draft_losses.topk(k, largest=False).indices
    chosen_losses, chosen_match = objective.losses(cands[chosen])
    idx = torch.cat([probe, chosen])
    all_losses, all_match = torch.cat([probe_losses, chosen_losses]), torch.cat([probe_match, chosen_match])
    i = int(all_losses.argmin())
    return float(all_losses[i]), cands[idx[i]], bool(all_match[i]), idx.shape[0]


def _progress(config: GCGConfig) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=config.num_steps, desc="gcg", unit="step", leave=False, disable=not config.progress)


def load_model(path: Any, dtype: str = "float32", device: str = "cpu") -> Any:
    """An HF causal LM for optimisation: eval mode, no parameter gradients."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


# =========================================================================== the harness attack


class ProbeSamplingSpec(StrictModel):
    """Probe sampling in a recipe: the draft is any model spec sharing the target's tokenizer."""

    draft_model: str = Field(description="model spec (alias, folder, hub id, recipe.yaml#model)")
    r: int = Field(8, ge=1)
    sampling_factor: int = Field(16, ge=1)


@dataclass(frozen=True)
class _Job:
    """One optimisation: the examples it serves, what it optimises on, and its artefact key."""

    key: str
    examples: tuple[Example, ...]  # the examples whose prompts it is planned into
    train: tuple[Example, ...]  # the examples it optimises on
    segments: tuple[Segments, ...]
    targets: tuple[str, ...]


class GCGAttack(AttackConfig):
    """GCG adversarial suffix (Zou et al. 2023), optimised on the target's weights, judged through the engine."""

    type: Literal["gcg"] = "gcg"
    mode: Literal["individual", "universal"] = Field(
        "individual", description="individual: one suffix per prompt; universal: one suffix for all prompts")
    universal_train: int | None = Field(
        None, ge=1, description="universal: optimise on the first N prompts (all when unset); every prompt is "
                                "evaluated, attack_info.train says which were optimised on")
    ensemble: list[str] = Field(
        default_factory=list, description="more model specs (sharing the target's tokenizer) the suffix is optimised "
                                          "on too, as llm-attacks' multi-model universal GCG; evaluated on the target")
    target_field: str = Field("target", description="dataset column with the target (\"Sure, here is…\")")
    separator: str = Field(" ", description="text between the user's request and the suffix")
    system: str = Field("default", description="default (the recipe's / template's) | none | a system prompt text")
    baseline: bool = Field(False, description="also plan each prompt without a suffix (setting suffix=none)")
    # --- the optimiser (GCGConfig); defaults are nanoGCG 0.3.0's
    optim_str_init: str = DEFAULT_INIT
    num_steps: int = Field(DEFAULT_NUM_STEPS, ge=1)
    search_width: int = Field(DEFAULT_SEARCH_WIDTH, ge=1)
    topk: int = Field(DEFAULT_TOPK, ge=1)
    n_replace: int = Field(1, ge=1)
    buffer_size: int = Field(0, ge=0)
    use_mellowmax: bool = False
    mellowmax_alpha: float = Field(1.0, gt=0.0)
    allow_non_ascii: bool = False
    filter_ids: bool = True
    use_prefix_cache: bool = True
    use_suffix_cache: bool = True
    early_stop: bool = True
    seed: int | None = Field(None, description="defaults to the recipe seed")
    batch_size: int | None = Field(None, ge=1, description="candidates per forward pass; unset: from free memory")
    loss_reduction: Literal["mean", "sum"] = "mean"
    time_budget_s: float | None = Field(None, gt=0.0, description="stop a prompt's optimisation after this long "
                                                                   "(machine-dependent results)")
    probe_sampling: ProbeSamplingSpec | None = None
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("optim_str_init")
    @classmethod
    def _init(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("optim_str_init is empty")
        return v

    @model_validator(mode="after")
    def _check(self) -> "GCGAttack":
        if self.universal_train is not None and self.mode != "universal":
            raise ValueError("`universal_train` needs `mode: universal`")
        return self

    # -- settings -------------------------------------------------------------------------
    def algorithm(self) -> dict[str, Any]:
        """Every setting that changes the optimised suffix (hashed into the artefact key)."""
        keep = ("optim_str_init", "num_steps", "search_width", "topk", "n_replace", "buffer_size", "use_mellowmax",
                "mellowmax_alpha", "allow_non_ascii", "filter_ids", "use_prefix_cache", "use_suffix_cache",
                "early_stop", "batch_size", "loss_reduction", "time_budget_s", "probe_sampling", "dtype")
        return self.model_dump(mode="json", include=set(keep))

    def gcg_config(self, seed: int, draft: Any = None) -> GCGConfig:
        probe = None
        if self.probe_sampling is not None:
            probe = ProbeSamplingConfig(draft, self.probe_sampling.r, self.probe_sampling.sampling_factor)
        return GCGConfig(num_steps=self.num_steps, optim_str_init=self.optim_str_init, search_width=self.search_width,
                         topk=self.topk, n_replace=self.n_replace, buffer_size=self.buffer_size,
                         use_mellowmax=self.use_mellowmax, mellowmax_alpha=self.mellowmax_alpha,
                         allow_non_ascii=self.allow_non_ascii, filter_ids=self.filter_ids,
                         use_prefix_cache=self.use_prefix_cache, use_suffix_cache=self.use_suffix_cache,
                         early_stop=self.early_stop, seed=seed, batch_size=self.batch_size,
                         loss_reduction=self.loss_reduction, time_budget_s=self.time_budget_s, probe_sampling=probe)

    def _device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def target_text(self, ex: Example) -> str | None:
        value = getattr(ex, self.target_field, None) if self.target_field in Example.__dataclass_fields__ \
            else ex.meta.get(self.target_field)
        return str(value) if value else None

    # -- jobs and artefacts ---------------------------------------------------------------
    def jobs(self, examples: list[Example], target: Target, seed: int, draft_id: str | None = None,
             ensemble_ids: Sequence[str] = ()) -> list[_Job]:
        """The optimisations ``examples`` need, each keyed by the model fingerprint, the prompt
        and target texts, the prompt's token segments (template, system prompt, separator), the
        algorithm settings, the seed and the mode."""
        with_target = [ex for ex in examples if self.target_text(ex)]
        if self.mode == "individual":
            groups = [((ex,), (ex,)) for ex in with_target]
        else:
            train = with_target[: self.universal_train] if self.universal_train else with_target
            groups = [(tuple(with_target), tuple(train))] if train else []
        jobs = []
        for served, train in groups:
            segs = tuple(target.builder.segments(ex.prompt, self.separator, self.system) for ex in train)
            texts = tuple(self.target_text(ex) or "" for ex in train)
            key = "gcg:" + content_hash({
                "model": target.model.fingerprint_id, "draft": draft_id, "ensemble": list(ensemble_ids), "prompts": [ex.prompt for ex in train],
                "targets": list(texts), "segments": content_hash([[s.before, s.after] for s in segs]),
                "config": self.algorithm(), "seed": seed, "mode": self.mode, "separator": self.separator,
                "system": self.system}, 32)
            jobs.append(_Job(key, served, train, segs, texts))
        return jobs

    @staticmethod
    def artefact(result: GCGResult) -> dict[str, Any]:
        return {"suffix": result.best_string, "suffix_ids": result.best_ids, "loss": result.best_loss,
                "init_loss": result.init_loss, "steps": result.steps, "matched": result.matched,
                "matched_per_prompt": result.matched_per_prompt, "stop_reason": result.stop_reason,
                "wall_time_s": round(result.wall_time_s, 3), "losses": [round(x, 5) for x in result.losses]}

    # -- hooks ----------------------------------------------------------------------------
    def prepare(self, examples: list[Example], target: Target, ctx: Any) -> dict[str, Any]:
        """Look up or optimise every suffix ``examples`` need; each is committed to the artefact
        store as soon as it is found, so a killed run resumes at the next prompt. The model is
        loaded (and live engines freed) only when something is missing."""
        from tqdm.auto import tqdm

        seed = self.seed if self.seed is not None else ctx.seed
        draft_model = ctx.resolve(self.probe_sampling.draft_model) if self.probe_sampling else None
        extra = [ctx.resolve(spec) for spec in self.ensemble]
        jobs = self.jobs(examples, target, seed, draft_model.fingerprint_id if draft_model else None,
                         [m.fingerprint_id for m in extra])
        found = {job.key: ctx.artifacts.get(job.key) for job in jobs}
        missing = [job for job in jobs if found[job.key] is None]
        if missing:
            ctx.free_engines()  # gradient work never competes with a live engine
            device = self._device()
            model = load_model(target.model.path, self.dtype, device)
            draft = load_model(draft_model.path, self.dtype, device) if draft_model else None
            models = [model] + [load_model(m.path, self.dtype, device) for m in extra]
            config = self.gcg_config(seed, draft)
            tokenizer = target.builder.tokenizer
            with tqdm(missing, desc=f"gcg {target.name}", unit="suffix", disable=not ctx.progress) as bar:
                for job in bar:
                    config.progress = ctx.progress
                    result = run(models, tokenizer, list(job.segments), list(job.targets), config)
                    art = self.artefact(result)
                    ctx.artifacts.put(job.key, art)
                    found[job.key] = art
                    bar.set_postfix(loss=f"{result.best_loss:.3f}", steps=result.steps, matched=result.matched)
            del model, models, draft
            gc.collect()
        out: dict[str, Any] = {}
        for job in jobs:
            train_ids = {ex.id for ex in job.train}
            for ex in job.examples:
                out[ex.id] = {**found[job.key], "train": ex.id in train_ids}
        return out

    def plan(self, examples: list[Example], target: Target, artifacts: dict[str, Any],
             seed: int) -> Iterator[PlannedSample]:
        builder = target.builder
        sampling = self.sampling.to_sampling(seed)
        setting = {"suffix": "gcg" if self.mode == "individual" else "gcg-universal"}
        for ex in examples:
            if self.baseline:
                yield PlannedSample(ex, {"suffix": "none"}, sampling, builder.build(ex.prompt, system=self.system),
                                    info={"suffix": "", "suffix_tokens": 0})
            art = artifacts.get(ex.id)
            if art is None:
                reason = f"no {self.target_field} to optimise towards" if not self.target_text(ex) else "no suffix"
                yield PlannedSample(ex, setting, sampling, None, skipped=reason)
                continue
            prompt = builder.build(ex.prompt, suffix_ids=art["suffix_ids"], separator=self.separator,
                                   system=self.system)
            info = {k: art[k] for k in ("suffix", "suffix_ids", "loss", "steps", "matched", "wall_time_s")}
            info.update(suffix_tokens=len(art["suffix_ids"]), init_loss=art.get("init_loss"),
                        stop_reason=art.get("stop_reason"), mode=self.mode)
            if self.mode == "universal":
                info["train"] = art.get("train", True)
            yield PlannedSample(ex, setting, sampling, prompt, info=info)
