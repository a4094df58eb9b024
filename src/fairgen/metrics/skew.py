"""Skew of a class distribution: rd (Shen et al.), KL to uniform, normalised entropy, and the peers' forms
of the same idea (MAD, representation disparity); docs/metrics.md defines each with its source.

Every function takes counts (or frequencies) with the classes on the last axis, shape (..., K), and
returns one value per leading index, shape (...). Frequencies are counts / counts.sum(-1); a row with no
counts gives NaN (nothing was measured), never 0.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def frequencies(counts: ArrayLike) -> np.ndarray:
    """counts (..., K) -> shares (..., K); rows summing to 0 become NaN."""
    c = np.asarray(counts, dtype=float)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, c / np.where(total > 0, total, 1.0), np.nan)


def rd(counts: ArrayLike) -> np.ndarray | float:
    """Shen et al.'s bias: 2/(K(K-1)) · Σ_{i<j} |f_i − f_j|.

    0 for a uniform distribution; a one-hot one gives 1 (K=2), 0.5 (K=4), 0.25 (K=8).
    """
    f = frequencies(counts)
    k = f.shape[-1]
    # With shares sorted ascending, Σ_{i<j} |f_i − f_j| = Σ_k f_(k) · (2k − K + 1): O(K log K), not O(K²).
    weights = 2 * np.arange(k) - k + 1
    out = (np.sort(f, axis=-1) @ weights) * (2 / (k * (k - 1)))
    return float(out) if out.ndim == 0 else out


def _sum_f_log_f(f: np.ndarray) -> np.ndarray:
    """Σ_k f_k log f_k over the last axis, with 0 log 0 = 0 (NaN rows stay NaN)."""
    logs = np.log(f, out=np.zeros_like(f), where=f > 0)
    return (f * logs).sum(axis=-1)


def kl_uniform(counts: ArrayLike) -> np.ndarray | float:
    """KL divergence to the uniform distribution, Σ f_k log(K f_k) = log K + Σ f_k log f_k, in nats."""
    f = frequencies(counts)
    out = np.log(f.shape[-1]) + _sum_f_log_f(f)
    return float(out) if out.ndim == 0 else out


def normalized_entropy(counts: ArrayLike) -> np.ndarray | float:
    """Entropy over log K: 1 for uniform, 0 for one-hot."""
    f = frequencies(counts)
    out = -_sum_f_log_f(f) / np.log(f.shape[-1])
    return float(out) if out.ndim == 0 else out


def mad(counts: ArrayLike) -> np.ndarray | float:
    """Mean absolute deviation from uniform, (1/K) Σ_k |f_k − 1/K| (DALL-Eval): 0 uniform, 2(K−1)/K² one-hot."""
    f = frequencies(counts)
    k = f.shape[-1]
    out = np.abs(f - 1.0 / k).mean(axis=-1)
    return float(out) if out.ndim == 0 else out


def disparity(counts: ArrayLike) -> np.ndarray | float:
    """Representation disparity, max_k f_k − min_k f_k: the most against the least drawn class, in [0, 1]."""
    f = frequencies(counts)
    out = f.max(axis=-1) - f.min(axis=-1)
    return float(out) if out.ndim == 0 else out


SKEW_METRICS = {"rd": rd, "kl": kl_uniform, "entropy": normalized_entropy, "mad": mad, "disparity": disparity}
