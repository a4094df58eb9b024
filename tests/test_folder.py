"""`folder:` audits of images already on disk: Shen et al.'s layout and fairgen's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fairgen
from fairgen.types import ATTRIBUTES
from fairgen.world import render

from conftest import run_cli, write_suite


def test_shen_layout_jpegs_counted_exactly(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "pilot", "tailor"])
    rng = np.random.default_rng(0)
    truth = {}
    for i, concept in enumerate(["nurse", "pilot", "tailor"]):
        d = tmp_path / "imgs" / f"prompt_{i}"
        d.mkdir(parents=True)
        counts = {a: dict.fromkeys(c, 0) for a, c in ATTRIBUTES.items()}
        for j in range(30):
            g, r, a = (str(rng.choice(ATTRIBUTES[x])) for x in ("gender", "race", "age"))
            counts["gender"][g] += 1
            counts["race"][r] += 1
            counts["age"][a] += 1
            render(g, r, a, concept, seed=j).save(d / f"img_{j}.jpg", quality=92)
        truth[concept.replace(" ", "-")] = counts
    (tmp_path / "imgs/prompt_1/img_30.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    res = fairgen.audit(model=f"folder:{tmp_path / 'imgs'}", suite=str(suite), perception_backend="world",
                        images_per_prompt=1000, out=tmp_path / "run")
    by_id = {p["id"]: p for p in res.results["prompts"]}
    for pid, counts in truth.items():
        for attr in ("gender", "race", "age"):
            assert by_id[pid]["counts"][attr] == counts[attr]
    assert by_id["pilot"]["n_images"] == 31 and by_id["pilot"]["n_unreadable"] == 1
    assert by_id["pilot"]["n_faces"] == 30
    assert res.summary["fidelity"]["value"] == 1.0  # the unreadable file is outside the denominator
    assert res.summary["n_unreadable"] == 1 and res.summary["face_rate"] == 1.0
    recs = [json.loads(line) for line in (tmp_path / "run/perception.jsonl").read_text().splitlines()]
    bad = [r for r in recs if r.get("error")]
    assert len(bad) == 1 and bad[0]["source"].endswith("img_30.jpg") and bad[0]["face"] is False
    assert not (tmp_path / "run/images").exists()  # the user's images are read in place, not copied
    html = (tmp_path / "run/report.html").read_text()
    assert "img_0.jpg" in html  # thumbnails link to the user's files


def test_folder_of_a_previous_run_reaudits_identically(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "pilot"])
    first = fairgen.audit(model="world", suite=str(suite), images_per_prompt=12, out=tmp_path / "gen")
    again = fairgen.audit(model=f"folder:{tmp_path / 'gen'}", suite=str(suite), perception_backend="world",
                          images_per_prompt=12, out=tmp_path / "re")
    assert [p["counts"] for p in again.results["prompts"]] == [p["counts"] for p in first.results["prompts"]]


def test_folder_errors(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["nurse"])
    proc = run_cli("audit", "--model", f"folder:{tmp_path / 'nope'}", "--suite", str(suite), "--perception", "world",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("audit", "--model", f"folder:{tmp_path / 'empty'}", "--suite", str(suite), "--perception", "world",
                   "--out", str(tmp_path / "r2"))
    assert proc.returncode == 2 and "prompt_<i>" in proc.stderr
