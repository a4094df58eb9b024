"""A bias-aware estimate of the population rd, with an interval for it (docs/intervals.md).

Shen et al.'s rd of n sampled images, T = 2/(K(K−1)) Σ_{i<j} |f_i − f_j|, is biased upward: rd is convex in
the shares, so by Jensen E[T] ≥ rd(p) for the population shares p, and near balance the bias is as large
as the value (four classes at exactly 25 % each give T ≈ 0.06 at n = 200). A percentile bootstrap interval
around T counts that bias twice and covers rd(p) far less often than it claims, above all for a suite mean,
whose sampling spread shrinks with the number of prompts while the bias does not.

Each pairwise difference d = f_i − f_j is close to normal, N(δ, σ²), and E|d| = σ·g(|δ|/σ) with
g(x) = x(2Φ(x) − 1) + 2φ(x), so |d| overstates |δ| by σ·h(|δ|/σ), h(x) = g(x) − x, which falls from
0.80 σ at a tie to nothing a few σ away. Summed over pairs (expectation is linear, so the pairs'
correlations do not matter):

* estimate  = T − Σ c σ h(|d|/σ), the bias removed as it would be at the observed differences (≥ 0);
* bias bound B = Σ c σ h(max(0, |d| − z σ)/σ): the bias at the smallest |δ| the data allow (z = 1.96 per
  pair), at least the true bias with high probability;
* interval  = [T − B − cv·se, T + cv·se], se the bootstrap standard deviation of T: the bias-aware interval
  of Armstrong & Kolesár (2020) for an estimator whose bias lies in [0, B], where cv solves
  Φ(−cv) + Φ(−cv − B/se) = 0.05 (cv = 1.96 without bias, 1.645 when the bias bound dominates).

The same holds for a suite mean (T̄, B̄ and the estimate averaged over prompts, se of the bootstrap suite
mean) and for calibration-corrected shares, whose pairwise σ come from the same bootstrap. σ is always the
bootstrap standard deviation of d, so one routine serves raw and corrected shares. The interval always holds
both the estimate and T. Its coverage, measured by simulation on random world specs with near-ties, is in
docs/intervals.md (benchmarks/rd_coverage.py).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from .intervals import nanmean_rows
from .skew import rd

# How far (in σ) each pair's |δ| may lie from the observed |d| when bounding the bias: per prompt, and for
# a suite mean, where the pairs' errors average out (tuned and measured by benchmarks/rd_coverage.py).
Z_PROMPT = 1.96
Z_SUITE = 1.0


def _h(x: np.ndarray) -> np.ndarray:
    """E|N(x, 1)| − |x|: the upward bias of |d| in units of σ, for x ≥ 0."""
    return 2 * norm.pdf(x) - 2 * x * norm.sf(x)


@lru_cache(maxsize=4096)
def _cv(t: float, level: float) -> float:
    """Critical value of a bias-aware interval when the bias lies in [0, t·se]: Φ(−cv) + Φ(−cv − t) = 1 − level."""
    alpha = 1 - level
    return float(brentq(lambda c: norm.sf(c) + norm.sf(c + t) - alpha, 0.0, 10.0))


_GRID = np.linspace(0.0, 50.0, 20001)
_G = _GRID + 2 * norm.pdf(_GRID) - 2 * _GRID * norm.sf(_GRID)  # g(x) = E|N(x, 1)|, increasing


def _nanstd(x: np.ndarray) -> np.ndarray:
    """Standard deviation over axis 0 ignoring NaN (prompts without faces: NaN, quietly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(x, axis=0)


def _pair_parts(shares: np.ndarray, boot: np.ndarray, z: float) -> tuple[np.ndarray, ...]:
    """(T, estimated bias, lowest bias, highest bias), each (P,), from shares (P, K) and bootstrap shares
    (B, P, K); the bias range is that of |δ| within z σ of the observed |d|."""
    k = shares.shape[-1]
    i, j = np.triu_indices(k, 1)
    d = np.abs(shares[..., i] - shares[..., j])  # (P, M)
    sigma = _nanstd(boot[..., i] - boot[..., j])  # (P, M)
    c = 2 / (k * (k - 1))
    safe = np.where(sigma > 0, sigma, 1.0)
    x = d / safe
    # the moment estimate of |δ|/σ: g⁻¹(|d|/σ), 0 where |d| is below a tie's mean |d| (0.80 σ)
    bias = np.where(sigma > 0, sigma * (x - np.interp(x, _G, _GRID)), 0.0)
    low = np.where(sigma > 0, sigma * _h(x + z), 0.0)
    high = np.where(sigma > 0, sigma * _h(np.maximum(0.0, x - z)), 0.0)
    return c * d.sum(-1), c * bias.sum(-1), c * low.sum(-1), c * high.sum(-1)


def _interval(t: float, bias: float, low: float, high: float, se: float,
              level: float) -> tuple[float, float, float]:
    """(estimate, lo, hi) of one quantity whose bias lies in [low, high]; NaN where T is NaN."""
    if not np.isfinite(t):
        return np.nan, np.nan, np.nan
    se = float(se) if np.isfinite(se) else 0.0
    cv = _cv(round((high - low) / se, 6), level) if se > 0 else norm.isf((1 - level) / 2)
    est = max(0.0, t - bias)
    lo = max(0.0, t - high - cv * se)
    hi = min(1.0, t - low + cv * se)
    return est, min(lo, est), max(hi, est)


def population_rd(shares: np.ndarray, boot: np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """Bias-aware estimates and intervals of the population rd, per prompt and for the suite mean.

    shares: (P, K) point estimates of the class shares (NaN rows: no faces). boot: (B, P, K) bootstrap
    replicates of them. Returns {"estimate" (P,), "ci95" (P, 2), "suite_estimate" float, "suite_ci95" (2,),
    "plain" (P,)}; NaN for prompts without faces (and for the suite when no prompt has any).
    """
    shares = np.asarray(shares, dtype=float)
    boot = np.asarray(boot, dtype=float)
    t, bias, low, high = _pair_parts(shares, boot, Z_PROMPT)
    _, _, s_low, s_high = _pair_parts(shares, boot, Z_SUITE)
    t_boot = np.asarray(rd(boot), dtype=float)  # (B, P)
    se = _nanstd(t_boot)
    per = np.array([_interval(t[p], bias[p], low[p], high[p], se[p], level)
                    for p in range(len(t))]).reshape(-1, 3)
    ok = np.isfinite(t)
    if ok.any():
        suite_se = float(_nanstd(nanmean_rows(t_boot[:, ok])))
        suite = _interval(float(t[ok].mean()), float(bias[ok].mean()), float(s_low[ok].mean()),
                          float(s_high[ok].mean()), suite_se, level)
    else:
        suite = (np.nan, np.nan, np.nan)
    return {"estimate": per[:, 0], "ci95": per[:, 1:], "suite_estimate": suite[0],
            "suite_ci95": np.array(suite[1:]), "plain": t}


def share_replicates(counts: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """Bootstrap shares (B, P, K) of counts (P, K): each prompt's images resampled, Multinomial(n, c/n)."""
    from .skew import frequencies

    c = np.asarray(counts, dtype=np.int64)
    n = c.sum(axis=-1)
    p = np.nan_to_num(frequencies(c))
    p[n == 0, 0] = 1.0
    draws = np.random.default_rng([seed, 7]).multinomial(n, p, size=(replicates,) + n.shape)
    return frequencies(draws)
