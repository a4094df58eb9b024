"""Image quality (metrics/quality.py) on a tiny random CLIP saved to a temp dir: each score against its
formula computed here by hand from the same model, and the run pass's resumability."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_perception_clip import write_clip
from transformers import CLIPModel, CLIPProcessor

from fairgen.metrics.quality import IQA_ANCHORS, QualityScorer, score_run, summarize_quality
from fairgen.store import RunStore
from fairgen.types import FairgenError, Prompt


def write_quality_clip(out):
    """A tiny CLIP whose scores are neither all clipped at 0 nor saturated: token and position embeddings
    scaled down so texts sit close together and cosines spread around 0 (seeded, so values repeat)."""
    torch.manual_seed(3)  # a seed whose scores spread (checked below), not one that makes a test pass
    write_clip(out)
    model = CLIPModel.from_pretrained(out)
    with torch.no_grad():
        model.text_model.embeddings.token_embedding.weight.mul_(0.02)
        model.text_model.embeddings.position_embedding.weight.mul_(0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_quality_clip(tmp_path_factory.mktemp("qclip"))


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def test_scores_follow_their_formulas(clip_dir):
    ims, texts = images(8), ["a nurse", "a ceo", "a cat", "a dog"] * 2
    scorer = QualityScorer(clip_dir)
    got = scorer.score(ims, texts)
    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        img = model.get_image_features(**proc(images=ims, return_tensors="pt")).pooler_output
        txt = model.get_text_features(**proc(text=texts, return_tensors="pt", padding=True)).pooler_output
        anc = model.get_text_features(**proc(text=list(IQA_ANCHORS), return_tensors="pt", padding=True)).pooler_output
    img, txt, anc = (v / v.norm(dim=-1, keepdim=True) for v in (img, txt, anc))
    clip_score = (100 * (img * txt).sum(-1)).clamp(min=0).numpy()
    cos_good, cos_bad = (img @ anc.T).T.numpy()
    iqa = 1 / (1 + np.exp(-100 * (cos_good - cos_bad)))  # softmax over the pair, first entry
    np.testing.assert_allclose(got["clip_score"], clip_score, atol=1e-3)
    np.testing.assert_allclose(got["clip_iqa"], iqa, atol=1e-5)
    # the fixture is informative: scores vary per image, some clip at 0, IQA is not saturated
    assert (got["clip_score"] > 0).sum() >= 3 and got["clip_score"].std() > 1
    assert 0.01 < got["clip_iqa"].min() and got["clip_iqa"].max() < 0.99 and got["clip_iqa"].std() > 0.01
    # an image in another mode (greyscale) is scored as its RGB version; a prompt per image, or no score
    grey = ims[0].convert("L")
    as_grey, as_rgb = scorer.score([grey], texts[:1]), scorer.score([grey.convert("RGB")], texts[:1])
    for m in ("clip_score", "clip_iqa"):
        np.testing.assert_allclose(as_grey[m], as_rgb[m], rtol=1e-6)
    with pytest.raises(ValueError, match="^one prompt per image$"):
        scorer.score(ims[:2], texts[:1])


def test_the_model_goes_to_the_device_asked_for_and_features_are_tensors(clip_dir):
    """"meta" stands in for a GPU: a device other than the CPU, where the weights load first."""
    from types import SimpleNamespace

    from fairgen.metrics.quality import _embedding

    scorer = QualityScorer(clip_dir, device="meta")
    assert scorer.device == torch.device("meta") and scorer._model.model.device.type == "meta"
    moved = QualityScorer(clip_dir)._model.to("meta")  # as torchmetrics' clip_score moves the model
    assert moved.model.device.type == "meta"
    # the projected embedding: a ModelOutput's pooler_output (transformers 5), or the tensor itself
    t = torch.ones(2, 3)
    assert _embedding(t) is t and _embedding(SimpleNamespace(pooler_output=t)) is t


@pytest.mark.gpu
def test_scoring_on_cuda_keeps_the_model_there_and_the_cpu_scores(clip_dir):
    """torchmetrics' clip_score moves the model to its images' device: the images go to the scorer's."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    ims, texts = images(4), ["a nurse", "a ceo", "a cat", "a dog"]
    scorer = QualityScorer(clip_dir, device="cuda")
    got = scorer.score(ims, texts)
    assert scorer._model.model.device.type == "cuda"
    want = QualityScorer(clip_dir).score(ims, texts)
    for m in ("clip_score", "clip_iqa"):
        np.testing.assert_allclose(got[m], want[m], atol=1e-3)


