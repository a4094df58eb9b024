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


def test_loaded_target_records_its_file_and_every_distribution(tmp_path):
    path = write(tmp_path, 'source: "BLS 2024"\ndefault:\n  age: {young: 0.75, old: 0.25}\nconcepts:\n'
                           '  nurse:\n    race: {white: 0.5, black: 0.25, asian: 0.125, indian: 0.125}\n')
    t = load_target(path)
    assert t.name == str(path)
    assert t.to_json() == {
        "name": str(path), "source": "BLS 2024", "default": {"age": {"young": 0.75, "old": 0.25}},
        "concepts": {"nurse": {"race": {"white": 0.5, "black": 0.25, "asian": 0.125, "indian": 0.125}}}}
    # the joint target of a concept uses that concept's race shares (and the default's uniform gender)
    joint = t.shares(JOINT, "nurse")
    assert joint.tolist() == pytest.approx([0.5 * r for r in (0.5, 0.25, 0.125, 0.125)] * 2)
    assert load_target(write(tmp_path, "default:\n  gender: {female: 1.0, male: 0}\n")).shares("gender").tolist() == [1, 0]


@pytest.mark.parametrize("text, message", [
    ("default: [1]\n", "default: expected attribute: {class: share}"),
    ("concepts:\n  nurse:\n    height: {}\n",
     "concept 'nurse': unknown attribute 'height' (known: gender, race, gender_x_race, age)"),
    ("default:\n  gender: [0.5, 0.5]\n", "default, gender: expected {class: share} for classes female, male"),
    ("default:\n  age: {young: 0.5, middle: 0.5}\n", "default, age: unknown class 'middle' (classes: young, old)"),
    ("concepts:\n  ceo:\n    gender: {female: 0.2, male: 0.7}\n",
     "concept 'ceo', gender: shares sum to 0.9000, not 1 (tolerance 0.005)"),
])
def test_bad_target_lines_name_where(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(FairgenError) as e:
        load_target(path)
    assert str(e.value) == f"--target {path}: {message}"


def test_unreadable_yaml_names_the_parser_error(tmp_path):
    import yaml

    from fairgen.yamlfile import load_yaml

    path = write(tmp_path, "default: [1, 2\n")
    with pytest.raises(yaml.YAMLError) as parser:
        load_yaml(path.read_text())
    with pytest.raises(FairgenError) as e:
        load_target(path)
    assert str(e.value) == f"--target {path}: not readable YAML ({type(parser.value).__name__})"


def test_distances_are_plain_floats_for_one_prompt_and_rows_for_many():
    assert type(total_variation([3, 1], [0.5, 0.5])) is float and type(jensen_shannon([3, 1], [0.5, 0.5])) is float
    # integer targets are shares too: a (1, 0) target against shares (3/4, 1/4)
    f, t = np.array([0.75, 0.25]), np.array([1.0, 0.0])
    m = (f + t) / 2
    hand = 0.5 * (0.75 * np.log2(0.75 / m[0]) + 0.25 * np.log2(0.25 / m[1])) + 0.5 * np.log2(1 / m[0])
    assert jensen_shannon([3, 1], [1, 0]) == pytest.approx(hand)
    assert total_variation([3, 1], [1, 0]) == pytest.approx(0.25)
    # many prompts: each row on its own; a row without faces is NaN, the others are not
    rows = np.array([[3, 1], [0, 0], [1, 1], [0, 5]])
    got = jensen_shannon(rows, [0.5, 0.5])
    for row, value in zip(rows, got):
        alone = jensen_shannon(row, [0.5, 0.5])
        assert (math.isnan(alone) and math.isnan(value)) or value == pytest.approx(alone)
    assert math.isnan(got[1]) and not np.isnan(got[[0, 2, 3]]).any()


def test_jensen_shannon_with_zero_shares_over_many_prompts():
    """Zero shares contribute 0 (0 log 0 = 0) in a large batch too, where scratch memory is fresh."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 3, size=(50_000, 4))
    counts[:, 0] = 0
    counts[:, 1] += 1
    got = jensen_shannon(counts, [0.25] * 4)
    assert np.isfinite(got).all()
    for i in (0, 1, 49_999):
        f = counts[i] / counts[i].sum()
        m = (f + 0.25) / 2
        hand = 0.5 * sum(x * math.log2(x / y) for x, y in zip(f, m) if x > 0) + 0.5 * sum(0.25 * np.log2(0.25 / m))
        assert got[i] == pytest.approx(hand)
