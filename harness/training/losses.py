"""Training objectives as pure, batch-vectorised tensor functions (TRL style).

Shapes: ``B`` sequences, ``T`` positions, ``V`` vocabulary. ``labels`` use -100 for
positions that are not supervised (prompt, harmful prefix, padding); logits and labels
are aligned the usual causal way (logits at t predict labels at t+1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the last logit and the first label so position t predicts token t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | y_<t) for every supervised token.

    Returns ``(logp, mask)``, both (B, T-1); ``logp`` is 0 where ``mask`` is False.
    Uses cross_entropy (fused log-softmax + gather) so no (B, T, V) log-prob tensor is kept.
    """
    logits, labels = shift(logits, labels)
    mask = labels != IGNORE
    safe = labels.masked_fill(~mask, 0)
    if logits.dtype in (torch.float16, torch.bfloat16):  # log-softmax in fp32 for stability
        logits = logits.float()
    # (B·T, V) rows are contiguous views; a (B, V, T) transpose makes CE ~10x slower on CPU
    logp = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), safe.reshape(-1), reduction="none")
    logp = logp.view(safe.shape)
    return logp * mask, mask


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose logits predict a supervised label (t where labels[t+1]
    is supervised). Only these need the LM head in training."""
    sel = torch.zeros_like(labels, dtype=torch.bool)
    sel[:, :-1] = labels[:, 1:] != IGNORE
    return sel


def selected_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs`` from the logits of the predicting positions only.

    ``logits`` is (N, V): one row per True entry of ``predicting_positions(labels)``, in
    row-major order (``hidden[sel]`` before the LM head). Returns the same (B, T-1) ``(logp,
    mask)`` as ``token_logprobs`` on the full (B, T, V) logits, without ever forming them: the
    head and the log-softmax cost N·V instead of B·T·V (in align recipes about half the
    positions are prompt, harmful prefix or padding)."""
    mask = labels[:, 1:] != IGNORE
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    flat = -F.cross_entropy(logits, labels[:, 1:][mask], reduction="none")
    logp = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    logp[mask] = flat
    return logp, mask


def avoided_token_loss(logits: torch.Tensor, labels: torch.Tensor, avoid_ids: torch.Tensor) -> torch.Tensor:
    """Unlikelihood of a token set A at the supervised positions (Welleck et al. 2020):

        ℓ_t = −log(1 − π_θ(A | x, y_<t)),   π_θ(A | ·) = Σ_{a ∈ A} π_θ(a | ·),

    as (B, T-1), 0 where nothing is supervised or where the label itself is in A. ``logits``
    are those of the predicting positions, (N, V), as for ``selected_token_logprobs``. With A
    the first tokens of the refusals, it pushes down a turn-around inside benign answers."""
    mask = labels[:, 1:] != IGNORE
    logits = logits.float()
    log_pa = torch.logsumexp(logits[:, avoid_ids], -1) - torch.logsumexp(logits, -1)
    flat = -torch.log((-torch.expm1(log_pa)).clamp(min=1e-6))  # 1 − π(A), kept off 0
    flat = flat * ~torch.isin(labels[:, 1:][mask], avoid_ids)
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    out[mask] = flat
    return out


