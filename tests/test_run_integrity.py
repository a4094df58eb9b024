"""Issue 24: a resumed run never mixes inputs, invalid values leave nothing behind, folder: reports what it
could not map, and records and JSON stay strict. Each test names the item of the issue's "Found" it covers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import yaml

import fairgen
from fairgen.types import FairgenError
from fairgen.world import render

from conftest import run_cli, write_spec, write_suite


def snapshot(root: Path) -> dict[str, str] | None:
    """Every file under root with its content hash; None when root does not exist."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def audit(tmp_path: Path, **kw):
    kw.setdefault("model", "world")
    kw.setdefault("images_per_prompt", 4)
    kw.setdefault("out", tmp_path / "run")
    return fairgen.audit(**kw)


def refused(tmp_path: Path, match: str, **kw) -> None:
    """The resumed audit is refused with a message matching `match`, and the run directory is unchanged."""
    before = snapshot(tmp_path / "run")
    with pytest.raises(FairgenError, match=match):
        audit(tmp_path, **kw)
    assert snapshot(tmp_path / "run") == before


# --- Found 1: resume with changed inputs --------------------------------------------------------------------
def test_resume_with_changed_prompt_text_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "ceo"])
    audit(tmp_path, suite=str(suite))
    data = yaml.safe_load(suite.read_text())
    data["prompts"][1]["text"] = "A photo of the face of a nurse, a person"  # same id "ceo"
    suite.write_text(yaml.safe_dump(data))
    refused(tmp_path, r"prompts\.ceo\.text", suite=str(suite), images_per_prompt=8)


def test_resume_with_changed_world_spec_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    spec = write_spec(tmp_path / "w.yaml", {"nurse": {"gender": {"female": 0.9, "male": 0.1}}})
    audit(tmp_path, suite=str(suite), world_spec=spec)
    write_spec(spec, {"nurse": {"gender": {"female": 0.1, "male": 0.9}}})
    refused(tmp_path, r"model_provenance\.world_spec_sha256", suite=str(suite), world_spec=spec, images_per_prompt=8)


def test_resume_with_replaced_folder_files_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    folder = tmp_path / "imgs" / "nurse"
    folder.mkdir(parents=True)
    for j in range(4):
        render("female", "white", "young", "nurse", seed=j).save(folder / f"{j}.png")
    audit(tmp_path, suite=str(suite), model=f"folder:{tmp_path / 'imgs'}", perception_backend="world")
    render("male", "black", "old", "ceo", seed=9).save(folder / "2.png")  # same name, other image
    refused(tmp_path, r"listing_sha256", suite=str(suite), model=f"folder:{tmp_path / 'imgs'}",
            perception_backend="world", images_per_prompt=8)


def test_resume_with_changed_perception_file_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    noise = tmp_path / "noise.yaml"
    noise.write_text(yaml.safe_dump({"confusion": {"gender": {"female": {"male": 0.1}}}}))
    audit(tmp_path, suite=str(suite), perception_backend=f"world-noisy:{noise}")
    noise.write_text(yaml.safe_dump({"confusion": {"gender": {"female": {"male": 0.3}}}}))
    refused(tmp_path, r"perception_provenance", suite=str(suite), perception_backend=f"world-noisy:{noise}",
            images_per_prompt=8)


def test_resume_with_changed_calibration_is_refused(tmp_path):
    from fairgen.calibrate import calibrate

    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    calibrate("world", "world:48", out=tmp_path / "cal.json", seed=0)
    audit(tmp_path, suite=str(suite), calibration=tmp_path / "cal.json")
    first = (tmp_path / "cal.json").read_bytes()
    # Same path, other measurements: 64 images, not 48 (the world reader is exact, so another seed alone can
    # give the same counts, and the file then differs only in its creation second, or not at all).
    calibrate("world", "world:64", out=tmp_path / "cal.json", seed=0)
    assert (tmp_path / "cal.json").read_bytes() != first
    refused(tmp_path, r"calibration_sha256", suite=str(suite), calibration=tmp_path / "cal.json")


def test_resume_with_other_sampling_or_seed_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    audit(tmp_path, suite=str(suite), sampling={"cfg": 2.0})
    refused(tmp_path, r"sampling\.cfg", suite=str(suite), sampling={"cfg": 3.0})
    refused(tmp_path, r"seed \(0 -> 1\)", suite=str(suite), sampling={"cfg": 2.0}, seed=1)
    grown = audit(tmp_path, suite=str(suite), sampling={"cfg": 2.0}, images_per_prompt=8)  # -n may grow
    assert grown.results["prompts"][0]["n_images"] == 8


def test_resume_with_other_model_defaults_or_weights_is_refused(tmp_path):
    """The model's own default sampling (part of its files) decides the images as much as --temperature."""
    from fairgen.models.tiny.adapter import WEIGHT_FILES  # noqa: F401  (the checkpoint layout)
    import fairgen.models.tiny as tiny

    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny.load(None).directory, ckpt)
    audit(tmp_path, suite=str(suite), model=f"tiny:{ckpt}", images_per_prompt=1)
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    defaults = manifest["model_provenance"]["default_sampling"]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["effective_sampling"] == defaults  # the model's defaults, in results.json and the report
    assert "the model&#39;s defaults included" in (tmp_path / "run/report.html").read_text() or \
        "the model's defaults included" in (tmp_path / "run/report.html").read_text()
    config = json.loads((ckpt / "config.json").read_text())
    config["sampling"] = {**config.get("sampling", {}), "temperature": 0.5}
    (ckpt / "config.json").write_text(json.dumps(config))
    refused(tmp_path, r"model_provenance\.", suite=str(suite), model=f"tiny:{ckpt}", images_per_prompt=2)