def test_a_bad_checkpoint_is_one_line(tmp_path):
    with pytest.raises(FairgenError, match="not a loadable CLIP checkpoint") as e:
        QualityScorer(tmp_path)
    assert "\n" not in str(e.value)


def test_run_pass_resumes_and_summarises(clip_dir, tmp_path):
    prompts = [Prompt("nurse", "a nurse", "nurse"), Prompt("ceo", "a ceo", "ceo")]
    store = RunStore(tmp_path)
    for k, im in enumerate(images(6, seed=1)):
        store.save_image(im, prompts[k % 2].id, k // 2)
    plan = [(p, s) for p in prompts for s in range(3)]
    scorer = QualityScorer(clip_dir)
    first = score_run(store, plan[:4], scorer, batch_size=3)
    lines = (tmp_path / "quality.jsonl").read_text().splitlines()
    assert len(first) == 4 and len(lines) == 4
    # a crash mid-line: the partial line is cut, the finished records are kept and not rescored
    with open(tmp_path / "quality.jsonl", "a") as f:
        f.write('{"prompt_id": "ceo", "sam')
    full = score_run(store, plan, scorer, batch_size=3)
    lines = (tmp_path / "quality.jsonl").read_text().splitlines()
    assert len(full) == 6 and len(lines) == 6 and [json.loads(x) for x in lines[:4]] == first
    alone = scorer.score([store.load_image("ceo", 2)], ["a ceo"])
    assert full[-1]["clip_iqa"] == pytest.approx(alone["clip_iqa"][0], abs=1e-6)
    summary = summarize_quality(["nurse", "ceo"], full, replicates=200)
    nurse = [r["clip_score"] for r in full if r["prompt_id"] == "nurse"]
    assert summary["prompts"]["nurse"]["clip_score"]["mean"] == pytest.approx(np.mean(nurse))
    suite = summary["suite"]["clip_iqa"]
    assert suite["ci95"][0] <= suite["mean"] <= suite["ci95"][1]


def test_audit_cli_reports_quality_and_the_distance_to_a_target(clip_dir, tmp_path):
    import json

    from conftest import run_cli, write_suite

    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "pilot"])
    target = tmp_path / "target.yaml"
    target.write_text("default:\n  gender: {female: 0.75, male: 0.25}\n")
    run = tmp_path / "run"
    proc = run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "4", "--out", str(run),
                   "--quality", str(clip_dir), "--target", str(target))
    assert proc.returncode == 0, proc.stderr
    assert "quality: clip_score" in proc.stdout and "distance to target" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    scored = [json.loads(x) for x in (run / "quality.jsonl").read_text().splitlines()]
    assert len(scored) == 8 and {r["model"] for r in scored} == {str(clip_dir)}
    nurse = [r["clip_iqa"] for r in scored if r["prompt_id"] == "nurse"]
    assert results["quality"]["prompts"]["nurse"]["clip_iqa"]["mean"] == pytest.approx(np.mean(nurse))
    # distances to the file's target, from the counts in results.json
    for p in results["prompts"]:
        f = p["counts"]["gender"]["female"] / (p["counts"]["gender"]["female"] + p["counts"]["gender"]["male"])
        assert p["tv"]["gender"] == pytest.approx(abs(f - 0.75))
    assert results["target"]["default"]["gender"] == {"female": 0.75, "male": 0.25}


