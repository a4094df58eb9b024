"""Sampling uncertainty of skew metrics: bootstrap intervals, rd's finite-sample noise floor.

The bootstrap resamples images within each prompt (the prompt set is fixed): for a prompt whose n faces
fall into classes with counts c, a replicate is Multinomial(n, c/n). This is exactly the nonparametric
bootstrap of the images' labels, drawn as counts in vectorised calls instead of index by index.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from .skew import frequencies, rd

# Values drawn per chunk: bounds memory at about (chunk × prompts × K) int64 values per worker thread.
_CHUNK_VALUES = 4_000_000


def bootstrap_metrics(
    counts: ArrayLike,
    metrics: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Bootstrap replicates of per-prompt metrics and of their means over prompts, from one resample.

    counts: (P, K) observed counts per prompt; a replicate of a prompt is Multinomial(n, counts / n).
    metrics: name -> function of resampled counts (b, P, K) returning (b, P).
    Returns {name: (per_prompt (B, P), suite_mean (B,))}; suite means skip NaN prompts (no faces).
    Replicates are drawn in chunks, each from its own generator spawned from `seed`, on a thread per
    core (numpy's samplers release the GIL): the result depends on the seed only, not on the threads.
    """
    c = np.asarray(counts, dtype=np.int64)
    n = c.sum(axis=-1)
    p = np.nan_to_num(frequencies(c))
    p[n == 0, 0] = 1.0  # any valid pvals: n = 0 draws nothing, and the metric reads NaN
    chunk = max(1, _CHUNK_VALUES // max(1, c.size))
    sizes = [min(chunk, replicates - start) for start in range(0, replicates, chunk)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))

    def one_chunk(i: int) -> dict[str, np.ndarray]:
        resampled = np.random.default_rng(seeds[i]).multinomial(n, p, size=(sizes[i],) + n.shape)
        return {name: np.asarray(fn(resampled), dtype=float) for name, fn in metrics.items()}

    with ThreadPoolExecutor(max_workers=min(len(sizes), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(one_chunk, range(len(sizes))))
    out = {}
    for name in metrics:
        per_prompt = np.concatenate([part[name] for part in parts], axis=0)
        out[name] = (per_prompt, nanmean_rows(per_prompt))
    return out


def nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where a row has no finite value. (..., P) -> (...)."""
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(axis=-1)
    n = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile interval over axis 0 of (B, ...) replicates: shape (..., 2); NaN where all are NaN."""
    a = (1 - level) / 2
    q = np.quantile(replicates, [a, 1 - a], axis=0)  # NaN propagates: a NaN column gives NaN bounds
    return np.moveaxis(q, 0, -1)


@lru_cache(maxsize=4096)
def expected_rd_cached(p: tuple[float, ...], n: int, draws: int, seed: int) -> float:
    if n <= 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    return float(np.mean(rd(rng.multinomial(n, np.asarray(p), size=draws))))


def expected_rd(p: ArrayLike, n: int, draws: int = 20_000, seed: int = 0) -> float:
    """E[rd] of n images drawn from class shares p (Monte Carlo, fixed seed, s.e. ≈ 0.0003).

    rd of a finite sample is biased upward near balance, so compare a measured rd with this, not with
    the population value rd(p).
    """
    return expected_rd_cached(tuple(float(x) for x in np.asarray(p, dtype=float)), int(n), draws, seed)


def noise_floor(n: int, k: int) -> float:
    """E[rd] of n images from a perfectly balanced K-class distribution: the rd that chance alone gives.

    Example: K = 2, n = 160 → ≈ 0.063 (= sqrt(2 / (π n)) asymptotically).
    """
    return expected_rd(np.full(k, 1.0 / k), n)


def rd_sampling_range(p: ArrayLike, n: int, level: float = 0.95, draws: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Central `level` range of rd over samples of n images from shares p (Monte Carlo)."""
    rng = np.random.default_rng(seed)
    sims = rd(rng.multinomial(n, np.asarray(p, dtype=float), size=draws))
    a = (1 - level) / 2
    lo, hi = np.quantile(sims, [a, 1 - a])
    return float(lo), float(hi)
