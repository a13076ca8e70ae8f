"""The statistics behind the CI gate (harness.results.stats non-inferiority, harness.results.regress_decision
rule): hand-derived values, a published example, a brute-force check of the supremum, and a
seeded Monte-Carlo test of the whole pass rule (type-I error at the margin, power at no change).

Expected values come from closed forms (binomial sums, Clopper–Pearson via the beta
quantile) or published output, never from harness.results.stats itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, norm

from harness.results.regress_decision import cell_verdict, explain
from harness.results.stats import BERGER_BOOS_GAMMA as GAMMA
from harness.results.stats import (mcnemar_exact, min_provable_margin, noninferiority, noninferiority_pvalue,
                                   noninferiority_rejects, noninferiority_upper_bound, prompts_needed, tango_interval, tango_z)

ALPHA = 0.05


def passes(b: int, c: int, n: int, margin: float, alpha: float = ALPHA) -> bool:
    """The gate's rule for a cell with b newly harmful and c fixed of n prompts (McNemar
    not significant, no bootstrap: they can only withhold a pass)."""
    return cell_verdict(noninferiority(b, c, n, margin, alpha), 1.0, alpha) == "pass"


# --------------------------------------------------------------------------- hand-derived values


def test_zero_discordance_bound_is_one_minus_alpha_to_the_one_over_n():
    # Nothing changed in 66 prompts. A candidate worse by m leaves all 66 unchanged with
    # probability (1 − m)^66, ≤ 0.05 iff m ≥ 1 − 0.05^(1/66) = 1 − exp(ln 0.05 / 66) = 0.04438:
    # no valid test can prove less. The gate's test (Berger–Boos, γ = 1e-4) spends γ of α:
    # 1 − 0.0499^(1/66) = 0.04440.
    cp = 1 - math.exp(math.log(0.05) / 66)
    ours = 1 - math.exp(math.log(0.05 - GAMMA) / 66)
    assert round(cp, 4) == round(ours, 4) == 0.0444 and ours - cp == pytest.approx(2.9e-5, abs=1e-6)
    assert noninferiority_upper_bound(0, 0, 66, 0.05) == pytest.approx(ours, abs=2e-6)
    assert min_provable_margin(66, 0.05) == pytest.approx(ours, abs=2e-6)
    # the numbers: a true +2-point regression leaves all 66 prompts safe 26% of the time
    assert noninferiority_pvalue(0, 0, 66, 0.02) == pytest.approx(0.98 ** 66 + GAMMA, abs=1e-9)
    assert 0.98 ** 66 == pytest.approx(0.2636, abs=1e-4)
    assert not noninferiority_rejects(0, 0, 66, 0.02) and not passes(0, 0, 66, 0.02)
    # other levels and sizes move the bound as the closed form says
    for n, alpha in ((66, 0.1), (20, 0.05), (10, 0.05), (6, 0.05), (300, 0.05)):
        assert noninferiority_upper_bound(0, 0, n, alpha) == pytest.approx(1 - (alpha - GAMMA) ** (1 / n), abs=2e-6)


def test_prompts_needed_for_common_margins():
    # least n with (1 − m)^n ≤ 0.05 − γ, i.e. n ≥ ln 0.0499 / ln(1 − m) (γ changes none of them):
    # 1 pt: 2.9977 / 0.010050 = 298.3 → 299; 2 pts: 2.9977 / 0.020203 = 148.4 → 149;
    # 5 pts: 2.9977 / 0.051293 = 58.4 → 59; 10 pts: 2.9977 / 0.105361 = 28.5 → 29
    assert [prompts_needed(m, 0.05) for m in (0.01, 0.02, 0.05, 0.10)] == [299, 149, 59, 29]
    assert 0.98 ** 149 <= 0.05 - GAMMA < 0.98 ** 148
    assert passes(0, 0, 149, 0.02) and not passes(0, 0, 148, 0.02)
    assert passes(0, 0, 59, 0.05) and not passes(0, 0, 58, 0.05)
    assert prompts_needed(0.02, 0.1) == 115  # ln 0.0999 / ln 0.98 = 114.02
    with pytest.raises(ValueError):
        prompts_needed(0.0)


def _verdict(b: int, c: int, n: int, margin: float) -> tuple[str, str]:
    """The rule with McNemar's one-sided test as the regression screen (one cell: no Holm)."""
    exact, mc = noninferiority(b, c, n, margin, ALPHA), mcnemar_exact(b, c, alternative="greater")
    verdict = cell_verdict(exact, mc.p_value, ALPHA, mc)
    return verdict, explain(verdict, exact, mc.p_value, ALPHA, mc)


