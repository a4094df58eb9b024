"""Adaptive effort with intervals that stay valid under it: a fixed number of looks, Bonferroni over looks.

A sampled component (the vision tokenizer's round trip, the language model's sequences) is measured in
`looks` rounds whose sample sizes double: base, 2 base, 4 base, ... After each look its interval is
computed at level 1 - ALPHA / looks; the component stops at the first look whose interval decides its
verdict (wholly on one side of the threshold), or after the last look. By the union bound, the chance
that *any* of the at most `looks` intervals misses its truth is at most ALPHA, so the interval the
component stops with covers with probability >= 1 - ALPHA whatever the stopping rule did (the number of
looks is fixed before any data: it is `--budget`). Within a look, intervals over several prompts (the
per-prompt findings of the LM audit) are Bonferroni-corrected over prompts as well.

Skew of a share vector (the LM's implied group shares): s(pi) = ||pi - u|| / ||e_1 - u||, u the uniform
vector over K groups, e_1 a one-hot one: 0 for balance, 1 when one group takes everything; for K = 2 it
equals rd. Its square has an unbiased estimator from n i.i.d. share vectors x_i (each on the simplex):

    S2 = (||xbar - u||^2 - tr(Cov_hat) / n) / ((K - 1) / K)           E[S2] = s(pi)^2 exactly

(the plug-in ||xbar - u||^2 is biased up by tr(Cov)/n: the "noise floor" of a skew read from few
samples). Its variance, from the second-order expansion of a quadratic form of a mean (exact for normal
means): (4 d' Cov d / n + 2 tr(Cov^2) / n^2) / ((K - 1) / K)^2 with d = xbar - u, estimated with one
pseudo-observation at each vertex added to the covariance (so that n identical vectors do not claim
zero variance). A suite's mean square skew is the mean of its prompts' S2 (independent prompts), with
the normal interval of that mean; tests/test_locate_units.py measures its coverage by simulation.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

ALPHA = 0.05  # family-wise miss rate of a component's intervals over all its looks
DEFAULT_LOOKS = 6  # --budget: looks per sampled component; the last one uses 2^(looks-1) = 32 times the base


def look_sizes(base: int, looks: int) -> list[int]:
    """Cumulative sample sizes of the looks: base, 2 base, 4 base, ... (`looks` of them)."""
    return [base * 2**k for k in range(looks)]


def z_value(looks: int, tests: int = 1) -> float:
    """Two-sided normal quantile at level 1 - ALPHA / (looks * tests)."""
    return float(norm.ppf(1 - ALPHA / (2 * looks * tests)))


def level(looks: int, tests: int = 1) -> float:
    """Confidence level of each interval: 1 - ALPHA / (looks * tests)."""
    return 1 - ALPHA / (looks * tests)


def square_skew(x: np.ndarray) -> tuple[float, float]:
    """Unbiased estimate of s(pi)^2 and its variance from share vectors x (n, K), n >= 2 (module docstring)."""
    n, k = x.shape
    scale = (k - 1) / k
    d = x.mean(axis=0) - 1 / k
    est = (d @ d - np.trace(np.cov(x.T, ddof=1)) / n) / scale
    cov = np.cov(np.vstack([x, np.eye(k)]).T, ddof=1)  # one pseudo-observation per vertex: never zero
    var = (4 * d @ cov @ d / n + 2 * np.trace(cov @ cov) / n**2) / scale**2
    return float(est), float(var)


def interval(est: float, var: float, z: float) -> list[float]:
    """[est - z sd, est + z sd]."""
    sd = float(np.sqrt(max(var, 0.0)))
    return [est - z * sd, est + z * sd]


def root(x: float | None) -> float | None:
    """A mean square skew (or a bound on it) in skew units: sqrt(max(x, 0))."""
    return None if x is None else float(np.sqrt(max(x, 0.0)))


def decide(ci: list[float], threshold: float) -> str | None:
    """'biased' if the interval lies at or above the threshold, 'not biased' if wholly below, else None."""
    if ci[0] >= threshold:
        return "biased"
    return "not biased" if ci[1] < threshold else None
