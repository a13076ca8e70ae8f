"""Paired statistics for comparing two evaluations of the same prompts (pure functions).

Two runs of one benchmark share their prompts, so their difference is measured on pairs
(Miller 2024, "Adding Error Bars to Evals", arXiv 2411.00640, §4–5): the per-prompt
differences cancel the prompt-to-prompt variance that an unpaired test counts twice, and
prompts that are not independent (near-duplicates, one template rephrased) are resampled as
clusters.

- ``mcnemar_exact``: McNemar's exact test on one binary outcome per prompt. Only the
  discordant prompts carry information: b = harmful in the candidate only, c = harmful in
  the baseline only; under H0 (no change) b ~ Binomial(b + c, ½).
- ``paired_cluster_bootstrap``: a percentile bootstrap interval of the mean per-prompt
  difference (candidate − baseline), resampling whole clusters with replacement and the two
  runs together (the same draw for both), vectorised and seeded.
- ``holm``: Holm's step-down adjustment of several p-values (family-wise error ≤ α).
- ``wilson``: the Wilson score interval (``harness.summary.wilson``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy.stats import binomtest

from harness.summary import wilson

__all__ = ["BootstrapInterval", "McNemar", "holm", "mcnemar_exact", "paired_cluster_bootstrap", "wilson"]

Alternative = Literal["two-sided", "greater", "less"]
_CHUNK = 2000  # bootstrap replicates drawn at once (memory: chunk × clusters integers)


@dataclass(frozen=True)
class McNemar:
    """Discordant counts and the exact p-value. ``b``: outcome 1 in the candidate only (new
    failures), ``c``: outcome 1 in the baseline only (fixed); ``alternative="greater"`` tests
    H1: P(b) > P(c), i.e. the candidate has more 1s."""

    b: int
    c: int
    p_value: float
    alternative: Alternative


def mcnemar_exact(b: int, c: int, alternative: Alternative = "two-sided") -> McNemar:
    """McNemar's exact (binomial) test on ``b`` and ``c`` discordant pairs: the p-value of
    b successes in b + c trials with p = ½ (scipy's ``binomtest``; two-sided as scipy
    defines it, which for p = ½ is min(1, 2·P(X ≤ min(b, c)))). No discordant pair: p = 1."""
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise ValueError(f"mcnemar_exact: discordant counts must be non-negative integers, got b={b}, c={c}")
    b, c = int(b), int(c)
    if b + c == 0:
        return McNemar(b, c, 1.0, alternative)
    return McNemar(b, c, float(binomtest(b, b + c, 0.5, alternative=alternative).pvalue), alternative)


def discordant(baseline: Sequence[bool], candidate: Sequence[bool]) -> tuple[int, int]:
    """(b, c) of paired binary outcomes: b = 1 in the candidate only, c = 1 in the baseline only."""
    if len(baseline) != len(candidate):
        raise ValueError(f"discordant: {len(baseline)} baseline vs {len(candidate)} candidate outcomes")
    base = np.asarray(baseline, dtype=bool)
    cand = np.asarray(candidate, dtype=bool)
    return int((cand & ~base).sum()), int((base & ~cand).sum())


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order: the i-th smallest of m is
    multiplied by (m − i + 1), then made monotone and capped at 1. Reject H_i iff adjusted
    p_i ≤ α (family-wise error rate ≤ α, any dependence)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    if np.isnan(p).any():
        raise ValueError("holm: p-values contain NaN")
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = scaled
    return out.tolist()


@dataclass(frozen=True)
class BootstrapInterval:
    """Mean paired difference (candidate − baseline) with a percentile bootstrap interval.

    ``low``/``high`` are the α and 1 − α quantiles of the bootstrap distribution: a two-sided
    (1 − 2α) interval whose ``high`` end is the one-sided (1 − α) upper confidence bound (the
    non-inferiority bound) and ``low`` the one-sided lower bound."""

    estimate: float
    low: float
    high: float
    alpha: float
    n: int  # paired units (prompts)
    n_clusters: int
    n_boot: int
    seed: int


def _cluster_sums(diffs: np.ndarray, clusters: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sum of differences and number of units, clusters in first-seen order."""
    index: dict[str, int] = {}
    ids = np.fromiter((index.setdefault(str(c), len(index)) for c in clusters), dtype=np.int64, count=len(clusters))
    sums = np.bincount(ids, weights=diffs, minlength=len(index))
    counts = np.bincount(ids, minlength=len(index)).astype(float)
    return sums, counts


def paired_cluster_bootstrap(baseline: Sequence[float], candidate: Sequence[float], clusters: Sequence[str] | None = None,
                             alpha: float = 0.05, n_boot: int = 10_000, seed: int = 0) -> BootstrapInterval:
    """Percentile bootstrap of mean(candidate − baseline) over paired units.

    ``baseline[i]`` and ``candidate[i]`` are one unit's values in the two runs (e.g. a prompt's
    harmful fraction); ``clusters[i]`` its cluster (default: every unit its own). Each replicate
    draws C clusters with replacement (multinomial counts w_c, the same for both runs, so the
    pairing is kept) and computes Σ_c w_c·S_c / Σ_c w_c·N_c, S_c and N_c being the cluster's
    sum of differences and number of units: the mean difference over the resampled units."""
    base = np.asarray(baseline, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if base.shape != cand.shape or base.ndim != 1:
        raise ValueError(f"paired_cluster_bootstrap: baseline {base.shape} and candidate {cand.shape} must be "
                         "1-d of one length")
    if len(base) == 0:
        raise ValueError("paired_cluster_bootstrap: no paired units")
    if not 0 < alpha < 0.5:
        raise ValueError(f"paired_cluster_bootstrap: alpha must be in (0, 0.5), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"paired_cluster_bootstrap: n_boot must be >= 1, got {n_boot}")
    labels = [str(i) for i in range(len(base))] if clusters is None else list(clusters)
    if len(labels) != len(base):
        raise ValueError(f"paired_cluster_bootstrap: {len(labels)} cluster labels for {len(base)} units")
    diffs = cand - base
    sums, counts = _cluster_sums(diffs, labels)
    n_clusters = len(sums)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    probs = np.full(n_clusters, 1.0 / n_clusters)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        weights = rng.multinomial(n_clusters, probs, size=size).astype(float)  # (size, C)
        stats[start:start + size] = (weights @ sums) / (weights @ counts)
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return BootstrapInterval(float(diffs.mean()), float(low), float(high), alpha, len(base), n_clusters, n_boot, seed)
