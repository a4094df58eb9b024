"""calibrate.py without a model: counts from readings given here by hand, the CAL.json written from them
and read back, every refusal's full line, and the corrected estimates added to results.json."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from fairgen.calibrate import (
    Calibration,
    add_corrected,
    block_attributes,
    calibrate,
    calibration_from,
    load_calibration,
)
from fairgen.metrics import MetricFrame
from fairgen.metrics.correction import corrected_results
from fairgen.perception.world import WorldPerception
from fairgen.store import versions
from fairgen.types import JOINT, FairgenError, Perception, Prompt


def seen_as(gender):
    return Perception(face=True, probs={"gender": {"female": 0.9, "male": 0.1} if gender == "female"
                                        else {"female": 0.2, "male": 0.8}})


NO_FACE = Perception(face=False)
# 3 female images: read female, read male, no face; 3 male: read male twice, one unreadable (None)
TRUTHS = [{"gender": "female"}] * 3 + [{"gender": "male"}] * 3
SEEN = [seen_as("female"), seen_as("male"), NO_FACE, seen_as("male"), seen_as("male"), None]


def hand_calibration():
    return calibration_from(WorldPerception(), "hand", TRUTHS, SEEN)


def test_counts_and_the_file_by_hand():
    cal = hand_calibration()
    assert (cal.backend, cal.source, cal.n_images, cal.n_unreadable) == ("world", "hand", 6, 1)
    assert cal.provenance == WorldPerception().provenance() and set(cal.blocks) == {"gender"}
    block = cal.blocks["gender"]
    assert block.n_labelled.tolist() == [3, 2] and block.confusion.tolist() == [[1, 1], [0, 2]]
    data = cal.to_json()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", data.pop("created"))
    assert data == {
        "format": "fairgen-calibration", "version": 1, "fairgen_version": versions().get("fairgen"),
        "backend": "world", "provenance": WorldPerception().provenance(),
        "labelled": {"source": "hand", "n_images": 6, "n_unreadable": 1},
        "blocks": {"gender": {
            "classes": ["female", "male"], "n_labelled": {"female": 3, "male": 2},
            "n_detected": {"female": 2, "male": 2}, "detection_rate": {"female": 2 / 3, "male": 1.0},
            "accuracy": {"female": 0.5, "male": 1.0},
            "condition_number": pytest.approx(float(np.linalg.cond(np.array([[0.5, 0.5], [0.0, 1.0]])))),
            "confusion": {"female": {"female": 1, "male": 1}, "male": {"female": 0, "male": 2}}}}}
    assert all(type(v) is int for v in data["blocks"]["gender"]["n_labelled"].values())
    assert all(type(v) is float for v in data["blocks"]["gender"]["accuracy"].values())


def test_a_file_round_trips(tmp_path):
    cal = hand_calibration()
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(cal.to_json()))
    back = load_calibration(path)
    assert back.path == str(path) and back.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (back.backend, back.provenance, back.source, back.n_images, back.n_unreadable) == (
        "world", WorldPerception().provenance(), "hand", 6, 1)
    assert back.blocks["gender"].n_labelled.tolist() == [3, 2]
    assert back.blocks["gender"].confusion.tolist() == [[1, 1], [0, 2]]
    back.check_for(WorldPerception(), "cal")
    # a labelled set without a source reads as ""
    data = cal.to_json()
    del data["labelled"]["source"]
    assert Calibration.from_json(data, "w").source == ""


def broken(**changes):
    data = json.loads(json.dumps(hand_calibration().to_json()))
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return data


@pytest.mark.parametrize("changes, message", [
    ({"format": "x"}, 'w is not a fairgen calibration file (no "format": "fairgen-calibration")'),
    ({"version": 2}, "w: calibration version 2 is not supported (1)"),
    ({"backend": ""}, "w: 'backend' must be a name and 'provenance' an object"),
    ({"backend": 3}, "w: 'backend' must be a name and 'provenance' an object"),
    ({"provenance": []}, "w: 'backend' must be a name and 'provenance' an object"),
    ({"labelled": []}, "w: 'labelled' must give n_images and n_unreadable as counts"),
    ({"labelled__n_images": True}, "w: 'labelled' must give n_images and n_unreadable as counts"),
    ({"labelled__n_unreadable": -1}, "w: 'labelled' must give n_images and n_unreadable as counts"),
    ({"labelled__n_images": KeyError}, "w: 'labelled' must give n_images and n_unreadable as counts"),
    ({"blocks": []}, "w: 'blocks' must be a non-empty object"),
    ({"blocks__gender_x_race": {}}, "w: a gender_x_race block already covers gender and race; found both"),
    ({"blocks": {"gender_x_race": {}, "race": {}}},
     "w: a gender_x_race block already covers gender and race; found both"),
    ({"blocks__height": {}}, "w: unknown block 'height' (expected one of: gender_x_race, gender, race, age)"),
    ({"blocks__gender": []}, "w block gender: expected an object"),
    ({"blocks__gender__classes": ["male", "female"]},
     "w block gender: classes ['male', 'female'] do not match gender's (female, male)"),
    ({"blocks__gender__n_labelled": {"female": 3}},
     "w block gender: n_labelled must give a count (integer >= 0) for each of female, male"),
    ({"blocks__gender__n_labelled": [3, 2]},
     "w block gender: n_labelled must give a count (integer >= 0) for each of female, male"),
    ({"blocks__gender__n_labelled__male": 2.0},
     "w block gender: n_labelled must give a count (integer >= 0) for each of female, male"),
    ({"blocks__gender__confusion": []},
     "w block gender: confusion must have one row per true class (female, male)"),
    ({"blocks__gender__confusion__male": {"female": 0, "male": -2}},
     "w block gender: confusion row male must give a count (integer >= 0) for each of female, male"),
    ({"blocks__gender__confusion__male__male": 3},
     "w block gender: confusion row male counts more faces than labelled images"),
])
def test_malformed_files_are_one_full_line(changes, message):
    with pytest.raises(FairgenError) as e:
        Calibration.from_json(broken(**changes), "w")
    assert str(e.value) == message


def test_a_row_may_count_every_labelled_image():
    data = broken(blocks__gender__confusion__male__male=2, blocks__gender__confusion__male__female=0)
    assert Calibration.from_json(data, "w").blocks["gender"].n_detected.tolist() == [2, 2]
    data = broken(blocks__gender__confusion__female__male=2)  # female row: 1 + 2 = 3 = labelled
    assert Calibration.from_json(data, "w").blocks["gender"].confusion.tolist() == [[1, 2], [0, 2]]


def test_unreadable_files(tmp_path):
    with pytest.raises(FairgenError) as e:
        load_calibration(tmp_path / "none.json")
    assert str(e.value) == f"calibration file {tmp_path / 'none.json'} not found (make one with fairgen calibrate)"
    for name, content, kind in [("a.json", b"{not json", "JSONDecodeError"), ("b.json", b"\xff\xfe", "UnicodeDecodeError")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(FairgenError) as e:
            load_calibration(tmp_path / name)
        assert str(e.value) == f"calibration file {tmp_path / name} cannot be read as JSON ({kind})"
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(FairgenError, match=re.escape(f"calibration {tmp_path / 'c.json'} is not a fairgen")):
        load_calibration(tmp_path / "c.json")


class GenderOnly(WorldPerception):
    """The world reader restricted to gender: a backend that does not measure age."""

    name = "world:gender-only"
    attributes = ("gender",)


def test_a_calibration_is_for_its_own_backend_only():
    cal = hand_calibration()
    cal.check_for(GenderOnly(), "c")  # same family ("world"), same provenance, gender measured
    other = Calibration("world", {"reader_version": -1}, "s", 1, 0, cal.blocks)
    with pytest.raises(FairgenError) as e:
        other.check_for(WorldPerception(), "c")
    assert str(e.value) == ("c was made with perception world, not world (or with other weights or settings); "
                            "calibrate this backend")
    # where the weights lie, which package versions ran: not the backend's identity
    moved = Calibration("world", {**WorldPerception().provenance(), "weights": "/x", "dir": "/d",
                                  "versions": {"a": 1}}, "s", 1, 0, cal.blocks)
    moved.check_for(WorldPerception(), "c")
    # one family, other settings in the name (world-noisy:<file>): the provenance tells them apart
    Calibration("world:other-spec", WorldPerception().provenance(), "s", 1, 0, cal.blocks).check_for(
        WorldPerception(), "c")
    named = Calibration("other:world", WorldPerception().provenance(), "s", 1, 0, cal.blocks)
    with pytest.raises(FairgenError, match="made with perception other:world, not world"):
        named.check_for(WorldPerception(), "c")
    aged = calibration_from(WorldPerception(), "s", [{"age": "young"}, {"age": "old"}],
                            [Perception(face=True, probs={"age": {"young": 1.0, "old": 0.0}}),
                             Perception(face=True, probs={"age": {"young": 0.0, "old": 1.0}})])
    with pytest.raises(FairgenError) as e:
        aged.check_for(GenderOnly(), "c")
    assert str(e.value) == "c: block age needs age, which world:gender-only does not measure"
    joint = Calibration("world", WorldPerception().provenance(), "s", 1, 0,
                        {JOINT: calibration_from(WorldPerception(), "s", *joint_readings()).blocks[JOINT]})
    with pytest.raises(FairgenError, match="c: block gender_x_race needs race, which world:gender-only"):
        joint.check_for(GenderOnly(), "c")


def joint_readings():
    from fairgen.types import JOINT_CLASSES

    truths, seen = [], []
    for cls in JOINT_CLASSES:
        g, r = cls.split("_")
        truths.append({"gender": g, "race": r})
        seen.append(Perception(face=True, probs={"gender": {g: 1.0}, "race": {r: 1.0}}))
    return truths, seen


def test_which_blocks_a_label_set_allows():
    both = [{"gender": "female", "race": "white"}, {"gender": "male"}]
    assert block_attributes(("gender", "race", "age"), both) == [JOINT]
    assert block_attributes(("gender", "race"), both) == [JOINT]  # exactly the two the joint block needs
    assert block_attributes(("gender", "race"), [{"gender": "male"}, {"race": "black"}]) == ["gender", "race"]
    assert block_attributes(("gender", "age"), both + [{"age": "old"}]) == ["gender", "age"]
    assert block_attributes(("race", "age"), [{"race": "black"}]) == ["race"]
    assert block_attributes(("gender", "race"), [{"race": "black", "age": "old"}]) == ["race"]
    with pytest.raises(FairgenError) as e:
        block_attributes(("gender", "race"), [{"age": "old"}])
    assert str(e.value) == "the labelled set labels none of the attributes the backend measures (gender, race)"


def test_joint_counts_need_both_labels_and_every_class():
    truths, seen = joint_readings()
    truths = truths + [{"gender": "female"}]  # no race: not in the joint block
    seen = seen + [Perception(face=True, probs={"gender": {"female": 1.0}, "race": {"black": 1.0}})]
    cal = calibration_from(WorldPerception(), "s", truths, seen)
    assert set(cal.blocks) == {JOINT}
    assert (cal.blocks[JOINT].confusion == np.eye(8)).all() and cal.blocks[JOINT].n_labelled.tolist() == [1] * 8
    # an image without a race label, or unreadable, is skipped wherever it lies: the count goes on after it
    first = calibration_from(WorldPerception(), "s", [{"gender": "female"}, truths[0]] + truths[:8],
                             [seen[8], None] + seen[:8])
    assert (first.blocks[JOINT].confusion == np.eye(8)).all() and first.blocks[JOINT].n_labelled.tolist() == [1] * 8
    assert (first.n_images, first.n_unreadable) == (10, 1)
    with pytest.raises(FairgenError) as e:
        calibration_from(WorldPerception(), "s", truths[1:], seen[1:])
    assert str(e.value) == ("the labelled set has no readable image of true class female_white, needed for the "
                            "gender_x_race confusion matrix")
    blind = [Perception(face=False)] * 8
    with pytest.raises(FairgenError, match=r"^calibration of world: no face of true class female_white"):
        calibration_from(WorldPerception(), "s", truths[:8], blind)


def test_calibrate_refusals_progress_and_file(tmp_path):
    with pytest.raises(FairgenError) as e:
        calibrate("world", "world:8", batch_size=0)
    assert str(e.value) == "batch size must be positive (got 0)"
    with pytest.raises(FairgenError) as e:
        calibrate("world", "world:8", out=tmp_path)
    assert str(e.value) == f"--out {tmp_path} is a directory; give a file name such as CAL.json"
    calls = []
    out = tmp_path / "cal.json"
    cal = calibrate(WorldPerception(), "world:16", out=out, batch_size=5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(5, 16), (10, 16), (15, 16), (16, 16)]
    written = json.loads(out.read_text())
    written.pop("created")
    expected = cal.to_json()
    expected.pop("created")
    assert written == expected and cal.source == "world:16" and cal.n_images == 16
    assert set(cal.blocks) == {JOINT, "age"} and (cal.blocks[JOINT].confusion == 2 * np.eye(8)).all()
    # the default batch size, and one image at a time, give the same counts
    assert calibrate("world", "world:16").to_json()["blocks"] == cal.to_json()["blocks"]
    assert calibrate("world", "world:16", batch_size=1).to_json()["blocks"] == cal.to_json()["blocks"]


def test_the_seed_draws_the_world_renders(tmp_path):
    """A noisy reader's mistakes are fixed per image, so other renders (another seed) give other counts; the
    default seed is 0."""
    from fairgen import perception

    noise = tmp_path / "noise.yaml"
    noise.write_text("confusion:\n  gender: {female: {male: 0.3}, male: {female: 0.3}}\n")
    backend = perception.load(f"world-noisy:{noise}")
    counts = {s: calibrate(backend, "world:64", seed=s).blocks[JOINT].confusion.tolist() for s in (0, 1)}
    assert counts[0] != counts[1]
    assert calibrate(backend, "world:64").blocks[JOINT].confusion.tolist() == counts[0]


def test_corrected_estimates_are_added_beside_the_raw_ones(tmp_path):
    truths, seen = joint_readings()
    cal = calibration_from(WorldPerception(), "s", truths * 20, seen * 20)
    cal = Calibration(cal.backend, cal.provenance, cal.source, cal.n_images, cal.n_unreadable, cal.blocks,
                      path="cal.json", sha256="abc")
    prompts = [Prompt("nurse", "a nurse", "nurse"), Prompt("ceo", "a ceo", "ceo")]
    rng = np.random.default_rng(0)
    joint = rng.multinomial(40, np.full(8, 1 / 8), size=2)
    view = joint.reshape(2, 2, 4)
    counts = {"gender": view.sum(axis=2), "race": view.sum(axis=1), JOINT: joint}
    frame = MetricFrame(prompts, np.array([40, 40]), np.array([40, 40]), np.array([0, 0]), counts)
    results = frame.summarize(replicates=50, seed=0)
    raw = json.loads(json.dumps(results, default=float))
    add_corrected(results, frame.counts, cal, replicates=60, seed=3)
    assert results["calibration"] == {"file": "cal.json", "sha256": "abc", "backend": "world", "source": "s",
                                      "n_images": 160, "blocks": [JOINT]}
    summary, rows, gaps = corrected_results(dict(frame.counts), cal.blocks, 60, 3)
    for attr in ("gender", "race", JOINT):
        for key, value in summary[attr].items():
            assert results["summary"][attr][key] == value
        assert results["summary"][attr]["rd"] == raw["summary"][attr]["rd"]  # raw values unchanged
    assert results["summary"]["age"] is None  # not measured: stays None, gains nothing
    assert results["summary"]["detection_rate_gap"] == gaps
    for row, extra in zip(results["prompts"], rows):
        assert row["corrected"] == {"gender": extra["gender"], "race": extra["race"], JOINT: extra[JOINT],
                                    "age": None}


def test_a_measured_attribute_without_a_block_reads_none():
    cal = hand_calibration()
    prompts = [Prompt("nurse", "a nurse", "nurse")]
    counts = {"gender": np.array([[30, 10]]), "age": np.array([[20, 20]])}
    frame = MetricFrame(prompts, np.array([40]), np.array([40]), np.array([0]), counts)
    results = frame.summarize(replicates=20, seed=0)
    add_corrected(results, frame.counts, cal, replicates=20, seed=0)
    assert results["summary"]["age"]["rd_corrected"] is None
    assert results["summary"]["age"]["rd_corrected_population"] is None
    assert results["summary"]["age"]["shares_corrected"] is None
    assert results["summary"]["gender"]["rd_corrected"]["mean"] is not None
    assert results["prompts"][0]["corrected"]["age"] is None


def test_a_block_that_cannot_correct_is_refused_where_it_is_used():
    from fairgen.metrics.correction import CalibrationBlock

    weak = CalibrationBlock("gender", np.array([100, 100]), np.array([[52, 48], [49, 51]]))
    cal = Calibration("world", WorldPerception().provenance(), "s", 200, 0, {"gender": weak})
    with pytest.raises(FairgenError) as e:
        cal.check_for(WorldPerception(), "calibration x.json")
    assert str(e.value).startswith("calibration x.json: the gender confusion matrix is near-singular (condition "
                                   "number ")
