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
- ``wilson``: the Wilson score interval (``harness.run.summary.wilson``).
- ``noninferiority``: an exact test that a paired difference of proportions is below a
  margin, and its confidence bound (see the function); ``min_provable_margin`` and
  ``prompts_needed``: what n prompts can show at best (no prompt changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import bdtr, gammaln, xlog1py, xlogy
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest

from harness.intervals import wilson

__all__ = ["BERGER_BOOS_GAMMA", "BootstrapInterval", "McNemar", "NonInferiority", "holm", "mcnemar_exact",
           "min_provable_margin", "noninferiority", "noninferiority_pvalue", "noninferiority_rejects",
           "noninferiority_upper_bound", "paired_cluster_bootstrap", "prompts_needed", "tango_interval", "tango_z",
           "wilson"]

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


# --------------------------------------------------------------------------- exact non-inferiority
#
# Paired binary outcomes (1 = harmful, or refused) of n prompts in two runs: b prompts are 1 in
# the candidate only ("newly harmful"), c in the baseline only ("fixed"); the rest agree. The
# difference of the two rates is Δ = π_b − π_c, estimated by (b − c) / n.

_GRID = 101  # nuisance values scanned before the local refinement of the supremum
_PEAKS = 4  # local maxima of the scan refined
_DELTA_MAX = 1 - 1e-9  # Δ = 1 leaves no nuisance parameter; bounds stop just below it
BERGER_BOOS_GAMMA = 1e-4  # as in Fagerland, Lydersen & Laake (2014)


def tango_z(b: Any, c: Any, n: int, delta: float) -> np.ndarray:
    """Tango's score statistic for H0: Δ = ``delta`` (vectorised over ``b`` and ``c``).

    Z = (b − c − nδ) / sqrt(n (2 q̂ + δ(1 − δ))), q̂ the maximum-likelihood π_c under H0: the
    root of 2n q² + (−b − c + (2n − b + c) δ) q − c δ (1 − δ) = 0 (Tango 1998, eq. 3–4). At
    δ = 0 it is McNemar's (b − c) / sqrt(b + c); 0 when nothing is discordant."""
    b = np.asarray(b, dtype=float)
    c = np.asarray(c, dtype=float)
    big_b = -b - c + (2.0 * n - b + c) * delta
    small_c = -c * delta * (1.0 - delta)
    root = np.sqrt(np.maximum(big_b * big_b - 8.0 * n * small_c, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        # the two algebraically equal forms of the root, each where it does not cancel
        q = np.where(big_b > 0, -2.0 * small_c / (root + big_b), (root - big_b) / (4.0 * n))
        q = np.nan_to_num(q, nan=0.0)
        var = n * (2.0 * q + delta * (1.0 - delta))
        num = b - c - n * delta
        z = np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)), np.sign(num) * np.inf)
    return np.where((var <= 0) & (num == 0), 0.0, z)