def test_audit_cli_refuses_a_bad_target_before_the_run(tmp_path):
    from conftest import run_cli

    target = tmp_path / "target.yaml"
    target.write_text("default:\n  gender: {female: 0.7, male: 0.2}\n")
    proc = run_cli("audit", "--model", "world", "-n", "2", "--out", str(tmp_path / "run"), "--target", str(target))
    assert proc.returncode == 2 and "sum to 0.9000" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_summaries_against_hand_values():
    recs = [{"prompt_id": "a", "clip_score": 10.0, "clip_iqa": 0.5},
            {"prompt_id": "a", "clip_score": 10.0, "clip_iqa": 0.5},
            {"prompt_id": "a", "clip_score": 10.0, "clip_iqa": 0.5},
            {"prompt_id": "b", "clip_score": 0.0, "clip_iqa": 0.0},
            {"prompt_id": "b", "clip_score": 40.0, "clip_iqa": 1.0},
            {"prompt_id": "elsewhere", "clip_score": 99.0, "clip_iqa": 0.9}]
    out = summarize_quality(["a", "b", "none"], recs, replicates=4000, seed=3)
    # a prompt whose images all score alike: its interval is that value
    assert out["prompts"]["a"]["clip_score"] == {"mean": 10.0, "ci95": [10.0, 10.0], "n": 3}
    # two images scoring 0 and 40: bootstrap means 0, 20, 40 with chances 1/4, 1/2, 1/4, so the 2.5 % and
    # 97.5 % quantiles of 4000 replicates are the extremes (each misses with chance < 1e-40)
    assert out["prompts"]["b"]["clip_score"] == {"mean": 20.0, "ci95": [0.0, 40.0], "n": 2}
    assert set(out["prompts"]) == {"a", "b"}  # no images: no entry; other prompts' records are not read
    # the suite mean is the mean of the prompt means (not of the images), its interval from both prompts
    assert out["suite"]["clip_score"] == {"mean": 15.0, "ci95": [5.0, 25.0]}  # (10 + {0, 20, 40}) / 2
    assert out["suite"]["clip_iqa"]["mean"] == 0.5 and out["suite"]["clip_iqa"]["ci95"] == [0.25, 0.75]
    assert set(out) == {"prompts", "suite"} and set(out["suite"]) == {"clip_score", "clip_iqa"}
    assert summarize_quality(["x"], recs) == {"prompts": {}, "suite": {}}


def test_summary_defaults_are_1000_replicates_and_seed_0():
    rng = np.random.default_rng(9)
    recs = [{"prompt_id": p, "clip_score": float(v), "clip_iqa": float(v) / 100}
            for p in ("a", "b") for v in rng.uniform(0, 100, size=7)]
    default = summarize_quality(["a", "b"], recs)
    assert default == summarize_quality(["a", "b"], recs, replicates=1000, seed=0)
    assert default != summarize_quality(["a", "b"], recs, replicates=1001, seed=0)
    assert default != summarize_quality(["a", "b"], recs, replicates=1000, seed=1)
    # the interval is the 2.5 % and 97.5 % quantiles of the bootstrap means, resampling within the prompt
    v = np.array([r["clip_score"] for r in recs if r["prompt_id"] == "a"])
    b = v[np.random.default_rng(0).integers(0, 7, size=(1000, 7))].mean(axis=1)
    assert default["prompts"]["a"]["clip_score"]["ci95"] == pytest.approx(np.quantile(b, [0.025, 0.975]).tolist())


