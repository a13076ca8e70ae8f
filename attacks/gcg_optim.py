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
models of each model's row-normalised gradient (as llm-attacks does; ``grad_norm: prompt``
also normalises each prompt's gradient first, as its ``token_gradients`` does). Early stopping
fires once greedy decoding of the step's best suffix starts with the target on every pair
(``early_stop_on: any``: of any candidate of the step, nanoGCG's rule); that is checked with
the teacher-forced argmax of the same forward pass (greedy decoding reproduces y exactly iff
argmax p(· | …, y_<t) = y_t for every t), so it costs nothing extra.

``reference: nanogcg`` (``attacks.gcg_problem.REFERENCE_MODES``) fixes the three semantics in
which nanoGCG / llm-attacks differ: mellowmax of −logits, per-prompt gradient normalisation and
the any-candidate early stop, off unless set. What stays ours in that mode: the best suffix
prefers a matched one over a lower loss (nanoGCG: lowest loss), and the prompt is the harness's
token segments (nanoGCG strips the BOS text from the rendered template).

The per-pair maths (filters, sampling, losses, caches) lives in ``attacks.gcg_problem``;
``attacks.gcg.GCGAttack`` wraps the optimiser as a harness attack (``type: gcg``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from attacks.gcg_problem import (KV, GCGConfig, GCGSettings, Problem, ProbeSamplingConfig, candidate_losses,
                                 forbidden_mask, kv_cache, kv_of, retokenizes, sample_candidates, token_gradient,
                                 verify_greedy)
from harness.prompts import Segments

__all__ = ["GCGConfig", "GCGResult", "GCGSettings", "ProbeSamplingConfig", "combine_gradients", "load_model", "run",
           "segments_of"]


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


# =========================================================================== the optimiser


def _row_normalised(g: torch.Tensor) -> torch.Tensor:
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def combine_gradients(grads: torch.Tensor, n_models: int, per_prompt: bool = False) -> torch.Tensor:
    """One direction (n × |V|) from the per-pair gradients ``grads`` (models·prompts × n × |V|,
    model-major): Σ over models of the row-normalised Σ over that model's prompts. With
    ``per_prompt`` each prompt's gradient is row-normalised before that sum, as llm-attacks'
    ``token_gradients`` returns it, so a prompt with large gradients does not drown the others."""
    if per_prompt:
        grads = _row_normalised(grads)
    per_model = grads.view(n_models, -1, *grads.shape[1:]).sum(1)
    return _row_normalised(per_model).sum(0)


class _Objective:
    """The losses over every (model, prompt) pair, reduced by ``loss_reduction``."""

    def __init__(self, problems: list[Problem], n_models: int, config: GCGConfig) -> None:
        self.problems, self.n_models, self.config = problems, n_models, config
        self.ref_ids: torch.Tensor | None = None
        self.ref_kvs: list[KV | None] = [None] * len(problems)

    def reduce(self, per_pair: torch.Tensor) -> torch.Tensor:
        return per_pair.mean(0) if self.config.loss_reduction == "mean" else per_pair.sum(0)

    def gradient(self, ids: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
        """The search direction (``combine_gradients``; one pair: the gradient itself up to a
        positive per-row scale, which top-k ignores), the reduced loss and the greedy match."""
        grads, losses, matched = [], [], []
        for i, p in enumerate(self.problems):
            g, loss, match, kv = token_gradient(p, ids)
            grads.append(g.float())
            losses.append(loss)
            matched.append(match)
            self.ref_kvs[i] = kv
        self.ref_ids = ids
        direction = combine_gradients(torch.stack(grads), self.n_models, self.config.grad_norm == "prompt")
        return direction, float(self.reduce(torch.tensor(losses))), all(matched)

    def set_reference(self, ids: torch.Tensor) -> None:
        """Make ``ids`` the reference suffix and compute its KV caches, without a gradient (the
        draft model of probe sampling)."""
        self.ref_ids = ids
        for i, p in enumerate(self.problems):
            self.ref_kvs[i] = None
            if p.config.suffix_cache:
                with torch.inference_mode():
                    cache = kv_cache(p.model, p.prefix_kv, 1)
                    p.model(inputs_embeds=p.embed(ids).unsqueeze(0), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
                    self.ref_kvs[i] = kv_of(cache)

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
    any_rule = config.early_stop_on == "any"
    grad, init_loss, init_match = objective.gradient(ids)
    buffer.add(init_loss, ids)
    init_any = init_match
    if config.buffer_size > 1:
        extra = _random_inits(ids, config.buffer_size - 1, forbidden, tokenizer, generator)
        extra_losses, extra_match = objective.losses(extra)
        init_any = init_any or bool(extra_match.any())
        for loss, row in zip(extra_losses.tolist(), extra):
            buffer.add(loss, row)
    best = (not init_match, init_loss, ids)  # matched suffixes first, then by loss
    losses: list[float] = []
    strings: list[str] = []
    step_times: list[float] = []
    evaluated, stop = 0, "num_steps"
    bar = _progress(config)
    if config.early_stop and init_match and not any_rule:
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
        step_loss, step_ids, step_match, any_match, n_eval = _evaluate(objective, draft, cands, config, generator)
        evaluated += n_eval
        buffer.add(step_loss, step_ids)
        losses.append(step_loss)
        strings.append(tokenizer.decode(buffer.best()[1].tolist()))
        step_times.append(time.perf_counter() - t0)
        best = min(best, (not step_match, step_loss, step_ids), key=lambda e: (e[0], e[1]))
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", best=f"{best[1]:.3f}")
        # nanoGCG's flag: set by any candidate (the initial buffer's too), checked after the step
        if config.early_stop and (step_match or (any_rule and (any_match or init_any))):
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
              generator: torch.Generator) -> tuple[float, torch.Tensor, bool, bool, int]:
    """The step's best candidate: (loss, ids, its greedy match, whether any candidate scored on
    the target matches, losses computed on the target)."""
    if draft is None:
        losses, match = objective.losses(cands)
        i = int(losses.argmin())
        return float(losses[i]), cands[i], bool(match[i]), bool(match.any()), cands.shape[0]
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
    return float(all_losses[i]), cands[idx[i]], bool(all_match[i]), bool(all_match.any()), idx.shape[0]


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
