"""metrics/correction.py's bootstrap of the calibration, its detection-gap test and the results it reports,
each against a distribution or a formula worked out here (binomial chances, a chi-square by hand)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import chi2

from fairgen.metrics.correction import (
    CalibrationBlock,
    correct_shares,
    corrected_estimates,
    corrected_results,
    detection_gap,
    resample_calibration,
    simplex_lstsq,
)
from fairgen.metrics.population import population_rd
from fairgen.metrics.skew import rd
from fairgen.types import JOINT, METRIC_ATTRIBUTES, FairgenError

B = 4000


def within(share: float, p: float, n: int = B) -> bool:
    """share of n draws within 5 standard errors of p (false failure < 1e-6)."""
    return abs(share - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_resampled_calibration_follows_the_binomial_and_keeps_empty_rows():
    """Class female: 3 labelled, 2 faces found, read (1 female, 1 male). A replicate finds Binomial(3, 2/3)
    faces: 0 with chance 1/27 (then the observed rates and detection are kept), 1 with 6/27, 2 with 12/27,
    3 with 8/27; its rate row is Multinomial(found, (1/2, 1/2)) / found."""
    block = CalibrationBlock("gender", np.array([3, 1000]), np.array([[1, 1], [100, 800]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a replicate without faces is expected, not a warning
        rates, detection = resample_calibration(block, B, np.random.default_rng(0))
    assert rates.shape == (B, 2, 2) and detection.shape == (B, 2)
    assert np.allclose(rates.sum(axis=-1), 1.0)
    d = detection[:, 0]
    assert set(np.round(d * 3, 9)) <= {1.0, 2.0, 3.0}  # never 0: no face found keeps 2/3
    assert within(np.mean(np.isclose(d, 1 / 3)), 6 / 27)
    assert within(np.mean(np.isclose(d, 2 / 3)), 12 / 27 + 1 / 27)
    assert within(np.mean(np.isclose(d, 1.0)), 8 / 27)
    # row (1/2, 1/2): found 2 split evenly (12/27 · 1/2) or no face found (1/27, the observed row kept)
    half = np.all(np.isclose(rates[:, 0], 0.5), axis=-1)
    assert within(half.mean(), 6 / 27 + 1 / 27)
    # the large class: rates and detection scatter around the observed ones with binomial spread
    assert rates[:, 1, 1].mean() == pytest.approx(8 / 9, abs=5 * math.sqrt(8 / 81 / 900 / B) + 1e-3)
    assert rates[:, 1, 1].std() == pytest.approx(math.sqrt(8 / 81 / 900), rel=0.1)
    assert detection[:, 1].mean() == pytest.approx(0.9, abs=1e-3)
    assert detection[:, 1].std() == pytest.approx(math.sqrt(0.09 / 1000), rel=0.1)


def test_detection_gap_against_a_chi_square_by_hand():
    block = CalibrationBlock("race", np.array([100, 100, 100, 100]),
                             np.diag([90, 80, 70, 60]).astype(np.int64))
    got = detection_gap(block)
    found, missed = np.array([90, 80, 70, 60]), np.array([10, 20, 30, 40])
    table = np.stack([found, missed], axis=1)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    assert got == {"rates": {"white": 0.9, "black": 0.8, "asian": 0.7, "indian": 0.6},
                   "gap": pytest.approx(0.3), "p_value": pytest.approx(chi2.sf(stat, 3))}
    # every face found: nothing to compare
    all_found = CalibrationBlock("age", np.array([50, 70]), np.array([[45, 5], [10, 60]]))
    assert detection_gap(all_found) == {"rates": {"young": 1.0, "old": 1.0}, "gap": 0.0, "p_value": 1.0}


def gender_block():
    """A symmetric reader: 90 % right on both classes, every face found."""
    return CalibrationBlock("gender", np.array([200, 200]), np.array([[180, 20], [20, 180]]))


def test_corrected_results_report_each_estimate_with_its_interval():
    counts = {"gender": np.array([[50, 50], [80, 20], [0, 0]])}
    blocks = {"gender": gender_block()}
    summary, prompts, gaps = corrected_results(counts, blocks, replicates=300, seed=4)
    e = corrected_estimates(counts, blocks, 300, 4)["gender"]
    pop = population_rd(e["shares"], e["shares_boot"])
    classes = ("female", "male")
    assert len(prompts) == 3 and all(set(p) == {"gender"} for p in prompts)
    for i in range(2):
        row = prompts[i]["gender"]
        assert set(row) == {"shares", "shares_ci95", "rd", "rd_ci95", "rd_population"}
        assert row["shares"] == {c: pytest.approx(e["shares"][i, k]) for k, c in enumerate(classes)}
        assert row["rd"] == pytest.approx(e["rd"][i])
        lo, hi = np.percentile(e["rd_boot"][:, i], [2.5, 97.5])
        assert row["rd_ci95"] == pytest.approx([min(lo, e["rd"][i]), max(hi, e["rd"][i])])
        for k, c in enumerate(classes):
            lo, hi = np.percentile(e["shares_boot"][:, i, k], [2.5, 97.5])
            point = e["shares"][i, k]
            assert row["shares_ci95"][c] == pytest.approx([min(lo, point), max(hi, point)])
        assert row["rd_population"] == {"estimate": pytest.approx(pop["estimate"][i]),
                                        "ci95": pytest.approx(list(pop["ci95"][i]))}
    # 50/50 read by a symmetric reader: rd 0, every replicate above it, so the interval is widened to 0
    assert prompts[0]["gender"]["rd"] == pytest.approx(0.0, abs=1e-12)
    assert prompts[0]["gender"]["rd_ci95"][0] == prompts[0]["gender"]["rd"]
    assert np.percentile(e["rd_boot"][:, 0], 2.5) > 0.001
    assert prompts[2] == {"gender": {"shares": {"female": None, "male": None},
                                     "shares_ci95": {"female": None, "male": None}, "rd": None,
                                     "rd_ci95": None, "rd_population": {"estimate": None, "ci95": None}}}
    mean_rd = np.mean(e["rd"][:2])
    suite_boot = np.nanmean(e["rd_boot"], axis=1)
    lo, hi = np.percentile(suite_boot, [2.5, 97.5])
    assert set(summary) == {"gender"} and set(summary["gender"]) == {
        "rd_corrected", "rd_corrected_population", "shares_corrected"}
    assert summary["gender"]["rd_corrected"] == {"mean": pytest.approx(mean_rd),
                                                 "ci95": pytest.approx([min(lo, mean_rd), max(hi, mean_rd)])}
    assert summary["gender"]["rd_corrected_population"] == {
        "estimate": pytest.approx(pop["suite_estimate"]), "ci95": pytest.approx(list(pop["suite_ci95"]))}
    for k, c in enumerate(classes):
        m = np.mean(e["shares"][:2, k])
        lo, hi = np.percentile(np.nanmean(e["shares_boot"][:, :, k], axis=1), [2.5, 97.5])
        assert summary["gender"]["shares_corrected"][c] == {"mean": pytest.approx(m),
                                                            "ci95": pytest.approx([min(lo, m), max(hi, m)])}
    assert gaps == {"gender": detection_gap(blocks["gender"])}


def test_a_suite_of_balanced_prompts_has_its_mean_rd_interval_widened_to_hold_it():
    counts = {"gender": np.array([[60, 60], [40, 40]])}
    summary, _, _ = corrected_results(counts, {"gender": gender_block()}, replicates=200, seed=0)
    entry = summary["gender"]["rd_corrected"]
    assert entry["mean"] == pytest.approx(0.0, abs=1e-12) and entry["ci95"][0] == entry["mean"]
    assert entry["ci95"][1] > 0.01


def test_corrected_results_defaults_and_seed():
    counts = {"gender": np.array([[30, 70], [55, 45]])}
    blocks = {"gender": gender_block(), "age": CalibrationBlock("age", np.array([5, 5]), np.eye(2, dtype=np.int64) * 5)}
    default = corrected_results(counts, blocks)
    assert default == corrected_results(counts, blocks, 1000, 0)
    assert default != corrected_results(counts, blocks, 1000, 1)
    assert default[0]["gender"] != corrected_results(counts, blocks, 999, 0)[0]["gender"]
    assert set(default[2]) == {"gender"}  # a block without counts: no gap reported
    assert corrected_results({}, blocks) == ({}, [], {})


def exact_block(attr, n=100):
    k = len(METRIC_ATTRIBUTES[attr])
    return CalibrationBlock(attr, np.full(k, n), np.eye(k, dtype=np.int64) * n)


def test_an_exact_reader_leaves_only_the_images_binomial_spread():
    """Identity confusion, every face found: every replicate's calibration is exact, so a corrected share's
    replicates are the resampled image shares, with spread sqrt(p(1 − p)/n)."""
    est = corrected_estimates({"gender": np.array([[30, 70], [0, 1], [0, 0]])}, {"gender": exact_block("gender")},
                              replicates=B, seed=2)["gender"]
    assert est["shares"][0].tolist() == pytest.approx([0.3, 0.7])
    boot = est["shares_boot"]
    assert boot.shape == (B, 3, 2)
    assert boot[:, 0, 0].mean() == pytest.approx(0.3, abs=5 * math.sqrt(0.21 / 100 / B))
    assert boot[:, 0, 0].std() == pytest.approx(math.sqrt(0.21 / 100), rel=0.1)
    assert (boot[:, 1] == [0.0, 1.0]).all()  # one face, read male: every replicate the same
    assert np.isnan(boot[:, 2]).all() and np.isnan(est["rd"][2]) and est["rd"][1] == 1.0
    # float counts (read back from JSON) are counts all the same
    again = corrected_estimates({"gender": np.array([[30.0, 70.0], [0.0, 1.0], [0.0, 0.0]])},
                                {"gender": exact_block("gender")}, replicates=B, seed=2)["gender"]
    assert np.array_equal(again["shares_boot"], boot, equal_nan=True)


def test_joint_block_reports_both_marginals_over_many_prompts():
    rng = np.random.default_rng(3)
    counts = {JOINT: rng.multinomial(80, rng.dirichlet(np.ones(8)), size=3)}
    est = corrected_estimates(counts, {JOINT: exact_block(JOINT)}, replicates=50, seed=1)
    assert set(est) == {"gender", "race", JOINT}
    joint = est[JOINT]["shares"].reshape(3, 2, 4)
    assert np.allclose(est["gender"]["shares"], joint.sum(axis=2))
    assert np.allclose(est["race"]["shares"], joint.sum(axis=1))
    boot = est[JOINT]["shares_boot"].reshape(50, 3, 2, 4)
    assert np.allclose(est["race"]["shares_boot"], boot.sum(axis=2))
    assert np.allclose(est["race"]["rd"], rd(joint.sum(axis=1)))


def test_corrected_estimates_defaults_seed_and_skipped_blocks():
    counts = {"gender": np.array([[30, 70], [55, 45]])}
    blocks = {"age": exact_block("age"), "gender": gender_block()}  # age first in order, and not counted
    default = corrected_estimates(counts, blocks)
    assert set(default) == {"gender"} and default["gender"]["shares_boot"].shape == (1000, 2, 2)
    same = corrected_estimates(counts, blocks, 1000, 0)
    assert np.array_equal(default["gender"]["shares_boot"], same["gender"]["shares_boot"])
    other = corrected_estimates(counts, blocks, 1000, 1)
    assert not np.array_equal(default["gender"]["shares_boot"], other["gender"]["shares_boot"])


def test_batched_correction_is_row_by_row():
    rng = np.random.default_rng(4)
    rates = np.stack([np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])] * 2)  # (2, K, K)
    detection = np.array([[0.9, 0.8, 0.7], [0.6, 0.9, 1.0]])  # (2, K)
    f = rng.dirichlet(np.ones(3), size=(2, 5))  # (B=2, P=5, K)
    got = correct_shares(f, rates[:, None], detection[:, None])
    for b in range(2):
        for p in range(5):
            alone = correct_shares(f[b, p], rates[b], detection[b])
            assert np.allclose(got[b, p], alone)
    assert np.allclose(got.sum(axis=-1), 1.0)


def test_simplex_lstsq_broadcasts_matrices_over_observed_rows():
    """f (P, K) against one matrix per replicate (B, 1, K, K): (B, P, K), each the row's own solution, also
    for P = 2 (not to be taken for two classes) and with a row of NaN."""
    rng = np.random.default_rng(6)
    m = np.stack([np.eye(3) * 0.7 + 0.1, np.eye(3) * 0.4 + 0.2])  # (2, K, K), rows sum to 1
    f = rng.dirichlet(np.ones(3), size=2)
    f[1] = np.nan
    got = simplex_lstsq(f, m[:, None])
    assert got.shape == (2, 2, 3) and np.isnan(got[:, 1]).all()
    for b in range(2):
        assert np.allclose(got[b, 0], simplex_lstsq(f[0], m[b]), atol=1e-12)
        assert np.allclose(got[b, 0] @ m[b], f[0], atol=1e-9) or got[b, 0].min() == 0


def test_corrected_shares_sum_to_one_exactly_and_rows_without_faces_warn_nothing():
    rng = np.random.default_rng(8)
    rates = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    f = np.vstack([rng.dirichlet(np.full(3, 0.3), size=(40,)), np.full((1, 3), np.nan)])  # many off the simplex
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = simplex_lstsq(np.stack([f, f[::-1]]), rates)  # (2, 41, 3)
    finite = np.isfinite(q).all(axis=-1)
    assert finite.sum() == 80 and np.isnan(q[0, -1]).all() and np.isnan(q[1, 0]).all()
    assert np.abs(q[finite].sum(axis=-1) - 1).max() < 1e-12 and q[finite].min() >= 0


def test_a_near_singular_confusion_is_refused_in_one_full_line():
    block = CalibrationBlock("gender", np.array([100, 100]), np.array([[52, 48], [49, 51]]))
    with pytest.raises(FairgenError) as e:
        block.check("cal.json")
    cond = np.linalg.cond(np.array([[0.52, 0.48], [49 / 100, 51 / 100]]))
    assert str(e.value) == (f"cal.json: the gender confusion matrix is near-singular (condition number {cond:.3g} "
                            "> 10): the classifier cannot tell its classes apart well enough to correct; use a "
                            "better classifier")
