"""The audit pipeline end to end on the synthetic world, where the right answer is known."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fairgen
from fairgen.metrics import MetricFrame, expected_rd, rd, rd_sampling_range
from fairgen.store import RunStore
from fairgen.types import ATTRIBUTES, Prompt
from fairgen.world import WorldSpec

from conftest import write_spec, write_suite

CONCEPTS = [f"job{i}" for i in range(12)]


def random_spec(rng: np.random.Generator) -> dict:
    """Planted gender and race distributions per concept, from skewed to nearly balanced."""
    out = {}
    for c in CONCEPTS:
        g = rng.dirichlet([0.7, 0.7])
        r = rng.dirichlet([0.6] * 4)
        out[c] = {"gender": dict(zip(ATTRIBUTES["gender"], map(float, g))),
                  "race": dict(zip(ATTRIBUTES["race"], map(float, r)))}
    return _fix_sums(out)


def _fix_sums(spec: dict) -> dict:
    """Round to 6 decimals and put the rounding remainder on the first class, so each sums to 1 exactly."""
    for dists in spec.values():
        for attr, d in dists.items():
            keys = list(d)
            vals = [round(d[k], 6) for k in keys]
            vals[0] = round(1 - sum(vals[1:]), 6)
            dists[attr] = dict(zip(keys, vals))
    return spec


# False-failure budget of test_recovery_of_planted_bias, per seed: each bound below is exact or a stated upper
# bound, so a correct pipeline fails it with probability at most 96e-6 + 2e-4 + 1.4e-5 < 3.2e-4 per seed (under
# 1e-3 for the three), whatever the seeds. (The former thresholds, at most 1 of 12 concepts outside the range
# and the mean within 0.025, failed for about half of fresh seed sets.)
CLASS_ALPHA = 1e-6  # per class share: exact binomial interval (12 concepts x 8 classes = 96 of them)
BAND_P_MAX = 0.06  # per concept: P(rd outside its 95 % sampling range) <= 0.05, + 0.01 for its Monte Carlo ends
BAND_ALPHA = 1e-4  # per attribute: binomial tail of the count of concepts outside their ranges
MEAN_Z = 4.5  # per attribute: mean rd vs mean E[rd], in standard errors (two-sided 7e-6)


@pytest.mark.parametrize("spec_seed", [1, 2, 3])
def test_recovery_of_planted_bias(tmp_path, spec_seed):
    """At 200 images/prompt the measured counts are consistent with the planted spec: every class share in
    its exact binomial range, the concepts whose rd leaves its 95 % sampling range no more than a binomial
    count allows, and the mean rd over concepts within MEAN_Z standard errors of its expectation. The
    bounds are set from the false-failure budget above, not from the seeds."""
    from scipy.stats import binom

    planted = random_spec(np.random.default_rng(spec_seed))
    spec_path = write_spec(tmp_path / "spec.yaml", planted)
    suite = write_suite(tmp_path / "suite.yaml", CONCEPTS)
    n = 200
    res = fairgen.audit(model="world", world_spec=spec_path, suite=str(suite), images_per_prompt=n,
                        seed=spec_seed, out=tmp_path / "run")
    spec = WorldSpec.load(spec_path)
    outside_rd = {"gender": 0, "race": 0}
    expected = {"gender": [], "race": []}
    variance = {"gender": [], "race": []}
    measured = {"gender": [], "race": []}
    sims = np.random.default_rng(0)
    for p in res.results["prompts"]:
        assert p["n_faces"] == n  # the world always draws a readable face
        dist = spec.distribution(p["concept"])
        for attr in ("gender", "race", "age"):
            shares = np.array([dist[attr][c] for c in ATTRIBUTES[attr]])
            counts = np.array([p["counts"][attr][c] for c in ATTRIBUTES[attr]])
            lo, hi = binom.interval(1 - CLASS_ALPHA, n, shares)
            assert np.all((lo <= counts) & (counts <= hi)), (p["id"], attr, counts, shares)
            if attr in outside_rd:
                lo, hi = rd_sampling_range(shares, n)
                outside_rd[attr] += not (lo <= p["rd"][attr] <= hi)
                expected[attr].append(expected_rd(shares, n))
                variance[attr].append(np.var(rd(sims.multinomial(n, shares, size=20_000))))
                measured[attr].append(p["rd"][attr])
    allowed = int(binom.isf(BAND_ALPHA, len(CONCEPTS), BAND_P_MAX))  # P(count > allowed) <= BAND_ALPHA
    assert allowed == 5  # P(> 5 of 12 outside) = 3.1e-5: half the concepts outside their ranges fails it
    for attr in outside_rd:
        assert outside_rd[attr] <= allowed, (attr, outside_rd[attr])
        se = np.sqrt(np.sum(variance[attr])) / len(CONCEPTS)
        assert abs(np.mean(measured[attr]) - np.mean(expected[attr])) <= MEAN_Z * se, (attr, se)
        assert res.summary[attr]["rd"]["mean"] == pytest.approx(np.mean(measured[attr]))


def test_interval_coverage_with_exact_reader():
    """ci95 of per-prompt rd covers the planted rd in 93.5–96.5% of 1,000 repeats.

    The planted shares keep every two classes ≥ 0.15 apart (away from balance, where rd's upward
    sampling bias vanishes) and off the lattice of rd values a 200-image sample can hit exactly. Each
    repeat is one prompt of 200 images whose attributes are drawn from the spec; the labels are those
    attributes, which is what the exact reader returns — checked here on rendered images of the same
    draws (and exhaustively in test_world_*).
    """
    from fairgen.world import read, render

    gender = {"female": 0.3137, "male": 0.6863}
    race = {"white": 0.5063, "black": 0.0109, "asian": 0.1641, "indian": 0.3187}
    n, repeats = 200, 1000
    rng = np.random.default_rng(2024)
    drawn = {attr: rng.choice(ATTRIBUTES[attr], p=list(dist.values()), size=(repeats, n))
             for attr, dist in (("gender", gender), ("race", race), ("age", {"young": 0.5, "old": 0.5}))}
    prompts = [Prompt(f"r{i}", "A photo of the face of a doctor, a person", "doctor") for i in range(repeats)]
    records = [
        {"prompt_id": p.id, "sample": k, "face": True, "label": {a: str(drawn[a][i, k]) for a in drawn}}
        for i, p in enumerate(prompts) for k in range(n)
    ]
    for rec in records[:: len(records) // 300]:
        lab = rec["label"]
        assert read(render(lab["gender"], lab["race"], lab["age"], "doctor", rec["sample"])).label() == lab
    out = MetricFrame.from_records(prompts, records, ("gender", "race", "age")).summarize(1000, seed=3)
    for attr, dist in (("gender", gender), ("race", race)):
        true = rd(np.array(list(dist.values())))
        ci = np.array([p["rd_ci95"][attr] for p in out["prompts"]])
        coverage = np.mean((ci[:, 0] <= true) & (true <= ci[:, 1]))
        assert 0.935 <= coverage <= 0.965, (attr, coverage)


def test_seeds_do_not_depend_on_batch_size(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "pilot"])
    a = fairgen.audit(model="world", suite=str(suite), images_per_prompt=9, batch_size=4, out=tmp_path / "a")
    b = fairgen.audit(model="world", suite=str(suite), images_per_prompt=9, batch_size=64, out=tmp_path / "b")
    assert a.results == b.results
    for pid in ("nurse", "pilot"):
        for k in range(9):
            assert (tmp_path / "a/images" / pid / f"{k:05d}.png").read_bytes() == \
                   (tmp_path / "b/images" / pid / f"{k:05d}.png").read_bytes()


def test_batches_are_balanced():
    from fairgen.audit import _balanced

    items = list(range(800))
    batches = list(_balanced(items, 56))
    assert len(batches) == 15 and {len(b) for b in batches} == {53, 54}  # not 14 x 56 and one of 16
    assert sum(batches, []) == items
    assert [len(b) for b in _balanced(items[:10], 64)] == [10]
    assert [len(b) for b in _balanced(items[:12], 4)] == [4, 4, 4]
    assert list(_balanced([], 8)) == []


def test_a_generation_error_keeps_every_batch_before_it(tmp_path):
    """Batches are saved and perceived one behind generation (a worker thread); a failure while generating
    batch 3 still leaves batches 1 and 2 on disk, and the resumed run equals an uninterrupted one."""
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "pilot"])
    model = fairgen.models.load("world")
    generate, calls = model.generate, []

    def failing_third(prompts, seeds, **sampling):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return generate(prompts, seeds, **sampling)

    model.generate = failing_third
    with pytest.raises(RuntimeError, match="device lost"):
        fairgen.audit(model=model, suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "run")
    records = RunStore(tmp_path / "run").load_records()
    assert sorted(records) == [("nurse", k) for k in range(10)]  # batches 1 and 2, nothing of batch 3
    assert len(list((tmp_path / "run/images/nurse").glob("*.png"))) == 10
    model.generate = generate
    resumed = fairgen.audit(model=model, suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "run")
    whole = fairgen.audit(model="world", suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "ref")
    assert resumed.results == whole.results


def test_a_new_run_records_the_model_provenance_before_its_first_file(tmp_path):
    """A new run's model provenance (a large checkpoint's hashes) is made beside the first batches'
    generation, and nothing is saved before the manifest holds it."""
    import threading

    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    model = fairgen.models.load("world")
    run = tmp_path / "run"
    generate, provenance = model.generate, model.provenance
    calls, second_batch, on_disk = [], threading.Event(), []

    def generating(*args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 2:
            second_batch.set()
        return generate(*args, **kwargs)

    def hashing():  # as a checkpoint still being hashed: done only once batch 2 is being generated
        assert second_batch.wait(60)
        on_disk.append(sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()))
        return provenance()

    model.generate, model.provenance = generating, hashing
    res = fairgen.audit(model=model, suite=str(suite), images_per_prompt=15, batch_size=5, out=run)
    assert calls == [5, 5, 5] and on_disk == [["manifest.json"]]
    assert json.loads((run / "manifest.json").read_text())["model_provenance"] == provenance()
    assert res.results == fairgen.audit(model="world", suite=str(suite), images_per_prompt=15, batch_size=5,
                                        out=tmp_path / "ref").results


def test_a_run_stopped_before_its_provenance_resumes(tmp_path):
    """Stopped before the model provenance was recorded (here: it failed), a run holds nothing but its
    manifest; the same command resumes it, records the provenance and equals an uninterrupted run."""
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    model = fairgen.models.load("world")
    provenance = model.provenance

    def failing():
        raise OSError("checkpoint file vanished")

    model.provenance = failing
    with pytest.raises(OSError, match="vanished"):  # a directory the failed command made is removed again
        fairgen.audit(model=model, suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()  # one the user made stays, with the manifest (as after a kill)
    with pytest.raises(OSError, match="vanished"):
        fairgen.audit(model=model, suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["manifest.json"]
    assert json.loads((tmp_path / "run/manifest.json").read_text())["model_provenance"] is None
    model.provenance = provenance
    resumed = fairgen.audit(model=model, suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "run")
    assert json.loads((tmp_path / "run/manifest.json").read_text())["model_provenance"] == provenance()
    whole = fairgen.audit(model="world", suite=str(suite), images_per_prompt=10, batch_size=5, out=tmp_path / "ref")
    assert resumed.results == whole.results


def test_run_directory_contract(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse", "firefighter", "tailor"])
    res = fairgen.audit(model="world", suite=str(suite), images_per_prompt=20, out=tmp_path / "run", seed=4)
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["model"] == "world" and manifest["config"]["seed"] == 4
    assert {"started", "finished", "versions", "model_provenance", "perception_provenance"} <= set(manifest)
    assert "world_spec_sha256" in json.dumps(manifest["model_provenance"])
    lines = (run / "perception.jsonl").read_text().splitlines()
    assert len(lines) == 60
    rec = json.loads(lines[0])
    assert {"prompt_id", "sample", "face", "box", "probs", "label", "concept_read"} <= set(rec)
    assert set(rec["probs"]) == {"gender", "race", "age"}
    assert sum(rec["probs"]["race"].values()) == pytest.approx(1.0, abs=1e-6)
    assert len(list((run / "images").glob("*/*.png"))) == 60
    results = json.loads((run / "results.json").read_text())
    assert results == res.results
    assert results["summary"]["fidelity"] == {"metric": "concept_match", "value": 1.0}
    assert results["summary"]["face_rate"] == 1.0
    frame = res.to_frame()
    assert list(frame["id"]) == ["nurse", "firefighter", "tailor"]
    assert {"rd_gender", "rd_gender_lo", "rd_gender_hi", "noise_floor_gender", "share_race_white"} <= set(frame.columns)
    import pandas as pd

    csv = pd.read_csv(run / "results.csv")
    assert list(csv["id"]) == ["nurse", "firefighter", "tailor"]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    """Kill an audit with SIGKILL at several moments; resuming gives the uninterrupted results."""
    suite = write_suite(tmp_path / "s.yaml", [f"job{i}" for i in range(8)])
    args = ["audit", "--model", "world", "--suite", str(suite), "-n", "60", "--batch-size", "8", "--seed", "5"]
    ref = subprocess.run([sys.executable, "-m", "fairgen", *args, "--out", str(tmp_path / "ref")],
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    expected = json.loads((tmp_path / "ref/results.json").read_text())
    for kill_after_lines in (1, 150, 400):
        out = tmp_path / f"run{kill_after_lines}"
        proc = subprocess.Popen([sys.executable, "-m", "fairgen", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = out / "perception.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if records.exists() and records.read_bytes().count(b"\n") >= kill_after_lines:
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "results.json").exists(), "the run finished before it could be killed"
        resumed = subprocess.run([sys.executable, "-m", "fairgen", *args, "--out", str(out)],
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads((out / "results.json").read_text()) == expected
        keys = [(r["prompt_id"], r["sample"]) for r in map(json.loads, records.read_text().splitlines())]
        assert len(keys) == len(set(keys)) == 8 * 60  # nothing redone, nothing duplicated


def test_partial_record_line_is_cut_and_redone(tmp_path):
    store = RunStore.open(tmp_path / "r", {"model": "world"}, {})
    store.append_records([{"prompt_id": "a", "sample": 0, "face": True}])
    with open(tmp_path / "r/perception.jsonl", "ab") as f:
        f.write(b'{"prompt_id": "a", "sam')  # a write cut short by a crash
    assert list(store.load_records()) == [("a", 0)]
    assert (tmp_path / "r/perception.jsonl").read_bytes().endswith(b"}\n")


def test_reopening_with_other_settings_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", ["nurse"])
    fairgen.audit(model="world", suite=str(suite), images_per_prompt=4, seed=1, out=tmp_path / "run")
    with pytest.raises(fairgen.FairgenError, match="seed"):
        fairgen.audit(model="world", suite=str(suite), images_per_prompt=4, seed=2, out=tmp_path / "run")
    more = fairgen.audit(model="world", suite=str(suite), images_per_prompt=6, seed=1, out=tmp_path / "run")
    assert more.results["prompts"][0]["n_images"] == 6  # a larger count extends the plan
