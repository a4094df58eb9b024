"""The bias-aware population rd (metrics.population) and intervals that hold their own estimates (issue 24,
Found 10): known answers, planted truths, and a small run of benchmarks/rd_coverage.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fairgen.metrics import MetricFrame, rd
from fairgen.metrics.population import population_rd, share_replicates
from fairgen.types import Perception, Prompt
from fairgen.store import perception_record

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "rd_coverage.py"


def _frame(counts_by_prompt: list[dict[str, int]]) -> MetricFrame:
    """A frame of race labels only (one backend attribute), from {race: count} per prompt."""
    prompts = [Prompt(f"p{i}", f"prompt {i}", f"c{i}") for i in range(len(counts_by_prompt))]
    records = []
    for p, counts in zip(prompts, counts_by_prompt):
        k = 0
        for race, n in counts.items():
            for _ in range(n):
                seen = Perception(True, probs={"race": {r: float(r == race) for r in counts}})
                records.append(perception_record(p.id, k, 0, seen))
                k += 1
    return MetricFrame.from_records(prompts, records, ["race"])


def test_balanced_counts_give_intervals_holding_zero():
    """Counts 50/50/50/50 have rd 0; main's percentile interval was [0.0117, 0.08], excluding it."""
    out = _frame([{"white": 50, "black": 50, "asian": 50, "indian": 50}]).summarize(400, seed=0)
    row = out["prompts"][0]
    assert row["rd"]["race"] == 0.0
    lo, hi = row["rd_ci95"]["race"]
    assert lo == 0.0 and hi > 0.01
    pop = row["rd_population"]["race"]
    assert pop["estimate"] == 0.0 and pop["ci95"][0] == 0.0
    s = out["summary"]["race"]
    for name in ("rd", "kl", "entropy"):
        lo, hi = s[name]["ci95"]
        assert lo <= s[name]["mean"] <= hi


def test_every_interval_holds_its_estimate_on_random_counts():
    rng = np.random.default_rng(3)
    for _ in range(8):
        counts = [dict(zip(("white", "black", "asian", "indian"), map(int, rng.multinomial(rng.integers(5, 120),
                  rng.dirichlet(np.ones(4)))))) for _ in range(3)]
        out = _frame(counts).summarize(200, seed=1)
        for row in out["prompts"]:
            for key in ("rd", "kl", "entropy"):
                lo, hi = row[key + "_ci95"]["race"] if key == "rd" else (None, None)
                if lo is not None:
                    assert lo <= row["rd"]["race"] <= hi
            pop = row["rd_population"]["race"]
            assert pop["ci95"][0] <= pop["estimate"] <= pop["ci95"][1]
            assert pop["ci95"][0] <= row["rd"]["race"] <= pop["ci95"][1]  # Shen's plain rd too
        s = out["summary"]["race"]
        assert s["rd_population"]["ci95"][0] <= s["rd_population"]["estimate"] <= s["rd_population"]["ci95"][1]
        for name in ("rd", "kl", "entropy"):
            assert s[name]["ci95"][0] <= s[name]["mean"] <= s[name]["ci95"][1]