def test_run_pass_keeps_models_apart_skips_missing_images_and_reports_progress(clip_dir, tmp_path):
    prompts = [Prompt("nurse", "a nurse", "nurse"), Prompt("ceo", "a ceo", "ceo")]
    store = RunStore(tmp_path)
    for k, im in enumerate(images(3, seed=2)):
        store.save_image(im, prompts[k % 2].id, k // 2)  # nurse 0, ceo 0, nurse 1; ceo 1 is missing
    plan = [(p, s) for p in prompts for s in range(2)]
    other = {"prompt_id": "nurse", "sample": 0, "model": "another-clip", "clip_score": -1.0, "clip_iqa": -1.0}
    (tmp_path / "quality.jsonl").write_text(json.dumps(other) + "\n\n")
    scorer = QualityScorer(clip_dir)
    assert scorer.provenance() == {"quality_model": str(clip_dir)}
    seen = []
    got = score_run(store, plan, scorer, batch_size=2, progress=seen.append)
    assert seen == [2, 4]  # images done after each batch of the 4 not scored by this model (one missing)
    assert [(r["prompt_id"], r["sample"], r["model"]) for r in got] == [
        ("nurse", 0, str(clip_dir)), ("nurse", 1, str(clip_dir)), ("ceo", 0, str(clip_dir))]
    direct = scorer.score([store.load_image("nurse", 0)], ["a nurse"])
    assert got[0]["clip_score"] == pytest.approx(direct["clip_score"][0], abs=1e-4)
    stored = [json.loads(x) for x in (tmp_path / "quality.jsonl").read_text().splitlines() if x]
    assert stored[0] == other and len(stored) == 4  # the other model's record is kept, never used
    seen.clear()
    assert score_run(store, plan, scorer, progress=seen.append) == got and seen == [1]  # the missing image, tried again
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images(2), ["a"])


