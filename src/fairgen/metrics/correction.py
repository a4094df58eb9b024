"""Classifier-error correction of class shares (docs/calibration.md; the idea of CLEAM,
NeurIPS 2023).

Model, for one prompt and one calibration block (attributes measured together, K classes): the generator's
true shares π (K,), the detector's rate d_t of finding a face of true class t, and the classifier's confusion
M[t, p] = P(read as p | true t, face found), a row-stochastic K×K matrix. Among images with a face the true
classes have shares q ∝ π·d, and the predicted labels have shares f = q M. The estimate inverts both steps:

1. q̂ = argmin over the probability simplex of ||q M − f||². Where the exact inverse f M⁻¹ lies on the simplex
   it is the answer (and then also the maximum-likelihood estimate, since it explains f exactly); otherwise
   scipy.optimize.nnls solves the problem with the sum-to-one constraint as a heavily weighted extra row.
2. π̂ ∝ q̂ / d, renormalised.

Intervals come from a bootstrap in which every replicate resamples both the prompt's images
(Multinomial(n_faces, f)) and the calibration set within each true class (faces found ~ Binomial(n_t, d_t),
then that row of the confusion ~ Multinomial(found, M_t)), so ci95 carry the calibration's sampling
uncertainty as well as the images'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import nnls
from scipy.stats import chi2_contingency

from ..types import ATTRIBUTES, JOINT, METRIC_ATTRIBUTES, FairgenError
from .intervals import nanmean_rows, percentile_interval
from .skew import frequencies, rd
from .table import _num, _pair

# Above this condition number of the confusion-rate matrix the inverse amplifies sampling noise so much (by
# up to this factor) that corrected shares mean little: refuse instead of reporting noise. A two-class
# classifier right 55% of the time on both classes has condition number 10.
MAX_CONDITION = 10.0
# Weight of the sum-to-one row in the NNLS fallback: the sum is then met to about 1/weight² = 1e-6.
_SUM_WEIGHT = 1e3
# A solution of the exact inverse counts as on the simplex down to this (floating-point) undershoot.
_FEASIBLE_TOL = 1e-9
# Which reported attributes a block corrects: the joint block gives gender and race as its marginals.
BLOCK_TARGETS: dict[str, tuple[str, ...]] = {
    JOINT: ("gender", "race", JOINT),
    "gender": ("gender",),
    "race": ("race",),
    "age": ("age",),
}


@dataclass(frozen=True, eq=False)  # arrays: identity, not element-wise equality
class CalibrationBlock:
    """Counts of one calibration block, measured on labelled images.

    attribute: the block's metric attribute (a BLOCK_TARGETS key); classes: METRIC_ATTRIBUTES[attribute].
    n_labelled: (K,) readable labelled images per true class.
    confusion: (K, K) counts of faces found, true class (rows) × predicted class (columns).
    """

    attribute: str
    n_labelled: np.ndarray
    confusion: np.ndarray

    @property
    def classes(self) -> tuple[str, ...]:
        return METRIC_ATTRIBUTES[self.attribute]

    @property
    def n_detected(self) -> np.ndarray:
        """(K,) faces found per true class."""
        return self.confusion.sum(axis=1)

    @property
    def detection_rate(self) -> np.ndarray:
        """(K,) share of each true class's labelled images in which a face was found."""
        return self.n_detected / self.n_labelled

    @property
    def rates(self) -> np.ndarray:
        """(K, K) row-stochastic confusion: P(predicted column | true row, face found)."""
        return self.confusion / self.n_detected[:, None]

    @property
    def accuracy(self) -> np.ndarray:
        """(K,) share of each true class's faces read as that class."""
        return np.diag(self.confusion) / self.n_detected

    @property
    def condition_number(self) -> float:
        return float(np.linalg.cond(self.rates))

    def check(self, where: str) -> None:
        """FairgenError (naming `where`) unless every true class has faces and the rates are invertible."""
        empty = [c for c, n in zip(self.classes, self.n_detected) if n == 0]
        if empty:
            raise FairgenError(f"{where}: no face of true class {empty[0]} was found among its labelled "
                               f"images ({self.attribute} confusion row is empty); label more of that class")
        cond = self.condition_number
        if not cond <= MAX_CONDITION:
            raise FairgenError(f"{where}: the {self.attribute} confusion matrix is near-singular "
                               f"(condition number {cond:.3g} > {MAX_CONDITION:g}): the classifier cannot "
                               "tell its classes apart well enough to correct; use a better classifier")