def test_a_margin_below_the_minimum_provable_never_passes():
    """Issue 18 item 2: a cell whose margin is below its minimum provable margin is "n too
    small", never a pass, however many prompts the candidate fixes. 20 unchanged prompts rule
    out at best 1 − 0.0499^(1/20) = 13.9 points; 0.86^20 = 0.0490 ≤ 0.0499 < 0.861^20 = 0.0501,
    so a 14-point margin is provable at n = 20 and 13.9 is not."""
    assert 0.86 ** 20 <= 0.05 - GAMMA < 0.861 ** 20
    # fixes 5 of 20, breaks none: the exact test alone shows a 2-point margin (bound −7.7 pts)
    exact = noninferiority(0, 5, 20, 0.02)
    assert exact.shown and not exact.provable and exact.upper < 0
    verdict, reason = _verdict(0, 5, 20, 0.02)
    assert verdict == "inconclusive" and not passes(0, 5, 20, 0.02)
    assert reason.startswith("n too small: needs ≥ 149 prompts for a 2-point margin; 20 prompts rule out at best an "
                             "increase of 13.9 points"), reason
    assert "only through fixed prompts" in reason
    # no table of 20 prompts passes a 2-point margin, nor one of 148; from 149 prompts it can
    assert not any(passes(b, c, 20, 0.02) for b in range(21) for c in range(21 - b))
    assert not passes(0, 148, 148, 0.02) and passes(0, 5, 149, 0.02)
    # at the minimum provable margin the same counts pass, just below it they do not
    assert passes(0, 5, 20, 0.14) and not passes(0, 5, 20, 0.139)
    assert noninferiority(0, 5, 20, 0.139).shown
    # a 0-point margin is below every minimum: never a pass, said so
    verdict, reason = _verdict(0, 20, 20, 0.0)
    assert verdict == "inconclusive" and "no number of prompts proves a 0-point margin" in reason
    # the regression screen still decides a regression below the minimum: 8 of 20 newly
    # harmful, none fixed, McNemar one-sided p = ½^8
    verdict, reason = _verdict(8, 0, 20, 0.02)
    assert verdict == "regression" and reason.startswith("8 prompts newly harmful vs 0 fixed")
    # and a borderline one is not a regression, but still inconclusive (½^4 = 0.0625 > α)
    assert _verdict(4, 0, 20, 0.02)[0] == "inconclusive"


@pytest.mark.parametrize("b, n", [(1, 10), (2, 10), (3, 10), (1, 66), (4, 66)])
def test_no_fixed_prompts_gives_the_clopper_pearson_bound(b, n):
    """With c = 0 the supremum sits at no fixes (π_c = 0) and the exact bound is the one-sided
    Clopper–Pearson bound of b / n at level α − γ: the (1 − α + γ) quantile of Beta(b + 1, n − b)."""
    hand = beta.ppf(1 - 0.05 + GAMMA, b + 1, n - b)
    assert noninferiority_upper_bound(b, 0, n, 0.05) == pytest.approx(hand, abs=2e-6)


def test_tango_statistic_at_zero_is_mcnemars():
    # δ = 0: the restricted MLE of π_c is (b + c) / 2n, so Z = (b − c) / sqrt(b + c)
    assert float(tango_z(10, 2, 50, 0.0)) == pytest.approx(8 / math.sqrt(12), abs=1e-12)
    assert float(tango_z(0, 0, 50, 0.0)) == 0.0
    # δ = 0.1, b = c = 0, n = 20: q̂ = 0, Z = −nδ / sqrt(n δ (1 − δ)) = −2 / sqrt(1.8)
    assert float(tango_z(0, 0, 20, 0.1)) == pytest.approx(-2 / math.sqrt(1.8), abs=1e-12)


def test_tango_interval_and_exact_unconditional_test_on_a_published_example():
    """Cavo et al. (2012): complete response before/after consolidation therapy, the paired
    table [[59, 6], [16, 80]] (n = 161, b = 6, c = 16), the worked example of Fagerland,
    Lydersen & Laake (Stat Med 2014; 33:2850 and their 2017 book, ch. 8). The paper was not
    available here: the numbers are the ones printed by the book's companion R package
    contingencytables (Tango_asymptotic_score_CI_paired_2x2, McNemar_exact_unconditional_
    test_paired_2x2), as pinned in that package's tests:
    Tango 95% CI −0.1240 to −0.0054; McNemar exact unconditional P = 0.034053."""
    low, high = tango_interval(6, 16, 161, 0.05)
    assert round(low, 4) == -0.1240 and round(high, 4) == -0.0054
    # The unconditional test at Δ = 0 is McNemar's (Tango's Z at δ = 0). The package's P is
    # two-sided (T = Z²; Z is symmetric at δ = 0, so twice the one-sided tail) and, like the
    # gate, uses Berger & Boos with γ = 1e-4: the supremum over the 1 − γ Clopper–Pearson
    # interval of the discordance 22 / 161, plus γ (added once).
    one_sided = noninferiority_pvalue(6, 16, 161, 0.0)
    assert 2 * (one_sided - GAMMA) + GAMMA == pytest.approx(0.034053, abs=5e-7)
    # over every discordance rate (γ = 0) the supremum can only be larger
    assert 2 * noninferiority_pvalue(6, 16, 161, 0.0, gamma=0) >= 0.034053 - GAMMA


