"""Targets (metrics/target.py) and the peers' metrics (metrics/skew.py), each against a hand computation."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from fairgen.metrics import MetricFrame
from fairgen.metrics.skew import disparity, mad, normalized_entropy, rd
from fairgen.metrics.target import SUM_TOLERANCE, UNIFORM, jensen_shannon, load_target, total_variation
from fairgen.types import JOINT, FairgenError, Prompt


def write(tmp_path, text: str):
    path = tmp_path / "target.yaml"
    path.write_text(text)
    return path


def test_file_with_default_and_concepts(tmp_path):
    t = load_target(write(tmp_path, """
source: "hand-made for the test"
default:
  age: {young: 0.75, old: 0.25}
concepts:
  nurse:
    gender: {female: 0.87, male: 0.13}
"""))
    assert t.source == "hand-made for the test" and not t.is_uniform
    assert t.shares("gender", "nurse").tolist() == pytest.approx([0.87, 0.13])
    # a concept not listed falls back to the default; an attribute the default leaves out is uniform
    assert t.shares("gender", "ceo").tolist() == [0.5, 0.5]
    assert t.shares("age", "nurse").tolist() == [0.75, 0.25]
    assert t.shares("race", "ceo").tolist() == [0.25] * 4
    # the joint target is the product of its marginals, gender-major
    joint = t.shares(JOINT, "nurse")
    assert joint.tolist() == pytest.approx([0.87 / 4] * 4 + [0.13 / 4] * 4)
    m = t.matrix("gender", [Prompt("a", "A nurse", "nurse"), Prompt("b", "A ceo", "ceo")])
    assert m.ravel().tolist() == pytest.approx([0.87, 0.13, 0.5, 0.5])
    assert t.to_json()["concepts"]["nurse"]["gender"] == pytest.approx({"female": 0.87, "male": 0.13})


def test_uniform_by_name_and_by_default():
    assert load_target("uniform") is UNIFORM and load_target(None) is UNIFORM
    assert UNIFORM.is_uniform and UNIFORM.shares("race").tolist() == [0.25] * 4


def test_shares_within_tolerance_are_renormalised(tmp_path):
    t = load_target(write(tmp_path, "default:\n  gender: {female: 0.502, male: 0.5}\n"))
    assert t.shares("gender").sum() == pytest.approx(1.0, abs=1e-12)
    assert t.shares("gender")[0] == pytest.approx(0.502 / 1.002)


@pytest.mark.parametrize(
    "text, message",
    [
        ("default:\n  gender: {female: 0.6, male: 0.5}\n", "sum to 1.1000"),
        (f"default:\n  gender: {{female: {0.5 + 2 * SUM_TOLERANCE}, male: 0.5}}\n", "not 1"),
        ("default:\n  gender: {female: 0.5, man: 0.5}\n", "unknown class 'man'"),
        ("default:\n  gender: {female: 1.0}\n", "class 'male' is missing"),
        ("default:\n  gender: {female: 1.5, male: -0.5}\n", "finite and ≥ 0"),
        ("default:\n  height: {tall: 1.0}\n", "unknown attribute 'height'"),
        ("concepts:\n  nurse:\n    gender: {female: x, male: 0.5}\n", "must be numbers"),
        ("concepts: [nurse]\n", "'concepts' must map"),
        ("weights: {}\n", "expected a mapping with keys"),
        ("default: [1, 2\n", "not readable YAML"),
    ],
)
def test_bad_targets_are_refused_with_one_line(tmp_path, text, message):
    with pytest.raises(FairgenError, match=message) as e:
        load_target(write(tmp_path, text))
    assert "\n" not in str(e.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FairgenError, match="no such file"):
        load_target(tmp_path / "nope.yaml")


def test_distances_against_hand_values():
    # shares (0.75, 0.25) against (0.5, 0.5): TV = ½(0.25 + 0.25) = 0.25
    assert total_variation([30, 10], [0.5, 0.5]) == pytest.approx(0.25)
    # JS by its definition, in bits, written out term by term
    f, t = np.array([0.75, 0.25]), np.array([0.5, 0.5])
    m = (f + t) / 2
    hand = 0.5 * sum(f * np.log2(f / m)) + 0.5 * sum(t * np.log2(t / m))
    assert jensen_shannon([30, 10], t) == pytest.approx(hand)
    # identical distributions: 0; disjoint supports: TV 1 and JS exactly 1 bit
    assert total_variation([5, 5], [0.5, 0.5]) == 0 and jensen_shannon([5, 5], [0.5, 0.5]) == 0
    assert total_variation([10, 0], [0, 1]) == 1 and jensen_shannon([10, 0], [0.0, 1.0]) == pytest.approx(1.0)
    # a zero share in the target with mass in the shares stays finite
    assert 0 < jensen_shannon([3, 1], [1.0, 0.0]) < 1
    # no faces: not measured
    assert math.isnan(total_variation([0, 0], [0.5, 0.5])) and math.isnan(jensen_shannon([0, 0], [0.5, 0.5]))
    # vectorised over prompts with one target per prompt
    got = total_variation([[30, 10], [10, 30]], [[0.75, 0.25], [0.5, 0.5]])
    assert got.tolist() == pytest.approx([0.0, 0.25])


@pytest.mark.parametrize("counts", [[30, 10], [5, 5, 0, 10], [1, 0, 0, 0], [7, 3, 2, 9, 0, 1, 4, 4], [0, 12]])
def test_peer_metrics_by_independent_formulas(counts):
    n, k = sum(counts), len(counts)
    shares = [c / n for c in counts]
    # DALL-Eval's mean absolute deviation from the uniform share
    assert mad(counts) == pytest.approx(sum(abs(s - 1 / k) for s in shares) / k)
    # representation disparity: the largest share minus the smallest
    assert disparity(counts) == pytest.approx(max(shares) - min(shares))
    # Shen's rd by its pairwise definition, to check the sorted-weights implementation beside them
    pairs = sum(abs(a - b) for a, b in combinations(shares, 2))
    assert rd(counts) == pytest.approx(2 / (k * (k - 1)) * pairs)
    # entropy-based diversity (normalised Shannon entropy); OpenBias reports 1 minus it
    h = -sum(s * math.log(s) for s in shares if s > 0) / math.log(k)
    assert normalized_entropy(counts) == pytest.approx(h)


def test_summary_reports_distances_to_the_target_with_intervals(tmp_path):
    prompts = [Prompt("nurse", "A nurse", "nurse"), Prompt("ceo", "A ceo", "ceo")]
    counts = {"gender": np.array([[90, 10], [20, 80]])}
    frame = MetricFrame(prompts, np.array([100, 100]), np.array([100, 100]), np.array([0, 0]), counts)
    target = load_target(write(tmp_path, "concepts:\n  nurse:\n    gender: {female: 0.9, male: 0.1}\n"))
    res = frame.summarize(replicates=400, seed=1, target=target)
    rows = {p["id"]: p for p in res["prompts"]}
    assert rows["nurse"]["tv"]["gender"] == pytest.approx(0.0)   # exactly on its target
    assert rows["ceo"]["tv"]["gender"] == pytest.approx(0.3)     # (0.2, 0.8) against uniform
    assert res["summary"]["gender"]["tv"]["mean"] == pytest.approx(0.15)
    lo, hi = rows["ceo"]["tv_ci95"]["gender"]
    assert lo < 0.3 < hi and hi - lo < 0.25
    assert res["summary"]["gender"]["mad"]["mean"] == pytest.approx((0.4 + 0.3) / 2)
    assert res["target"]["concepts"]["nurse"]["gender"]["female"] == pytest.approx(0.9)
    # uniform target: TV equals half the L1 distance to uniform, which for K = 2 is rd / 2
    uni = frame.summarize(replicates=50, seed=1)
    assert uni["summary"]["gender"]["tv"]["mean"] == pytest.approx(uni["summary"]["gender"]["rd"]["mean"] / 2)
