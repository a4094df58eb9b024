"""Classifier-error correction: the estimator, the noisy perception harness, calibration files, label sets."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from scipy.optimize import minimize

from fairgen import perception
from fairgen.calibrate import Calibration, calibrate, load_calibration
from fairgen.labelled import label, labelled_set
from fairgen.metrics.correction import (
    CalibrationBlock,
    correct_shares,
    corrected_estimates,
    corrected_results,
    simplex_lstsq,
)
from fairgen.perception.noisy import NoisyPerception, image_key
from fairgen.perception.world import WorldPerception
from fairgen.types import ATTRIBUTES, JOINT, JOINT_CLASSES, FairgenError
from fairgen.world import render

NOISE_YAML = """
confusion:
  gender: {female: {male: 0.15}, male: {female: 0.05}}
miss:
  gender: {female: 0.10, male: 0.02}
"""


def random_rates(rng: np.random.Generator, k: int, diag: float = 0.8) -> np.ndarray:
    m = rng.dirichlet(np.ones(k), size=k) * (1 - diag)
    return m + np.eye(k) * diag


# --- the estimator --------------------------------------------------------------------------------


def test_population_shares_are_recovered_exactly():
    """Without sampling noise the two inverted steps (confusion, then detection) give the planted shares back,
    on the simplex's interior and on its boundary, for the joint 8-class block and a 2-class one."""
    rng = np.random.default_rng(0)
    for k in (2, 4, 8):
        rates, detection = random_rates(rng, k), rng.uniform(0.6, 1.0, k)
        true = rng.dirichlet(np.ones(k), size=50)
        true[:10, : k // 2] = 0  # boundary: some classes absent
        true /= true.sum(axis=1, keepdims=True)
        found = true * detection
        observed = (found / found.sum(axis=1, keepdims=True)) @ rates
        assert np.allclose(correct_shares(observed, rates, detection), true, atol=1e-6)


def test_simplex_lstsq_matches_a_general_solver_where_the_inverse_is_infeasible():
    rng = np.random.default_rng(1)
    rates = random_rates(rng, 4, diag=0.7)
    f = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]])
    q = simplex_lstsq(f, rates)
    assert np.all(q >= 0) and np.allclose(q.sum(axis=1), 1)
    for row, got in zip(f, q):
        loss = lambda x, row=row: float(np.sum((x @ rates - row) ** 2))  # noqa: E731
        ref = minimize(loss, np.full(4, 0.25), method="SLSQP", bounds=[(0, 1)] * 4,
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-14})
        assert loss(got) <= ref.fun + 1e-9


def test_rows_without_faces_stay_nan_and_two_classes_clip():
    rates = np.array([[0.85, 0.15], [0.05, 0.95]])
    out = correct_shares(np.array([[np.nan, np.nan], [0.02, 0.98], [1.0, 0.0]]), rates, np.array([0.9, 1.0]))
    assert np.isnan(out[0]).all()
    assert np.allclose(out[1:], [[0.0, 1.0], [1.0, 0.0]])


def test_near_singular_confusion_is_refused():
    block = CalibrationBlock("gender", np.array([100, 100]), np.array([[52, 48], [49, 51]]))
    with pytest.raises(FairgenError, match="near-singular"):
        block.check("cal.json")
    empty = CalibrationBlock("age", np.array([10, 10]), np.array([[10, 0], [0, 0]]))
    with pytest.raises(FairgenError, match="no face of true class old"):
        empty.check("cal.json")


def test_corrected_results_schema_and_marginals():
    rng = np.random.default_rng(2)
    rates = np.kron([[0.85, 0.15], [0.05, 0.95]], np.eye(4))
    block = CalibrationBlock(JOINT, np.full(8, 250), np.round(rates * 225).astype(np.int64))
    counts = {JOINT: rng.multinomial(200, np.full(8, 1 / 8), size=3)}
    counts[JOINT][2] = 0  # a prompt without faces
    summary, prompts, gaps = corrected_results(counts, {JOINT: block}, replicates=200, seed=0)
    assert set(summary) == {"gender", "race", JOINT}
    assert prompts[2]["gender"]["rd"] is None and prompts[2]["gender"]["rd_ci95"] is None
    for p in prompts[:2]:
        joint = np.array([p[JOINT]["shares"][c] for c in JOINT_CLASSES]).reshape(2, 4)
        assert np.allclose(joint.sum(axis=1), [p["gender"]["shares"][c] for c in ATTRIBUTES["gender"]])
        lo, hi = p["gender"]["rd_ci95"]
        assert lo <= p["gender"]["rd"] <= hi
    mean_rd = np.mean([p["gender"]["rd"] for p in prompts[:2]])
    assert summary["gender"]["rd_corrected"]["mean"] == pytest.approx(mean_rd)
    assert gaps[JOINT]["gap"] == pytest.approx(0.0) and gaps[JOINT]["p_value"] == 1.0