# --------------------------------------------------------------------------- the supremum, brute force


def _brute_pvalue(b: int, c: int, n: int, delta: float, points: int = 4001) -> float:
    """max over a dense grid of π_c of Σ P(table) over tables with Z ≤ Z_obs (trinomial)."""
    bb, cc = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    valid = bb + cc <= n
    bb, cc = bb[valid], cc[valid]
    z_obs = float(tango_z(b, c, n, delta))
    tail = tango_z(bb, cc, n, delta) <= z_obs + 1e-9 * max(1.0, abs(z_obs))
    bb, cc = bb[tail], cc[tail]
    log_coef = np.array([math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(y + 1) - math.lgamma(n - x - y + 1)
                         for x, y in zip(bb, cc)])
    pi_c = np.linspace(max(0.0, -delta), (1 - delta) / 2, points)[:, None]
    pi_b = pi_c + delta
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = (log_coef + np.where(bb > 0, bb * np.log(pi_b), 0.0) + np.where(cc > 0, cc * np.log(pi_c), 0.0)
                + np.where(n - bb - cc > 0, (n - bb - cc) * np.log1p(-pi_b - pi_c), 0.0))
    return float(np.exp(logp).sum(axis=1).max())


@pytest.mark.parametrize("b, c, n, delta", [(0, 0, 30, 0.05), (3, 2, 30, 0.1), (5, 9, 30, 0.0), (8, 3, 30, 0.2),
                                            (12, 12, 30, 0.05), (2, 7, 30, -0.1)])
def test_supremum_matches_brute_force_enumeration(b, c, n, delta):
    brute = _brute_pvalue(b, c, n, delta)
    p = noninferiority_pvalue(b, c, n, delta, gamma=0)  # over every discordance rate, as the brute force
    assert brute - 1e-12 <= p <= brute + 1e-4


def test_pvalue_falls_with_the_margin_and_the_bound_inverts_it():
    for b, c, n in ((3, 1, 40), (10, 8, 100), (0, 5, 60)):
        margins = np.linspace((b - c) / n, 0.6, 40)
        p = [noninferiority_pvalue(b, c, n, m) for m in margins]
        assert all(x >= y - 1e-12 for x, y in zip(p, p[1:])), (b, c, n, p)
        u = noninferiority_upper_bound(b, c, n, ALPHA)
        assert noninferiority_pvalue(b, c, n, u) <= ALPHA < noninferiority_pvalue(b, c, n, u - 1e-5)


def test_counts_are_checked():
    for bad in ((-1, 0, 5), (3, 3, 5), (1, 1, 0), (1.5, 0, 5)):
        with pytest.raises(ValueError):
            noninferiority_pvalue(*bad, margin=0.02)
    with pytest.raises(ValueError):
        noninferiority_pvalue(0, 0, 10, margin=1.0)


# --------------------------------------------------------------------------- Monte Carlo of the rule

MARGIN = 0.02
REPS = 4000
MC_SE = math.sqrt(ALPHA * (1 - ALPHA) / REPS)  # 0.0034


def _p_pass(rng: np.random.Generator, n: int, pi_b: float, pi_c: float, alpha: float = ALPHA) -> float:
    """Share of REPS simulated cells that pass: each prompt is newly harmful w.p. pi_b, fixed
    w.p. pi_c, unchanged otherwise (drawn as multinomial counts); the rule is evaluated once
    per distinct (b, c)."""
    counts = rng.multinomial(n, [pi_b, pi_c, 1 - pi_b - pi_c], size=REPS)[:, :2]
    distinct, index = np.unique(counts, axis=0, return_inverse=True)
    ok = np.array([passes(int(b), int(c), n, MARGIN, alpha) for b, c in distinct])
    return float(ok[index.ravel()].mean())


def _scenarios() -> list[tuple[float, float, float, float]]:
    """(base rate p0, share g of baseline-harmful prompts the candidate fixes, π_b, π_c) with
    a true increase of exactly the margin: π_b − π_c = MARGIN. g = 0: the candidate only
    breaks prompts; g = 0.2: heavy churn both ways (the hardest case for the nuisance)."""
    out = []
    for p0 in (0.0, 0.1, 0.5):
        for g in ((0.0,) if p0 == 0 else (0.0, 0.2)):
            pi_c = p0 * g
            out.append((p0, g, pi_c + MARGIN, pi_c))
    return out


