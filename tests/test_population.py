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