def test_replicates_stay_finite_when_a_class_has_few_calibration_faces():
    """A replicate may find no face of a rare class: it keeps that class's observed rates, never NaN."""
    block = CalibrationBlock("gender", np.array([2, 200]), np.array([[1, 0], [10, 180]]))
    est = corrected_estimates({"gender": np.array([[30, 70]])}, {"gender": block}, replicates=500, seed=0)
    assert np.isfinite(est["gender"]["shares_boot"]).all() and np.isfinite(est["gender"]["rd_boot"]).all()


# --- the noisy perception harness ------------------------------------------------------------------


def test_noise_is_deterministic_per_image_and_has_the_planted_rates(tmp_path):
    confusion = {"gender": {"female": {"male": 0.15}, "male": {"female": 0.05}}}
    noisy = NoisyPerception(WorldPerception(), confusion, {"gender": {"female": 0.10, "male": 0.02}}, seed=7)
    face = WorldPerception().perceive([render("female", "asian", "young", "x", 0)])[0]
    seen = [noisy.corrupt(face, b"%d" % i) for i in range(6000)]
    missed = np.mean([not s.face for s in seen])
    misread = np.mean([s.label()["gender"] == "male" for s in seen if s.face])
    assert abs(missed - 0.10) < 0.015 and abs(misread - 0.15) < 0.02
    assert all(s.label()["race"] == "asian" for s in seen if s.face)  # only gender is noisy
    image = render("male", "black", "old", "x", 3)
    image.save(tmp_path / "a.png")
    from PIL import Image

    again = Image.open(tmp_path / "a.png")
    assert image_key(again) == image_key(image)
    assert noisy.perceive([image] * 3) == noisy.perceive([again] * 3)


def test_joint_confusion_moves_both_attributes():
    noisy = NoisyPerception(WorldPerception(), {JOINT: {"female_black": {"male_indian": 1.0}}})
    images = [render("female", "black", "young", "x", 1), render("male", "white", "old", "x", 1)]
    seen = noisy.perceive(images)
    assert seen[0].label() == {"gender": "male", "race": "indian", "age": "young"}
    assert seen[1].label() == {"gender": "male", "race": "white", "age": "old"}


@pytest.mark.parametrize("confusion, miss, needle", [
    ({"gender": {"female": {"male": 1.5}}}, None, r"in \[0, 1\]"),
    ({"gender": {"femme": {"male": 0.1}}}, None, "unknown class 'femme'"),
    ({"gender": {"female": {"male": 0.6, "female": 0.1}}, "race": {}}, None, None),
    ({JOINT: {}, "gender": {}}, None, "not both"),
    (None, {"height": {"tall": 0.1}}, "not measured"),
])
def test_bad_noise_is_a_fairgen_error(confusion, miss, needle):
    if needle is None:  # a row's own class is ignored: only read-as probabilities count
        NoisyPerception(WorldPerception(), confusion, miss)
        return
    with pytest.raises(FairgenError, match=needle):
        NoisyPerception(WorldPerception(), confusion, miss)


def test_world_noisy_backend_from_the_registry(tmp_path):
    path = tmp_path / "noise.yaml"
    path.write_text(NOISE_YAML)
    backend = perception.load(f"world-noisy:{path},seed=3")
    assert backend.name.startswith("world-noisy:") and backend.seed == 3
    assert backend.provenance()["confusion"]["gender"] == [[0.85, 0.15], [0.05, 0.95]]
    with pytest.raises(FairgenError, match="not found"):
        perception.load(f"world-noisy:{tmp_path / 'missing.yaml'}")
    (tmp_path / "bad.yaml").write_text("confusion: [1, 2]\n")
    with pytest.raises(FairgenError, match="mapping"):
        perception.load(f"world-noisy:{tmp_path / 'bad.yaml'}")


# --- calibration files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cal_json(tmp_path_factory) -> dict:
    """A valid calibration of the exact world reader on 160 renders (joint and age blocks)."""
    path = tmp_path_factory.mktemp("cal") / "cal.json"
    calibrate("world", "world:160", out=path)
    return json.loads(path.read_text())