def test_estimate_removes_most_of_the_bias_at_balance_and_none_far_from_it():
    """Planted truth: 30 prompts of exactly balanced gender (population rd 0) and 30 at 80/20 (rd 0.6)."""
    rng = np.random.default_rng(0)
    for p, truth in ((np.array([0.5, 0.5]), 0.0), (np.array([0.8, 0.2]), 0.6)):
        counts = rng.multinomial(150, p, size=30)
        pop = population_rd(counts / 150, share_replicates(counts, 500, seed=2))
        plain_bias = pop["plain"].mean() - truth
        est_bias = pop["suite_estimate"] - truth
        lo, hi = pop["suite_ci95"]
        assert lo <= truth <= hi
        if truth == 0:
            assert plain_bias > 0.05  # Shen's rd: about the noise floor, 0.065 at n = 150
            assert est_bias < 0.8 * plain_bias  # about 0.70: a tie is the hardest case (docs/intervals.md)
        else:
            assert abs(est_bias - plain_bias) < 0.002  # far from a tie nothing is removed


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("rd_coverage", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {cal: module.run(8, 8, 200, (40, 200), cal, seed=5) for cal in (False, True)}


@pytest.mark.parametrize("calibrated", [False, True])
def test_small_coverage_study(coverage, calibrated):
    """8 random worlds of 8 prompts (the full study: docs/intervals.md). Per prompt: 64 intervals per
    attribute, so coverage within about ±6 points of the truth; the plain percentile interval is far off."""
    table = coverage[calibrated]
    for attr, row in table.items():
        assert row["always_contains"], attr
        assert 0.85 <= row["prompt_population"] <= 1.0, (attr, row)
        assert row["estimate_bias_suite"] < row["plain_bias_suite"], (attr, row)
    assert min(row["prompt_percentile"] for row in table.values()) < 0.8


def test_h_is_the_bias_of_a_normal_absolute_value():
    """h(x) = E|N(x, 1)| − x, here by numerical integration of the normal density."""
    from scipy.integrate import quad
    from scipy.stats import norm

    from fairgen.metrics.population import _h

    for x in (0.0, 0.3, 1.0, 2.5):
        e_abs = quad(lambda z: abs(z) * norm.pdf(z - x), -np.inf, np.inf)[0]
        assert _h(np.array(x)) == pytest.approx(e_abs - x, abs=1e-7)


def test_share_replicates_resample_each_prompt_by_its_own_shares():
    counts = np.array([[30, 10, 0], [0, 1, 0], [0, 0, 0]])
    boot = share_replicates(counts, 3000, seed=4)
    assert boot.shape == (3000, 3, 3)
    assert boot[:, 0, 0].mean() == pytest.approx(0.75, abs=5 * np.sqrt(0.75 * 0.25 / 40 / 3000))
    assert boot[:, 0, 0].std() == pytest.approx(np.sqrt(0.75 * 0.25 / 40), rel=0.1)
    assert (boot[:, 0, 2] == 0).all()
    assert (boot[:, 1] == [0.0, 1.0, 0.0]).all()  # one face: every replicate is that face
    assert np.isnan(boot[:, 2]).all()
    assert np.array_equal(share_replicates(counts, 3000, seed=4), boot, equal_nan=True)  # seeded
    assert not np.array_equal(share_replicates(counts, 3000, seed=5)[:, 0], boot[:, 0])
    # counts read back as floats are counts all the same
    assert np.array_equal(share_replicates(counts.astype(float), 3000, seed=4), boot, equal_nan=True)


def test_a_prompt_whose_replicates_never_vary_needs_no_division_by_zero():
    import warnings

    shares = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    boot = np.broadcast_to(shares, (50, 2, 4)).copy()  # no spread at all: every sigma is 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = population_rd(shares, boot)
    assert out["estimate"].tolist() == pytest.approx(rd(shares).tolist())  # nothing to remove without spread
    np.testing.assert_allclose(out["ci95"], [[0.5, 0.5], [1 / 3, 1 / 3]])  # rd (1, 0, 0, 0) = 0.5


def _by_hand(t: list[float], sigma: list[float], se: list[float], suite_se: float) -> dict[str, object]:
    """population_rd for two classes (one pair, c = 1) from the module docstring's formulas, by other numerical
    routes than the code's: E|N(x, 1)| by quadrature, its inverse and the critical value by root finding."""
    from scipy.integrate import quad
    from scipy.optimize import brentq
    from scipy.stats import norm

    def g(x):  # E|N(x, 1)|
        return quad(lambda z: abs(z + x) * norm.pdf(z), -np.inf, np.inf)[0]

    def h(x):
        return g(x) - x

    def cv(b):  # Φ(−cv) + Φ(−cv − b) = 0.05
        return brentq(lambda c: norm.cdf(-c) + norm.cdf(-c - b) - 0.05, 0.0, 10.0, xtol=1e-14)

    def interval(t, bias, low, high, se):
        est = max(0.0, t - bias)
        k = cv((high - low) / se)
        return est, min(max(0.0, t - high - k * se), est), max(min(1.0, t - low + k * se), est)

    def parts(d, s, z):
        x = d / s
        if x <= g(0.0):  # below a tie's mean |d|: |δ| = 0
            delta = 0.0
        elif h(x) < 1e-12:  # dozens of σ from a tie: |d| has no bias left
            delta = x
        else:
            delta = brentq(lambda y: g(y) - x, 0.0, x, xtol=1e-12)
        return s * (x - delta), s * h(x + z), s * h(max(0.0, x - z))

    per = [interval(d, *parts(d, s, 1.96), e) for d, s, e in zip(t, sigma, se)]
    suite = [parts(d, s, 1.0) for d, s in zip(t, sigma)]
    bias = np.mean([parts(d, s, 1.96)[0] for d, s in zip(t, sigma)])
    low, high = np.mean([p[1] for p in suite]), np.mean([p[2] for p in suite])
    return {"per": per, "suite": interval(float(np.mean(t)), bias, low, high, suite_se)}


def test_estimates_and_intervals_equal_the_formulas_worked_by_hand():
    """Three prompts of two classes, each with two bootstrap replicates placed so that every σ and se is a round
    number: d = 0.2 with σ = 0.1 (x = 2, a little bias), d = 0.04 with σ = 0.08 (x = 0.5, below a tie's mean
    |d|: estimate 0), d = 0.96 with σ = 0.04 (its upper end T + 1.96 se = 1.04 is cut at 1)."""
    shares = np.array([[0.6, 0.4], [0.52, 0.48], [0.98, 0.02]])
    boot = np.array([[[0.65, 0.35], [0.56, 0.44], [1.0, 0.0]],
                     [[0.55, 0.45], [0.48, 0.52], [0.96, 0.04]]])
    # differences f1 − f2 per replicate: (0.3, 0.12, 1.0) and (0.1, −0.04, 0.92); rd = their absolute values
    sigma = [0.1, 0.08, 0.04]
    se = [0.1, 0.04, 0.04]  # the spread of |f1 − f2|: 0.12 and 0.04 for the second prompt, not ±0.08
    suite_se = 0.5 * abs((0.3 + 0.12 + 1.0) / 3 - (0.1 + 0.04 + 0.92) / 3)
    want = _by_hand([0.2, 0.04, 0.96], sigma, se, suite_se)
    out = population_rd(shares, boot)
    np.testing.assert_allclose(out["plain"], [0.2, 0.04, 0.96], atol=1e-12)
    np.testing.assert_allclose(out["estimate"], [p[0] for p in want["per"]], atol=1e-6)
    np.testing.assert_allclose(out["ci95"], [p[1:] for p in want["per"]], atol=1e-6)
    assert out["suite_estimate"] == pytest.approx(want["suite"][0], abs=1e-6)
    np.testing.assert_allclose(out["suite_ci95"], want["suite"][1:], atol=1e-6)
    # the hand-checkable parts: no bias left below a tie's mean |d|, an upper end cut at 1
    assert out["estimate"][1] == 0.0
    assert out["ci95"][2, 1] == 1.0
    assert 0.19 < out["estimate"][0] < 0.2