# --- Found 2, 4: invalid values leave nothing -------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"sampling": {"top_p": 1.5}}, "top_p"),
    ({"sampling": {"temperature": -1.0}}, "temperature"),
    ({"sampling": {"cfg": math.nan}}, "finite"),
    ({"seed": -1}, "seed"),
    ({"images_per_prompt": 1_000_000_000}, "limit"),
])
def test_invalid_values_leave_no_directory(tmp_path, kw, match):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    with pytest.raises(FairgenError, match=match):
        audit(tmp_path, suite=str(suite), **kw)
    assert not (tmp_path / "run").exists()
    audit(tmp_path, suite=str(suite))  # the corrected command runs


def test_json_is_strict(tmp_path):
    from fairgen.store import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.0]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == \
        {"a": None, "b": [None, 1.0]}


# --- Found 3: one line, not a traceback -------------------------------------------------------------------
def test_garbage_record_line_is_one_error_line(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    audit(tmp_path, suite=str(suite))
    path = tmp_path / "run/perception.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["garbage {"] + lines[2:]) + "\n")
    proc = run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "6", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "line 3" in proc.stderr and "Traceback" not in proc.stderr


def test_dangling_symlink_in_folder_is_an_unreadable_image(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    folder = tmp_path / "imgs" / "nurse"
    folder.mkdir(parents=True)
    for j in range(3):
        render("female", "white", "young", "nurse", seed=j).save(folder / f"{j}.png")
    os.symlink(tmp_path / "gone.png", folder / "3.png")
    (folder / "img_22.png").mkdir()  # Found 7: a directory is never an image
    res = audit(tmp_path, suite=str(suite), model=f"folder:{tmp_path / 'imgs'}", perception_backend="world",
                images_per_prompt=10)
    row = res.results["prompts"][0]
    assert row["n_images"] == 4 and row["n_unreadable"] == 1 and row["n_faces"] == 3
    assert res.summary["face_rate"] == 1.0  # Found 7: unreadable files are outside the denominators
    assert res.summary["fidelity"]["value"] == 1.0 and res.summary["n_unreadable"] == 1


# --- Found 5, 6: folder mapping ---------------------------------------------------------------------------
def _shen_folder(root: Path, names: list[str], n: int = 3) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for j in range(n):
            render("female", "white", "young", "nurse", seed=j).save(root / name / f"img_{j}.png")
    return root


def test_one_based_shen_folders_are_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "ceo", "pilot"])
    imgs = _shen_folder(tmp_path / "imgs", ["prompt_1", "prompt_2"])
    with pytest.raises(FairgenError, match="prompt_0"):
        audit(tmp_path, suite=str(suite), model=f"folder:{imgs}", perception_backend="world")
    assert not (tmp_path / "run").exists()


def test_folder_coverage_is_reported(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "ceo", "pilot"])
    imgs = _shen_folder(tmp_path / "imgs", ["nurse", "ceo", "stray"], n=2)
    proc = run_cli("audit", "--model", f"folder:{imgs}", "--suite", str(suite), "--perception", "world",
                   "-n", "3", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    folder = json.loads((tmp_path / "run/results.json").read_text())["folder"]
    assert folder["prompts_without_images"] == ["pilot"]
    assert folder["prompts_short"] == {"nurse": 2, "ceo": 2}
    assert folder["unmatched_folders"] == ["stray"]
    assert "pilot" in proc.stderr and "stray" in proc.stderr and "fewer images" in proc.stderr
    assert "unreadable 0" in proc.stdout and "population rd" in proc.stdout  # the console summary
    html = (tmp_path / "run/report.html").read_text()
    assert "match no prompt" in html and "have no images" in html


def test_relative_folder_thumbnails_resolve_from_anywhere(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    _shen_folder(tmp_path / "imgs", ["nurse"], n=2)
    proc = run_cli("audit", "--model", "folder:imgs", "--suite", str(suite), "--perception", "world", "-n", "2",
                   "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "elsewhere").mkdir()
    assert run_cli("report", str(tmp_path / "run"), cwd=tmp_path / "elsewhere").returncode == 0
    html = (tmp_path / "run/report.html").read_text()
    assert "image missing" not in html
    assert (tmp_path / "imgs/nurse/img_0.png").resolve().as_uri() in html


# --- Found 8: locate with nothing to measure --------------------------------------------------------------
def test_locate_world_is_refused_not_cleared(tmp_path):
    proc = run_cli("locate", "--model", "world", "--out", str(tmp_path / "loc"), "-n", "2")
    assert proc.returncode == 2 and "nothing to locate" in proc.stderr
    assert "No component found biased" not in proc.stdout
    assert not (tmp_path / "loc").exists()
