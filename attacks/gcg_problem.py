"""GCG's per-(model, prompt) maths: the optimiser's settings, the token filters, candidate
sampling, the loss and its token gradient, and exact candidate losses with the prefix and suffix
KV caches (see ``attacks.gcg_optim`` for the method and its sources)."""

from __future__ import annotations

import gc
import math
import weakref
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, model_validator

from harness.core import StrictModel, with_reference_mode
from harness.prompts import Segments

DEFAULT_INIT = " ".join(["x"] * 20)  # nanoGCG 0.3.0's init (Zou et al. used 20 "!" tokens)
DEFAULT_NUM_STEPS = 250  # nanoGCG 0.3.0 (Zou et al.: 500)
DEFAULT_SEARCH_WIDTH = 512
DEFAULT_TOPK = 256
CPU_TOKENS_PER_BATCH = 1024  # tokens per forward pass on CPU (see auto_batch_size)

__all__ = ["GCGConfig", "GCGSettings", "KV", "Problem", "ProbeSamplingConfig", "REFERENCE_MODES", "auto_batch_size",
           "candidate_losses", "forbidden_mask", "kv_cache", "kv_of", "mellowmax", "retokenizes", "sample_candidates",
           "target_loss", "token_gradient", "verify_greedy"]


# =========================================================================== configuration


# what ``reference: nanogcg`` fixes (key -> value) and the defaults it changes (the recipe may set
# those, as nanoGCG's own config can): nanoGCG 0.3.0 with llm-attacks' universal gradient
REFERENCE_MODES: dict[str, dict[str, Any]] = {
    "nanogcg": {"mellowmax_on": "neg_logits", "grad_norm": "prompt", "early_stop_on": "any"},
}
REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {"nanogcg": {"early_stop": False}}
# keys added after artefact keys were recorded: left out of the hashes while unset (None)
UNHASHED_WHEN_NONE = ("reference", "mellowmax_on", "grad_norm", "early_stop_on")


class GCGSettings(StrictModel):
    """The optimiser settings a recipe sets too (written once: ``GCGConfig`` and the attack
    ``attacks.gcg.GCGAttack`` both extend it); the defaults are nanoGCG 0.3.0's (250 steps,
    20 × "x", width 512, top-k 256), except ``early_stop`` (on here, off in nanoGCG).

    Three semantics differ from the references unless set (``reference: nanogcg`` sets all
    three and turns ``early_stop`` off by default): mellowmax of the per-token cross-entropies
    (nanoGCG: of the negative target logits), universal gradients summed raw per model
    (llm-attacks: each prompt's row-normalised first) and early stop on the step's best
    candidate (nanoGCG: on any candidate of the step)."""

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
    batch_size: int | None = Field(None, ge=1, description="candidates per forward pass; unset: from free memory "
                                                           "(and a CPU token budget)")
    loss_reduction: Literal["mean", "sum"] = "mean"
    time_budget_s: float | None = Field(None, gt=0.0, description="stop a prompt's optimisation after this long "
                                                                   "(machine-dependent results)")
    mellowmax_on: Literal["ce", "neg_logits"] | None = Field(
        None, description="what mellowmax smooths over the target: unset/ce: per-token cross-entropies; "
                          "neg_logits: the negative target logits (nanoGCG)")
    grad_norm: Literal["model", "prompt"] | None = Field(
        None, description="universal: unset/model: each model's summed gradient row-normalised; prompt: each "
                          "prompt's gradient row-normalised before the sum too (llm-attacks)")
    early_stop_on: Literal["best", "any"] | None = Field(
        None, description="unset/best: early stop when the step's best candidate matches the target; any: when any "
                          "candidate of the step (or of the initial buffer) does (nanoGCG)")
    reference: Literal["nanogcg"] | None = Field(None, description=(
        "nanogcg: nanoGCG's semantics (mellowmax of -logits, any-candidate early stop, off by default) with "
        "llm-attacks' per-prompt gradient normalisation in universal mode"))

    @model_validator(mode="before")
    @classmethod
    def _reference_fixes_its_keys(cls, data: Any) -> Any:
        return with_reference_mode(data, REFERENCE_MODES, "GCG", REFERENCE_DEFAULTS)


