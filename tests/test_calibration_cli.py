"""`fairgen calibrate` and `fairgen audit --calibration` end to end, on world renders and a noisy reader."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import fairgen
from fairgen.types import JOINT, METRIC_ATTRIBUTES

from conftest import run_cli, write_spec, write_suite

NOISE = """
confusion:
  gender: {female: {male: 0.15}, male: {female: 0.05}}
miss:
  gender: {female: 0.15, male: 0.02}
"""
N_IMAGES = 80


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A noise file, suite and planted spec; a calibration and a calibrated audit, both made by the CLI."""
    root = tmp_path_factory.mktemp("calcli")
    noise = root / "noise.yaml"
    noise.write_text(NOISE)
    paths = {
        "root": root, "noise": noise, "cal": root / "cal.json", "run": root / "run",
        "suite": write_suite(root / "suite.yaml", ["nurse", "pilot"]),
        "spec": write_spec(root / "spec.yaml", {"nurse": {"gender": {"female": 0.8, "male": 0.2}},
                                                "pilot": {"gender": {"female": 0.1, "male": 0.9}}}),
    }
    proc = run_cli("calibrate", "--perception", f"world-noisy:{noise}", "--labelled", "world:400",
                   "--out", str(paths["cal"]))
    assert proc.returncode == 0, proc.stderr
    assert "detection rate" in proc.stdout and str(paths["cal"]) in proc.stdout
    proc = run_cli(*audit_args(paths), "--calibration", str(paths["cal"]), "--out", str(paths["run"]))
    assert proc.returncode == 0, proc.stderr
    assert "corrected rd" in proc.stdout
    return paths


def audit_args(paths: dict[str, Path]) -> list[str]:
    return ["audit", "--model", "world", "--world-spec", str(paths["spec"]), "--suite", str(paths["suite"]),
            "-n", str(N_IMAGES), "--seed", "5", "--perception", f"world-noisy:{paths['noise']}"]


def strip_corrected(results: dict) -> dict:
    """results.json without what a calibration adds."""
    out = json.loads(json.dumps(results))
    out.pop("calibration")
    out["summary"].pop("detection_rate_gap")
    for attr in METRIC_ATTRIBUTES:
        if out["summary"][attr] is not None:
            out["summary"][attr].pop("rd_corrected")
            out["summary"][attr].pop("rd_corrected_population")
            out["summary"][attr].pop("shares_corrected")
    for p in out["prompts"]:
        p.pop("corrected")
    return out


def test_calibration_file_from_the_cli(setup):
    cal = json.loads(setup["cal"].read_text())
    assert cal["backend"].startswith("world-noisy:") and cal["labelled"] == {
        "source": "world:400", "n_images": 400, "n_unreadable": 0}
    joint = cal["blocks"][JOINT]
    assert sum(joint["n_labelled"].values()) == 400
    rates = joint["detection_rate"]
    assert rates["male_white"] > rates["female_white"]  # women are missed more often
    assert 0.7 < joint["accuracy"]["female_black"] < 0.95 and joint["accuracy"]["male_black"] > 0.85


def test_calibrated_results_add_corrected_estimates(setup):
    results = json.loads((setup["run"] / "results.json").read_text())
    assert results["calibration"]["sha256"] and results["calibration"]["blocks"] == ["age", JOINT]
    summary = results["summary"]
    for attr in METRIC_ATTRIBUTES:
        rd = summary[attr]["rd_corrected"]
        assert rd["ci95"][0] <= rd["mean"] <= rd["ci95"][1]
    assert summary["detection_rate_gap"][JOINT]["gap"] > 0.05
    nurse = next(p for p in results["prompts"] if p["id"] == "nurse")
    raw_female = nurse["counts"]["gender"]["female"] / nurse["n_faces"]
    corrected = nurse["corrected"]["gender"]
    # 15% of women read as men and women missed more often: the correction moves the share up, towards 0.8
    assert corrected["shares"]["female"] > raw_female
    lo, hi = corrected["shares_ci95"]["female"]
    assert lo <= 0.8 <= hi
    table = pd.read_csv(setup["run"] / "results.csv")
    wanted = {"rd_gender_corrected", "rd_gender_corrected_lo", "share_gender_female_corrected"}
    assert wanted <= set(table.columns)
    html = (setup["run"] / "report.html").read_text(encoding="utf-8")
    assert 'id="corrected"' in html and "Detection rates differ across groups" in html


def test_uncalibrated_audit_is_unchanged_and_calibration_applies_later(setup):
    """The same audit without --calibration writes exactly the calibrated results.json minus the additions;
    re-running it with --calibration afterwards (no new images) gives the calibrated file byte for byte."""
    raw_dir = setup["root"] / "raw"
    kwargs = dict(model="world", world_spec=setup["spec"], suite=str(setup["suite"]),
                  images_per_prompt=N_IMAGES, seed=5, perception_backend=f"world-noisy:{setup['noise']}",
                  out=raw_dir)
    fairgen.audit(**kwargs)
    calibrated = json.loads((setup["run"] / "results.json").read_text())
    expected = json.dumps(strip_corrected(calibrated), indent=1, ensure_ascii=False) + "\n"
    assert (raw_dir / "results.json").read_text() == expected
    table = pd.read_csv(setup["run"] / "results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(raw_dir / "results.csv"),
                                  table[[c for c in table.columns if "_corrected" not in c]])
    assert 'id="corrected"' not in (raw_dir / "report.html").read_text(encoding="utf-8")

    fairgen.audit(**kwargs, calibration=setup["cal"])
    assert (raw_dir / "results.json").read_bytes() == (setup["run"] / "results.json").read_bytes()


def test_cli_refuses_bad_calibrations(setup, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "fairgen-calibration", "version": 1}))
    proc = run_cli(*audit_args(setup), "--calibration", str(bad), "--out", str(tmp_path / "r1"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "calibration" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r1").exists()  # refused before any work
    proc = run_cli("calibrate", "--perception", "world", "--labelled", str(tmp_path / "nowhere"),
                   "--out", str(tmp_path / "c.json"))
    assert proc.returncode == 2 and "not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_calibration_of_another_backend_is_refused(setup, tmp_path):
    with pytest.raises(fairgen.FairgenError, match="made with perception world-noisy"):
        fairgen.audit(model="world", suite=str(setup["suite"]), images_per_prompt=2,
                      perception_backend="world", calibration=setup["cal"], out=tmp_path / "r")