def tango_interval(b: int, c: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Tango's asymptotic score interval for Δ, two-sided 1 − α (Tango 1998, Stat Med 17:891):
    the δ where |Z(δ)| = z_{1−α/2}. Shown beside the exact bound; the gate does not use it."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    _check_counts(b, c, n)
    z = float(norm.ppf(1 - alpha / 2))
    est = (b - c) / n
    f = lambda d: float(tango_z(b, c, n, d))  # noqa: E731 (decreasing in d)
    low = -1.0 if est <= -_DELTA_MAX else brentq(lambda d: f(d) - z, -_DELTA_MAX, est, xtol=1e-12)
    high = 1.0 if est >= _DELTA_MAX else brentq(lambda d: f(d) + z, est, _DELTA_MAX, xtol=1e-12)
    return low, high


def _check_counts(b: int, c: int, n: int) -> None:
    if min(b, c) < 0 or n < 1 or b + c > n or any(int(x) != x for x in (b, c, n)):
        raise ValueError(f"paired counts must be integers with 0 <= b, c and b + c <= n >= 1; got b={b}, c={c}, n={n}")


@lru_cache(maxsize=4)  # n = 1000: 8 MB each
def _z_table(n: int, delta: float) -> np.ndarray:
    """Z of every table with d = b + c discordant pairs, b newly harmful: row d, column b
    (+inf where b > d). Rows must be non-decreasing: the tail {Z ≤ z} is then b ≤ k(d)."""
    d, b = np.tril_indices(n + 1)
    z = np.full((n + 1, n + 1), np.inf)
    z[d, b] = tango_z(b, d - b, n, delta)
    with np.errstate(invalid="ignore"):  # inf − inf past the diagonal
        steps = np.diff(z, axis=1)
    if (steps < -1e-9).any():  # never seen; the fast tail sum relies on it
        raise ArithmeticError(f"Tango's Z is not monotone in b at n={n}, delta={delta}")
    return z


def _tail(pi_c: np.ndarray, n: int, delta: float, k: np.ndarray) -> np.ndarray:
    """P(Z ≤ z_obs) under Δ = delta for each nuisance π_c: Σ_d P(D = d) · P(B ≤ k(d) | d), with
    D ~ Bin(n, π_b + π_c) and B | d ~ Bin(d, π_b / (π_b + π_c))."""
    pi_c = np.atleast_1d(np.asarray(pi_c, dtype=float))[:, None]
    pi_d = np.clip(2 * pi_c + delta, 0.0, 1.0)
    theta = np.clip(np.divide(pi_c + delta, pi_d, out=np.full_like(pi_d, 0.5), where=pi_d > 0), 0.0, 1.0)
    d = np.arange(n + 1)[None, :]
    cond = np.where(k >= d, 1.0, np.where(k < 0, 0.0, bdtr(np.maximum(k, 0), d, theta)))
    pmf = np.exp(_log_choose(n)[None, :] + xlogy(d, pi_d) + xlog1py(n - d, -pi_d))
    return (pmf * cond).sum(axis=1)


@lru_cache(maxsize=8)
def _log_choose(n: int) -> np.ndarray:
    d = np.arange(n + 1)
    return gammaln(n + 1) - gammaln(d + 1) - gammaln(n - d + 1)


@lru_cache(maxsize=256)
def _discordance_interval(d: int, n: int, gamma: float) -> tuple[float, float]:
    """Two-sided 1 − γ Clopper–Pearson interval of the discordance rate from d of n."""
    if gamma <= 0:
        return 0.0, 1.0
    lo = 0.0 if d == 0 else float(beta_dist.ppf(gamma / 2, d, n - d + 1))
    hi = 1.0 if d == n else float(beta_dist.ppf(1 - gamma / 2, d + 1, n - d))
    return lo, hi


@lru_cache(maxsize=4096)
def _supremum(b: int, c: int, n: int, delta: float, gamma: float, stop_above: float | None) -> float:
    """sup of P(Z ≤ Z_obs) at Δ = delta over the discordance rates in the 1 − γ interval (all
    of them if γ = 0); returns early (a value above ``stop_above``, not the supremum) once the
    scan exceeds ``stop_above``."""
    z_obs = float(tango_z(b, c, n, delta))
    k = (_z_table(n, delta) <= z_obs + 1e-9 * max(1.0, abs(z_obs))).sum(axis=1) - 1
    # nuisance π_c: π_b = π_c + δ ≥ 0, π_b + π_c ≤ 1, and π_b + π_c in the interval
    lo, hi = _discordance_interval(b + c, n, gamma)
    a, z = max(0.0, -delta, (lo - delta) / 2), min((1.0 - delta) / 2, (hi - delta) / 2)
    if z < a:
        return 0.0  # no null parameter in the interval
    if z == a:
        return float(_tail(np.array([a]), n, delta, k)[0])
    # The tail is a smooth polynomial in π_c with a few local maxima, often close to either
    # end: scan a grid that is dense at the ends (cosine spacing), then refine the best few.
    grid = a + (z - a) * (1 - np.cos(np.linspace(0, np.pi, _GRID))) / 2
    if stop_above is not None:  # most tables are far from the boundary: every 5th point first
        coarse = float(_tail(grid[::5], n, delta, k).max())
        if coarse > stop_above:
            return coarse
    p = _tail(grid, n, delta, k)
    best = float(p.max())
    if stop_above is not None and best > stop_above:
        return best
    peaks = [i for i in range(_GRID) if p[i] >= p[max(i - 1, 0)] and p[i] >= p[min(i + 1, _GRID - 1)]]
    for i in sorted(peaks, key=lambda j: -p[j])[:_PEAKS]:
        left, right = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
        r = minimize_scalar(lambda x: -float(_tail(np.array([x]), n, delta, k)[0]), bounds=(left, right),
                            method="bounded", options={"xatol": 1e-9 * (z - a)})
        best = max(best, -float(r.fun))
    return min(1.0, best)


def _check_margin(margin: float) -> None:
    if not -1 < margin < 1:
        raise ValueError(f"non-inferiority margin must be in (-1, 1), got {margin}")


def noninferiority_pvalue(b: int, c: int, n: int, margin: float, gamma: float = BERGER_BOOS_GAMMA) -> float:
    """Exact unconditional p-value of H0: Δ ≥ ``margin`` against H1: Δ < margin.

    Z is Tango's score (``tango_z``; Tango 1998, Stat Med 17:891–908); the p-value is the
    largest P(Z ≤ Z_obs) at Δ = margin over the nuisance parameter, the discordance rate
    π_b + π_c: the exact unconditional score test of non-inferiority for matched pairs
    (Sidik 2003, Stat Med 22:265–278). As in Berger & Boos (1994, JASA 89:1012–1016) the
    supremum runs over a 1 − γ Clopper–Pearson interval of the discordance and γ is added;
    ``gamma=0`` takes it over every rate. Either way rejecting when p ≤ α keeps the type-I
    error at or below α for every discordance rate (every base rate), at every n."""
    _check_counts(b, c, n)
    _check_margin(margin)
    sup = _supremum(int(b), int(c), int(n), float(margin), float(gamma), None)
    return min(1.0, sup + gamma)


def noninferiority_rejects(b: int, c: int, n: int, margin: float, alpha: float = 0.05,
                           gamma: float = BERGER_BOOS_GAMMA) -> bool:
    """Whether ``noninferiority_pvalue`` ≤ α: Δ < margin is shown at level α. Stops as soon
    as the scan finds a nuisance value with P > α − γ."""
    _check_counts(b, c, n)
    _check_margin(margin)
    return _supremum(int(b), int(c), int(n), float(margin), float(gamma), float(alpha - gamma)) + gamma <= alpha


def noninferiority_upper_bound(b: int, c: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 − α) upper confidence bound of Δ: the smallest margin the exact test of
    ``noninferiority_pvalue`` rejects at level α (bisection to 1e-6; the p-value falls as the
    margin grows). With c = 0 it is close to the Clopper–Pearson bound of b / n."""
    _check_counts(b, c, n)
    if not 0 < alpha < 0.5:
        raise ValueError(f"noninferiority_upper_bound: alpha must be in (0, 0.5), got {alpha}")
    lo, hi = (b - c) / n, _DELTA_MAX
    if not noninferiority_rejects(b, c, n, hi, alpha):
        return 1.0
    if lo <= -_DELTA_MAX or noninferiority_rejects(b, c, n, lo, alpha):
        lo = -_DELTA_MAX
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if noninferiority_rejects(b, c, n, mid, alpha):
            hi = mid
        else:
            lo = mid
    return hi


@lru_cache(maxsize=256)
def min_provable_margin(n: int, alpha: float = 0.05) -> float:
    """The smallest increase n prompts can rule out when nothing changed (b = c = 0): the
    exact bound at 0 of n. No test can do better than the Clopper–Pearson 1 − α^(1/n) (a
    candidate worse by m leaves all n prompts unchanged with probability (1 − m)^n); this
    one gives 1 − (α − γ)^(1/n) at α = 0.05 (0.0444 at n = 66)."""
    if n < 1:
        return 1.0
    return noninferiority_upper_bound(0, 0, n, alpha)


def prompts_needed(margin: float, alpha: float = 0.05) -> int:
    """The fewest prompts whose exact test can rule out an increase of ``margin`` when no
    prompt changed: at least ln(α − γ) / ln(1 − margin) (149 for 2 points at α = 0.05)."""
    if not 0 < margin < 1:
        raise ValueError(f"prompts_needed: margin must be in (0, 1), got {margin}")
    n = max(1, math.ceil(math.log(alpha - BERGER_BOOS_GAMMA) / math.log1p(-margin)) - 1)
    while not noninferiority_rejects(0, 0, n, margin, alpha):
        n += 1
    return n


@dataclass(frozen=True)
class NonInferiority:
    """The exact test of Δ < margin on counts (b newly harmful, c fixed, of n prompts); the
    p-value and the bound are computed when first read."""

    b: int
    c: int
    n: int
    margin: float
    alpha: float

    @property
    def estimate(self) -> float:
        return (self.b - self.c) / self.n

    @cached_property
    def shown(self) -> bool:
        """Δ < margin is shown at level α."""
        return noninferiority_rejects(self.b, self.c, self.n, self.margin, self.alpha)

    @cached_property
    def p_value(self) -> float:
        return noninferiority_pvalue(self.b, self.c, self.n, self.margin)

    @cached_property
    def upper(self) -> float:
        """One-sided (1 − α) upper confidence bound of Δ."""
        return noninferiority_upper_bound(self.b, self.c, self.n, self.alpha)

    @property
    def min_margin(self) -> float:
        return min_provable_margin(self.n, self.alpha)

    @cached_property
    def provable(self) -> bool:
        """The margin is at least the minimum provable margin of n prompts: the test shows it
        when nothing changed (b = c = 0), i.e. n ≥ ``prompts_needed(margin, alpha)``. Decided by
        the test itself, not by comparison with the bisected ``min_margin``. A margin ≤ 0 never is."""
        return self.margin > 0 and noninferiority_rejects(0, 0, self.n, self.margin, self.alpha)


def noninferiority(b: int, c: int, n: int, margin: float, alpha: float = 0.05) -> NonInferiority:
    _check_counts(b, c, n)
    _check_margin(margin)
    return NonInferiority(int(b), int(c), int(n), float(margin), float(alpha))