def test_fix_cli_reports_quality_before_and_after_and_checks_it(clip_dir, mini, suites_dir, tmp_path):
    """`fairgen fix --quality` on fairgen-tiny (a few training steps, 4 test images): the test-suite audits
    score their images, and the report's table and verdict line hold the audits' own numbers."""
    import re

    from conftest import run_cli

    from fairgen.fix.guardrails import quality_allowance

    out = tmp_path / "fix"
    args = ["fix", "--model", f"tiny:{mini}", "--train-suite", str(suites_dir / "train.yaml"), "--test-suite",
            str(suites_dir / "test.yaml"), "--images-per-group", "2", "--sft-steps", "4", "--bpo-steps", "6",
            "--units-per-batch", "2", "--val-concepts", "0", "--images-per-prompt", "4", "--explicit-concepts", "0",
            "--check-suites", "none", "--understanding-images", "0", "--batch-size", "16", "--out", str(out)]
    bad = run_cli(*args[:-1], str(tmp_path / "bad"), "--quality", str(tmp_path / "no-clip"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --quality") and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # refused before any work
    plain = run_cli(*args)  # without --quality: said so, and the guardrail is not measured
    assert plain.returncode == 0, plain.stderr
    assert "Image quality: not measured" in plain.stdout
    assert "NOT MEASURED image quality: no quality model (--quality)" in plain.stdout
    image = next((out / "after" / "test" / "images").rglob("*.png"))
    stamp = image.stat().st_mtime_ns
    # the same run with --quality resumes (nothing trained or drawn again) and scores its audits' images
    proc = run_cli(*args, "--quality", str(clip_dir))
    assert proc.returncode == 0, proc.stderr
    assert image.stat().st_mtime_ns == stamp
    report = json.loads((out / "fix_report.json").read_text())
    md, html = (out / "fix_report.md").read_text(), (out / "fix_report.html").read_text()
    for moment in ("before", "after"):
        results = json.loads((out / moment / "test" / "results.json").read_text())
        scored = [json.loads(x) for x in (out / moment / "test" / "quality.jsonl").read_text().splitlines()]
        assert len(scored) == 4 and {r["model"] for r in scored} == {str(clip_dir)}
        suite = results["quality"]["suite"]
        assert suite["clip_score"]["mean"] == pytest.approx(np.mean([r["clip_score"] for r in scored]))
        assert report[moment]["quality"] == {"model": str(clip_dir), **suite}
    b, a = report["before"]["quality"], report["after"]["quality"]
    # the table row: before and after with their intervals, and the change, as the audits give them
    row = (f"| CLIP score (0–100) | {b['clip_score']['mean']:.3f} [{b['clip_score']['ci95'][0]:.3f}, "
           f"{b['clip_score']['ci95'][1]:.3f}] | {a['clip_score']['mean']:.3f} [{a['clip_score']['ci95'][0]:.3f}, "
           f"{a['clip_score']['ci95'][1]:.3f}] | {a['clip_score']['mean'] - b['clip_score']['mean']:+.3f} |")
    assert row in proc.stdout and row in md
    assert report["quality_change"]["clip_iqa"] == pytest.approx(a["clip_iqa"]["mean"] - b["clip_iqa"]["mean"])
    # the verdict line: the same numbers, and pass or fail by the stated allowance
    guard = report["verdict"]["guardrails"][-1]
    assert guard["name"] == "image quality" and guard["line"] in proc.stdout and guard["line"] in md
    assert guard["line"].replace(">", "&gt;") in html and "CLIP score (0–100)" in html
    allowed = quality_allowance("clip_score", b["clip_score"])
    assert (f"clip_score {b['clip_score']['mean']:.3f} → {a['clip_score']['mean']:.3f} (a drop of at most "
            f"{allowed:.3f} allowed)") in guard["line"]
    drops = {m: b[m]["mean"] - a[m]["mean"] > quality_allowance(m, b[m]) for m in ("clip_score", "clip_iqa")}
    assert guard["passed"] is (not any(drops.values()))
    assert re.search(r"^(PASS|FAIL) image quality: ", guard["line"])
    # the two audits rank by their CLIP score (higher is better) in `fairgen compare`
    from fairgen.report import compare_runs

    runs = [out / "before" / "test", out / "after" / "test"]
    ranked = compare_runs(runs, "csv", rank_by="clip_score").splitlines()[1:3]
    first = runs[int(a["clip_score"]["mean"] > b["clip_score"]["mean"])]
    assert ranked[0].startswith(f"1,{first},") and f",{max(a['clip_score']['mean'], b['clip_score']['mean'])}," in ranked[0]


def test_a_checkpoint_is_checked_from_its_configuration_alone(clip_dir, tmp_path):
    from fairgen.metrics.quality import check_checkpoint

    check_checkpoint(clip_dir)
    for where in (tmp_path / "missing",):
        with pytest.raises(FairgenError) as e:
            check_checkpoint(where)
        with pytest.raises(FairgenError) as scorer:
            QualityScorer(where)
        assert str(e.value) == str(scorer.value)
        from transformers import CLIPConfig

        with pytest.raises(OSError) as cause:
            CLIPConfig.from_pretrained(str(where))
        assert str(e.value) == (f"--quality {where}: not a loadable CLIP checkpoint "
                                f"({str(cause.value).splitlines()[0]})")
    empty = tmp_path / "empty"  # a directory transformers would read as a default CLIP configuration
    empty.mkdir()
    for check in (check_checkpoint, QualityScorer):
        with pytest.raises(FairgenError, match=f"--quality {empty}: not a loadable CLIP checkpoint"):
            check(empty)
    with pytest.raises(FairgenError) as e:  # the check says what is missing
        check_checkpoint(empty)
    assert str(e.value) == f"--quality {empty}: not a loadable CLIP checkpoint (no config.json in {empty})"


def test_a_prompt_without_images_does_not_end_the_summary():
    recs = [{"prompt_id": "b", "clip_score": 30.0, "clip_iqa": 0.25}]
    out = summarize_quality(["a", "b"], recs, replicates=50)
    assert out["prompts"] == {"b": {"clip_score": {"mean": 30.0, "ci95": [30.0, 30.0], "n": 1},
                                    "clip_iqa": {"mean": 0.25, "ci95": [0.25, 0.25], "n": 1}}}
    assert out["suite"]["clip_score"] == {"mean": 30.0, "ci95": [30.0, 30.0]}