def response_positions(mask: torch.Tensor) -> torch.Tensor:
    """1-based index t of each supervised token within its sequence's response (0 elsewhere)."""
    return torch.cumsum(mask.long(), dim=1) * mask


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Standard SFT: mean over supervised tokens of −log π_θ(y_t | x, y_<t)."""
    logp, mask = token_logprobs(logits, labels)
    return -(logp.sum() / mask.sum().clamp(min=1))


def beta_schedule(
    positions: torch.Tensor,
    beta: float = 0.1,
    bias_factor: float = 20.0,
    first_token_bias_factor: float = 5.0,
    bias_length: int = 5,
) -> torch.Tensor:
    """Token-wise β_t of the official code: β·first_token_bias_factor at t=1,
    β·bias_factor for 2 ≤ t ≤ bias_length, β after. Defaults: 0.5, 2, 0.1.

    ``positions`` are 1-based response positions (0 = not a response token; β is
    returned there too but is masked out by the loss).
    """
    betas = torch.full(positions.shape, beta, dtype=torch.float32, device=positions.device)
    betas = torch.where((positions >= 1) & (positions <= bias_length), beta * bias_factor, betas)
    if bias_length > 0:
        betas = torch.where(positions == 1, beta * first_token_bias_factor, betas)
    return betas


def constrained_token_loss(
    logp_policy: torch.Tensor,
    logp_ref: torch.Tensor,
    betas: torch.Tensor,
    weight_floor: float = 1e-3,
) -> torch.Tensor:
    """Per-token terms of the token-wise constrained objective (Qi et al. 2025, Eqn. 3):

        ℓ_t = (2/β_t) · softplus(β_t · Δ_t),   Δ_t = log π_ref(y_t | x, y_<t) − log π_θ(y_t | x, y_<t).

    Its gradient is the paper's closed form (Appendix D.2), a reweighted cross-entropy:

        ∇ℓ_t = −w_t · ∇ log π_θ(y_t | …),   w_t = 2·σ(β_t Δ_t),

    so where π_θ has already moved far above π_ref (Δ ≪ 0) the weight → 0 and early tokens,
    with large β_t, cannot drift far from the aligned model; as β → 0, w → 1 (plain SFT).
    As in the official code the weight is clamped below at ``weight_floor`` (1e-3), so no
    token is ignored entirely. The value returned is ℓ_t exactly; the gradient is that of the
    clamped form (``surrogate + (value − surrogate).detach()``): identical wherever w_t ≥ floor.
    """
    delta = logp_ref - logp_policy
    value = (2.0 / betas) * F.softplus(betas * delta)
    weight = (2.0 * torch.sigmoid(betas * delta)).clamp(min=weight_floor).detach()
    surrogate = -weight * logp_policy
    return surrogate + (value - surrogate).detach()


def constrained_loss(
    logp_policy: torch.Tensor,
    logp_ref: torch.Tensor,
    betas: torch.Tensor,
    mask: torch.Tensor,
    weight_floor: float = 1e-3,
) -> torch.Tensor:
    """Token mean of ``constrained_token_loss`` over ``mask``: (1/N) Σ_{b,t: mask} ℓ_t."""
    per_token = constrained_token_loss(logp_policy, logp_ref, betas, weight_floor) * mask
    return per_token.sum() / mask.sum().clamp(min=1)


def mix_losses(
    data_tokens: torch.Tensor,
    data_mask: torch.Tensor,
    anchor_tokens: torch.Tensor,
    anchor_mask: torch.Tensor,
    safety_weight: float = 0.2,
    mode: str = "weighted",
    n_data: torch.Tensor | int | None = None,
    n_anchor: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Combine per-token losses of the `data` rows and the utility-anchor rows.

    weighted (the paper's Eqn. 2):  α · mean_data(ℓ) + (1 − α) · mean_anchor(ℓ),  α = safety_weight;
    token_mean (the official code):  Σ ℓ over both parts / number of supervised tokens.
    Without anchor tokens both are mean_data(ℓ).

    ``n_data`` / ``n_anchor`` (default: the masks' token counts) are the batch's counts when the
    masks cover one chunk of it: both forms are linear in the per-token sums, so the chunks'
    losses add up to the batch's loss, and so do their gradients.
    """
    n_data = data_mask.sum() if n_data is None else torch.as_tensor(n_data)
    n_anchor = anchor_mask.sum() if n_anchor is None else torch.as_tensor(n_anchor)
    data_sum, anchor_sum = (data_tokens * data_mask).sum(), (anchor_tokens * anchor_mask).sum()
    if n_anchor == 0:
        return data_sum / n_data.clamp(min=1)
    if mode == "token_mean":
        return (data_sum + anchor_sum) / (n_data + n_anchor)
    if mode != "weighted":
        raise ValueError(f"unknown mix {mode!r}")
    return safety_weight * data_sum / n_data.clamp(min=1) + (1 - safety_weight) * anchor_sum / n_anchor


def sample_recovery_depth(
    harmful_lengths: torch.Tensor,
    generator: torch.Generator | None = None,
    p_zero: float = 0.5,
    max_k: int = 100,
) -> torch.Tensor:
    """Harmful-prefix depth k for each safety-recovery example (vectorised).

    k = 0 with probability ``p_zero``; otherwise k ~ Uniform{1, …, min(max_k, |h|)}, as
    in the official code (``randint(1, min(100, len(h)))``). A row with |h| = 0 gets k = 0.
    """
    n = harmful_lengths.shape[0]
    cap = harmful_lengths.clamp(max=max_k)
    u = torch.rand(n, generator=generator)
    zero = torch.rand(n, generator=generator) < p_zero
    k = 1 + torch.floor(u * cap.float()).long()  # uniform on 1..cap
    return torch.where(zero | (cap == 0), torch.zeros_like(k), torch.minimum(k, cap))


def loss_by_position(logp: torch.Tensor, mask: torch.Tensor, max_position: int = 64) -> torch.Tensor:
    """Mean −log π per response position t = 1..max_position (NaN where no token): the
    per-position diagnostic the trainer logs, to see *where* a model's behaviour moves."""
    pos = response_positions(mask).clamp(max=max_position + 1)
    nll = (-logp * mask).flatten()
    idx = pos.flatten()
    sums = torch.zeros(max_position + 2, dtype=nll.dtype, device=nll.device).index_add_(0, idx, nll.detach())
    counts = torch.zeros_like(sums).index_add_(0, idx, mask.flatten().to(nll.dtype))
    out = sums / counts
    return out[1:max_position + 1]