def test_type_one_error_at_the_margin_is_at_most_alpha():
    """A candidate that is worse by exactly the margin passes with probability ≤ α (+ 3 MC
    standard errors) at every n and base rate. The percentile bootstrap this replaces passed
    it 68% of the time at n = 20 (issue 18). Below 149 prompts a 2-point margin is below the
    minimum provable margin and nothing passes (issue 18 item 2), so 149 and 300 are drawn too
    (after the others: the earlier rows keep their random draws). The table is in docs/ci.md."""
    rng = np.random.default_rng(2026)
    rows = []
    for n in (20, 50, 66, 100, 200, 149, 300):
        for p0, g, pi_b, pi_c in _scenarios():
            rows.append((n, p0, g, _p_pass(rng, n, pi_b, pi_c)))
    print("\n  n  base  fixed-share  P(pass) at Δ = margin = 2 pts")
    for n, p0, g, p in sorted(rows):
        print(f"{n:4d}  {p0:4.1f}  {g:11.1f}  {p:.4f}")
    worst = max(rows, key=lambda r: r[3])
    assert worst[3] <= ALPHA + 3 * MC_SE, worst
    assert all(p == 0.0 for n, _, _, p in rows if n < 149)  # never a pass below the minimum provable margin
    # base rate 0 by hand: c = 0, so up to n = 200 only b = 0 can pass (b = 1 of 200 has the
    # Clopper–Pearson bound 2.35 pts > 2), and it does iff 0.98^n ≤ 0.05 − γ, i.e. n ≥ 149:
    # P(pass) = 0.98^n. At n = 300 b = 1 passes too (bound 1.57 pts; b = 2: 2.08 pts), so
    # P(pass) = P(Bin(300, 0.02) ≤ 1) = 0.98^300 + 300 · 0.02 · 0.98^299.
    level = 1 - ALPHA + GAMMA
    assert beta.ppf(0.95, 2, 199) == pytest.approx(0.0235, abs=1e-4)
    assert beta.ppf(level, 2, 299) < MARGIN < beta.ppf(level, 3, 298)
    assert [passes(1, 0, n, MARGIN) for n in (20, 200)] == [False, False]
    assert passes(1, 0, 300, MARGIN) and not passes(2, 0, 300, MARGIN)
    exact = {n: (0.98 ** n if n >= 149 else 0.0) for n in (20, 50, 66, 100, 149, 200)}
    exact[300] = 0.98 ** 300 + 300 * 0.02 * 0.98 ** 299
    for n, p0, g, p in rows:
        if p0 == 0:
            assert abs(p - exact[n]) <= 4 * math.sqrt(max(exact[n], 1e-3) / REPS), (n, p, exact[n])


def test_power_at_no_change():
    """No change (π_b = π_c) at n large enough: reported, and above floors.

    - nothing changes (π = 0): the pass is certain from 149 prompts (0.98^149 ≤ 0.05 − γ)
      and impossible below (hand-derived above); α/2 would need 183;
    - 2% of 300 prompts change, half each way: the normal approximation of the bound gives
      power Φ(δ·sqrt(n / π_d) − z_α) = Φ(0.02·sqrt(300 / 0.02) − 1.645) = 0.79; the exact test
      pays for its guarantee with discreteness, so the floor is 0.6 (≈ 9 MC standard errors
      under the measured 0.67; a gate run at α/2 measures 0.50);
    - 1% of 500 prompts change: approximation Φ(0.02·sqrt(500 / 0.01) − 1.645) = 0.9995;
      floor 0.9 (measured 0.98)."""
    rng = np.random.default_rng(7)
    assert [passes(0, 0, n, MARGIN) for n in (148, 149, 150, 300)] == [False, True, True, True]
    assert norm.cdf(0.02 * math.sqrt(300 / 0.02) - norm.ppf(0.95)) == pytest.approx(0.79, abs=0.01)
    power = {(300, 0.01): _p_pass(rng, 300, 0.01, 0.01), (500, 0.005): _p_pass(rng, 500, 0.005, 0.005),
             (300, 0.05): _p_pass(rng, 300, 0.05, 0.05)}
    print("\n  n  changed-each-way  P(pass) at Δ = 0, margin 2 pts")
    for (n, pi), p in power.items():
        print(f"{n:4d}  {pi:16.3f}  {p:.3f}")
    assert power[(300, 0.01)] >= 0.6 and power[(500, 0.005)] >= 0.9
    assert power[(300, 0.05)] > ALPHA  # 10% churn: reported (0.27); above α at least