def test_calibration_file_round_trip(cal_json, tmp_path):
    assert set(cal_json["blocks"]) == {JOINT, "age"} and cal_json["labelled"]["n_images"] == 160
    assert cal_json["blocks"][JOINT]["confusion"]["female_white"]["female_white"] == 20
    assert cal_json["blocks"]["age"]["detection_rate"] == {"young": 1.0, "old": 1.0}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(cal_json))
    cal = load_calibration(path)
    assert isinstance(cal, Calibration) and cal.sha256 and cal.backend == "world"
    cal.check_for(perception.load("world"), "cal")
    with pytest.raises(FairgenError, match="made with perception world"):
        noise = tmp_path / "noise.yaml"
        noise.write_text(NOISE_YAML)
        cal.check_for(perception.load(f"world-noisy:{noise}"), "cal")


def _broken(data: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(data))
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


@pytest.mark.parametrize("path, value, needle", [
    (("format",), "other", "not a fairgen calibration"),
    (("version",), 9, "not supported"),
    (("blocks",), {}, "non-empty"),
    (("blocks", "height"), {}, "unknown block"),
    (("blocks", "gender"), {}, "covers gender and race"),
    (("blocks", "age", "classes"), ["old", "young"], "do not match"),
    (("blocks", "age", "n_labelled", "old"), -1, "count"),
    (("blocks", "age", "n_labelled", "old"), 1.5, "count"),
    (("blocks", "age", "confusion", "old"), KeyError, "one row per true class"),
    (("blocks", "age", "confusion", "old", "old"), 99, "more faces than labelled"),
    (("labelled",), None, "labelled"),
])
def test_malformed_calibration_files(cal_json, tmp_path, path, value, needle):
    file = tmp_path / "cal.json"
    file.write_text(json.dumps(_broken(cal_json, path, value)))
    with pytest.raises(FairgenError, match=needle):
        load_calibration(file)


def test_unreadable_calibration_files(tmp_path):
    with pytest.raises(FairgenError, match="not found"):
        load_calibration(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(FairgenError, match="cannot be read as JSON"):
        load_calibration(tmp_path / "x.json")


# --- labelled sets --------------------------------------------------------------------------------


@pytest.mark.parametrize("attr, value, expected", [
    ("race", "East Asian", "asian"), ("race", "Southeast Asian", "asian"),
    ("race", "Latino_Hispanic", "white"),
    ("race", "Middle Eastern", "white"), ("race", "Indian", "indian"), ("gender", "Female", "female"),
    ("age", "50-59", "old"), ("age", "40-49", "young"), ("age", "more than 70", "old"), ("age", "70+", "old"),
    ("age", "49", "young"), ("age", "young", "young"),
])
def test_fairface_labels_map_by_name(attr, value, expected):
    assert label(attr, value, "x") == expected


def test_csv_and_folder_label_sets(tmp_path):
    """A FairFace-style CSV (its own label names, one unreadable file) and class folders, calibrated with the
    exact reader: identity confusion, the unreadable image counted apart."""
    fairface_race = {"white": "Latino_Hispanic", "black": "Black", "asian": "Southeast Asian",
                     "indian": "Indian"}
    rows = ["file,age,gender,race,service_test"]
    for i, (g, r, a) in enumerate(itertools.product(*ATTRIBUTES.values())):
        render(g, r, a, "calib", i).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'60-69' if a == 'old' else '20-29'},{g.title()},{fairface_race[r]},True")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append("broken.png,20-29,Male,White,True")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cal = calibrate("world", tmp_path)
    assert cal.n_images == 17 and cal.n_unreadable == 1
    assert (cal.blocks[JOINT].confusion == 2 * np.eye(8)).all()
    assert (cal.blocks["age"].confusion == 8 * np.eye(2)).all()

    folders = tmp_path / "folders"
    for i, cls in enumerate(JOINT_CLASSES):
        (folders / cls).mkdir(parents=True)
        g, r = cls.split("_")
        render(g, r, "young", "calib", i).save(folders / cls / "a.png")
    cal = calibrate("world", folders)
    assert set(cal.blocks) == {JOINT}  # no age labels: no age block
    (folders / "tall").mkdir()
    with pytest.raises(FairgenError, match="not classes joined by"):
        labelled_set(folders)


@pytest.mark.parametrize("source, needle", [
    ("world:0", "N >= 1"), ("nowhere/at/all", "not found"),
])
def test_bad_label_sources(source, needle):
    with pytest.raises(FairgenError, match=needle):
        labelled_set(source)


def test_missing_classes_and_bad_csv(tmp_path):
    (tmp_path / "female").mkdir()
    render("female", "white", "young", "c", 0).save(tmp_path / "female" / "a.png")
    with pytest.raises(FairgenError, match="no readable image of true class male"):
        calibrate("world", tmp_path)
    (tmp_path / "l.csv").write_text("file,gender\na.png,robot\n")
    with pytest.raises(FairgenError, match="unknown gender label 'robot'"):
        calibrate("world", tmp_path / "l.csv")