@dataclass
class ProbeSamplingConfig:
    """Probe sampling (Zhao et al. 2024): a draft model scores every candidate, the target scores
    a random probe set of B/``sampling_factor``; with α = (1 + ρ)/2 from the Spearman rank
    correlation ρ of the two on the probe set, the target also scores the
    ⌈(1 − α)·B/``r``⌉ best candidates by the draft. The draft must share the target's tokenizer."""

    draft_model: Any
    r: int = 8
    sampling_factor: int = 16


class GCGConfig(GCGSettings):
    """``run``'s settings (nanoGCG's ``GCGConfig``): the shared settings, an init that may also be
    token ids, ``naive`` evaluation, probe sampling with a loaded draft model, and a progress bar.
    Every value is checked on construction and assignment (a ``ValueError`` naming the key)."""

    model_config = ConfigDict(validate_assignment=True)

    optim_str_init: str | Sequence[int] = DEFAULT_INIT
    naive: bool = False
    probe_sampling: ProbeSamplingConfig | None = None
    progress: bool = False

    @model_validator(mode="after")
    def _probe(self) -> "GCGConfig":
        if self.probe_sampling is not None and (self.probe_sampling.r < 1 or self.probe_sampling.sampling_factor < 1):
            raise ValueError("GCG config `probe_sampling.r` and `probe_sampling.sampling_factor` must be >= 1")
        return self

    @property
    def prefix_cache(self) -> bool:
        return self.use_prefix_cache and not self.naive

    @property
    def suffix_cache(self) -> bool:
        return self.use_suffix_cache and self.prefix_cache


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


def target_loss(logits: torch.Tensor, target: torch.Tensor, mellowmax_alpha: float | None = None,
                mellowmax_on: str | None = None) -> torch.Tensor:
    """Per-row loss (B,) from logits (B × T × V) at the positions predicting ``target`` (T,):
    mean cross-entropy, or the mellowmax over the T positions of the per-token cross-entropies
    (``mellowmax_on`` ce, the default) or of the negative target logits (neg_logits, nanoGCG's:
    no log-softmax, so the other tokens' logits do not enter)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    b, t, v = logits.shape
    if mellowmax_alpha is not None and mellowmax_on == "neg_logits":
        picked = logits.gather(2, target.view(1, t, 1).expand(b, t, 1)).squeeze(2)
        return mellowmax(-picked, mellowmax_alpha, dim=1)
    ce = F.cross_entropy(logits.reshape(b * t, v), target.repeat(b), reduction="none").view(b, t)
    return ce.mean(dim=1) if mellowmax_alpha is None else mellowmax(ce, mellowmax_alpha, dim=1)


# =========================================================================== one (model, prompt) pair

KV = list[tuple[torch.Tensor, torch.Tensor]]


def kv_cache(model: Any, kv: KV | None, batch: int, length: int | None = None) -> Any:
    """A fresh DynamicCache holding ``kv`` (batch 1) cut to ``length`` tokens and broadcast to
    ``batch`` rows (a forward pass appends to its cache, so each pass gets its own)."""
    from transformers import DynamicCache

    if not kv:
        return DynamicCache(config=model.config)
    end = kv[0][0].shape[-2] if length is None else length
    return DynamicCache([(k[..., :end, :].expand(batch, -1, -1, -1), v[..., :end, :].expand(batch, -1, -1, -1))
                         for k, v in kv], config=model.config)


def kv_of(cache: Any) -> KV:
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
                cache = kv_cache(model, None, 1)
                model(inputs_embeds=self.before_embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
                self.prefix_kv = kv_of(cache)

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
        cache = kv_cache(self.model, kv, b, self.n_before + start)
        out = self.model(inputs_embeds=torch.cat([suffix_embeds, tail], dim=1), past_key_values=cache,
                         use_cache=True, logits_to_keep=self.n_target)
        return out.logits, (cache if keep_cache else None)

    def loss_of(self, logits: torch.Tensor) -> torch.Tensor:
        return target_loss(logits, self.target, self.mm_alpha, self.config.mellowmax_on)

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
        kv = [(k[..., :end, :], v[..., :end, :]) for k, v in kv_of(cache)]
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
