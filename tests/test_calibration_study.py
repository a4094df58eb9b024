"""A small, fixed-seed run of benchmarks/correction_study.py: correction through a known noisy reader recovers
the planted shares, removes most of the raw rd error and gives ci95 that cover the truth.

The full study (200 repeats, docs/calibration.md) holds the criteria tightly; 30 repeats hold them loosely.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

STUDY = Path(__file__).resolve().parents[1] / "benchmarks" / "correction_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("correction_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    world = module.world_spec("separated")
    results = module.run_study(world, repeats=30, images=200, n_calibration=2000, replicates=300, seed=11)
    rows, accept = module.evaluate(world, results)
    return rows, accept


def test_corrected_shares_are_unbiased_and_raw_ones_are_not(study):
    _, accept = study
    for attr, (corrected, raw) in accept["share_bias"].items():
        assert corrected <= 0.03, (attr, corrected)
    assert accept["share_bias"]["gender"][1] >= 0.08  # the noise matters: raw shares are far off


def test_correction_removes_most_of_the_rd_error(study):
    rows, accept = study
    assert accept["rd_error_ratio"]["gender"] <= 0.25
    for row in rows:
        if row["skewed"]:
            assert abs(row["cor_err"]) <= 0.035, row


def test_corrected_intervals_cover_the_truth(study):
    rows, accept = study
    skewed = [r["coverage"] for r in rows if r["skewed"]]
    assert min(skewed) >= 0.8 and 0.88 <= float(np.mean(skewed)) <= 0.995
    assert accept["suite_coverage"]["gender"] >= 0.8 and accept["suite_coverage"]["age"] >= 0.8