def simplex_lstsq(f: ArrayLike, m: ArrayLike) -> np.ndarray:
    """argmin over the probability simplex of ||q M − f||², batched.

    f: (..., K) observed shares (rows of NaN stay NaN). m: (..., K, K) row-stochastic matrices; leading axes
    broadcast against f's. Returns (..., K) shares, each row non-negative and summing to 1.
    """
    f = np.asarray(f, dtype=float)
    m = np.asarray(m, dtype=float)
    lead = np.broadcast_shapes(f.shape[:-1], m.shape[:-2])
    f = np.broadcast_to(f, lead + f.shape[-1:])
    finite = np.isfinite(f).all(axis=-1)
    # q M = f  <=>  Mᵀ qᵀ = fᵀ. pinv, not solve: a singular resampled matrix must not abort the whole batch;
    # it is taken before broadcasting, so each distinct matrix is decomposed once.
    inverse = np.linalg.pinv(np.swapaxes(m, -1, -2))
    q = (inverse @ np.where(finite[..., None], f, 0.0)[..., None])[..., 0]
    m = np.broadcast_to(m, lead + m.shape[-2:])
    if f.shape[-1] == 2:
        # The simplex is a segment and the inverse lies on its line: clipping it to the segment is exact.
        q[..., 0] = np.clip(q[..., 0], 0.0, 1.0)
        q[..., 1] = 1.0 - q[..., 0]
    feasible = (q.min(axis=-1) >= -_FEASIBLE_TOL) & (np.abs(q.sum(axis=-1) - 1) <= 1e-6)
    for idx in map(tuple, np.argwhere(finite & ~feasible)):
        a = np.vstack([m[idx].T, np.full(m.shape[-1], _SUM_WEIGHT)])
        q[idx] = nnls(a, np.append(f[idx], _SUM_WEIGHT))[0]
    q = np.clip(q, 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows without faces: 0 / 0, set to NaN below
        q = q / q.sum(axis=-1, keepdims=True)
    q[~finite] = np.nan
    return q


def correct_shares(f: ArrayLike, rates: ArrayLike, detection: ArrayLike) -> np.ndarray:
    """True class shares from observed predicted-label shares, batched.

    f: (..., K) shares of predicted labels among faces found. rates: (..., K, K) confusion rates.
    detection: (..., K) per-true-class detection rates. Returns (..., K); NaN rows where f is NaN.
    """
    q = simplex_lstsq(f, rates)
    w = q / np.asarray(detection, dtype=float)
    return w / w.sum(axis=-1, keepdims=True)


def resample_calibration(
    block: CalibrationBlock, replicates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates of a block's (rates (B, K, K), detection rates (B, K)), resampling within each
    true class. A replicate in which a class has no face found keeps that class's observed rates and detection
    rate (rare: it needs a class with almost no faces; dividing by a zero detection rate is no option)."""
    n = block.n_labelled
    found = rng.binomial(n, block.detection_rate, size=(replicates, n.size))
    counts = rng.multinomial(found, block.rates)  # (B, K, K): row t ~ Multinomial(found_t, rates_t)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = counts / found[..., None]
    rates = np.where(found[..., None] > 0, rates, block.rates)
    return rates, np.where(found > 0, found / n, block.detection_rate)


def _targets(shares: np.ndarray, attribute: str) -> dict[str, np.ndarray]:
    """Shares (..., K) of a block -> {reported attribute: shares}; the joint block adds its marginals."""
    if attribute != JOINT:
        return {attribute: shares}
    view = shares.reshape(shares.shape[:-1] + (len(ATTRIBUTES["gender"]), len(ATTRIBUTES["race"])))
    return {"gender": view.sum(axis=-1), "race": view.sum(axis=-2), JOINT: shares}


def corrected_estimates(
    counts: dict[str, np.ndarray],
    blocks: dict[str, CalibrationBlock],
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Point estimates and bootstrap replicates of corrected shares and rd, per reported attribute.

    counts: MetricFrame.counts, {attribute: (P, K) predicted-label counts among faces}. blocks: calibration
    blocks by attribute; a block whose attribute has no counts is skipped.
    Returns {attribute: {"shares" (P, K), "shares_boot" (B, P, K), "rd" (P,), "rd_boot" (B, P)}}.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for j, (attribute, block) in enumerate(sorted(blocks.items())):
        if attribute not in counts:
            continue
        c = np.asarray(counts[attribute], dtype=np.int64)
        n = c.sum(axis=-1)
        f = frequencies(c)
        rng = np.random.default_rng([seed, j])
        p = np.nan_to_num(f)
        p[n == 0, 0] = 1.0  # any valid pvals: n = 0 draws nothing, and the shares read NaN
        f_boot = frequencies(rng.multinomial(n, p, size=(replicates,) + n.shape))  # (B, P, K)
        rates_boot, detection_boot = resample_calibration(block, replicates, rng)
        point = correct_shares(f, block.rates, block.detection_rate)
        boot = correct_shares(f_boot, rates_boot[:, None], detection_boot[:, None])
        point_t, boot_t = _targets(point, attribute), _targets(boot, attribute)
        for target in BLOCK_TARGETS[attribute]:
            out[target] = {"shares": point_t[target], "shares_boot": boot_t[target],
                           "rd": np.asarray(rd(point_t[target])), "rd_boot": np.asarray(rd(boot_t[target]))}
    return out


def detection_gap(block: CalibrationBlock) -> dict[str, Any]:
    """Per-group detection rates of a block, their gap (max − min) and the p-value of a chi-square test that
    they are equal (p = 1 when every face, or none, was found: nothing to compare)."""
    found, n = block.n_detected, block.n_labelled
    table = np.stack([found, n - found], axis=1)
    p = 1.0 if (table.sum(axis=0) == 0).any() else float(chi2_contingency(table)[1])
    rates = block.detection_rate
    return {"rates": dict(zip(block.classes, map(float, rates))), "gap": float(rates.max() - rates.min()),
            "p_value": p}


def corrected_results(
    counts: dict[str, np.ndarray],
    blocks: dict[str, CalibrationBlock],
    replicates: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """results.json additions: (summary entries per attribute, per-prompt "corrected" dicts, detection gaps).

    Summary entry of an attribute: {"rd_corrected": {"mean", "ci95"}, "shares_corrected": {class: {"mean",
    "ci95"}}}, means over prompts with faces. Per prompt: {attribute: {"shares", "shares_ci95", "rd",
    "rd_ci95"}}. Detection gaps: {block attribute: detection_gap(block)}.
    """
    est = corrected_estimates(counts, blocks, replicates, seed)
    n_prompts = len(next(iter(counts.values()))) if counts else 0
    summary: dict[str, dict[str, Any]] = {}
    prompts: list[dict[str, Any]] = [{} for _ in range(n_prompts)]
    for attribute, e in est.items():
        classes = METRIC_ATTRIBUTES[attribute]
        share_ci = percentile_interval(e["shares_boot"])  # (P, K, 2)
        rd_ci = percentile_interval(e["rd_boot"])  # (P, 2)
        suite_shares = nanmean_rows(np.moveaxis(e["shares_boot"], 1, -1))  # (B, K)
        summary[attribute] = {
            "rd_corrected": {"mean": _num(nanmean_rows(e["rd"])),
                             "ci95": _pair(percentile_interval(nanmean_rows(e["rd_boot"])))},
            "shares_corrected": {
                c: {"mean": _num(nanmean_rows(e["shares"][:, k])),
                    "ci95": _pair(percentile_interval(suite_shares[:, k]))}
                for k, c in enumerate(classes)
            },
        }
        for i, row in enumerate(prompts):
            row[attribute] = {
                "shares": {c: _num(e["shares"][i, k]) for k, c in enumerate(classes)},
                "shares_ci95": {c: _pair(share_ci[i, k]) for k, c in enumerate(classes)},
                "rd": _num(e["rd"][i]),
                "rd_ci95": _pair(rd_ci[i]),
            }
    gaps = {attr: detection_gap(block) for attr, block in sorted(blocks.items()) if attr in counts}
    return summary, prompts, gaps

