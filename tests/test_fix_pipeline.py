"""`fairgen fix` end to end on a real (very small) fairgen-tiny: balanced set → SFT → BPO → adapter →
re-audit → report, its resume, and the balanced set's filtering, rebalancing and formats.

The model is trained in a session fixture (conftest.py `mini`) with the smallest recipe that learns the
planted skew (about 8 s on one CPU thread): a barely trained tokenizer, so its generations are not faces and the audits
read few or none; the after-audit is checked for running and reporting, the debiasing itself through the
image log-probabilities the loss works on. benchmarks/fix_tiny.py measures real before/after numbers.
"""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from typer.testing import CliRunner

from fairgen import models
from fairgen.fix import FixConfig, fix, parse_attributes
from fairgen.cli import app
from fairgen.fix.batches import BatchPlan
from fairgen.metrics import rd
from fairgen.fix.data import BalancedSet, Request, mismatch, rebalance
from fairgen.fix.train import TrainConfig, stages_for, train_adapter
from fairgen.suites import explicit
from fairgen.types import ATTRIBUTES, FairgenError, Prompt

from conftest import FIX_CONCEPTS

def _config(mini, suites_dir, **kw) -> FixConfig:
    base = dict(model=f"tiny:{mini}", train_suite=str(suites_dir / "train.yaml"), test_suite=str(suites_dir / "test.yaml"),
                data_source="world", images_per_group=3, sft_steps=30, bpo_steps=30, lr=3e-3, units_per_batch=2,
                alpha=0.0, anchor=0.0,
                images_per_prompt=12, explicit_concepts=1, explicit_images=4, batch_size=32, check_suites=(),
                understanding_images=0)
    return FixConfig(**{**base, **kw})


def _held_out_set(folder) -> BalancedSet:
    """Renders of a female and a male of the test suite's concept (never trained on), as a balanced set with
    the test suite's neutral prompt: 4 of each."""
    import pandas as pd

    from fairgen.fix.data import COLUMNS
    from fairgen.world import render

    folder.mkdir()
    concept, rows = FIX_CONCEPTS[2], []
    for group in ("female", "male"):
        for k in range(4):
            name = f"{group}-{k}.png"
            render(group, "white", "young", concept, 500 + k).save(folder / name)
            rows.append({"prompt": f"A photo of the face of a {group} {concept}, a person",
                         "neutral_prompt": f"A photo of the face of a {concept}, a person", "prompt_id": concept,
                         "attribute": "gender", "group": group, "sample": k, "image": name})
    return BalancedSet(folder, pd.DataFrame(rows, columns=list(COLUMNS)), {})


def _pair_gap(model, data: BalancedSet) -> float:
    """Mean |log p(female image) - log p(male image)| over the set's pairs, given the neutral prompt."""
    frame = data.frame
    female, male = frame[frame["group"] == "female"], frame[frame["group"] == "male"]
    with torch.no_grad():
        lf = model.image_token_logprob(female["neutral_prompt"].tolist(), [data.image(i) for i in female.index])
        lm = model.image_token_logprob(male["neutral_prompt"].tolist(), [data.image(i) for i in male.index])
    return (lf - lm).abs().mean().item()


def test_fix_end_to_end_and_resume(mini, suites_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "fix"
    report = fix(_config(mini, suites_dir), out)

    # the balanced set: a Hugging Face parquet dataset, equal counts per group and prompt
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "balanced.parquet"), split="train",
                              cache_dir=str(tmp_path / "hf"))
    assert set(ds.column_names) == {"prompt", "neutral_prompt", "prompt_id", "attribute", "group", "sample", "image"}
    assert len(ds) == 2 * 2 * 3  # world renders always show what was asked: nothing dropped
    assert all((out / "data" / p).is_file() for p in ds["image"])
    assert all("female" in t or "male" in t for t in ds["prompt"])
    assert report["data"]["gender"]["groups"]["female"]["drop_rate"] == 0.0

    # training: both stages logged, and both losses fall
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    sft = [r["sft"] for r in log if r["stage"] == "sft"]
    bpo = [r["bpo"] for r in log if r["stage"] == "bpo"]
    third = lambda xs: len(xs) // 3  # noqa: E731
    for losses in (sft, bpo):
        assert sum(losses[-third(losses):]) < sum(losses[:third(losses)]), (sft, bpo)
    assert (out / "train_curves.png").stat().st_size > 1000

    # the adapter loads through the model protocol and narrows the gap BPO works on
    data = BalancedSet.load(out / "data")
    gap_before = _pair_gap(models.load(f"tiny:{mini}"), data)
    adapted = models.load(f"tiny:{mini}", adapter=out / "adapter")
    gap_after = _pair_gap(adapted, data)
    assert gap_after < 0.5 * gap_before, (gap_before, gap_after)
    # ... and on the held-out concept of the test suite, which it never trained on: the same measure over
    # fresh renders of a female and a male baker, given the test suite's neutral prompt.
    held_out = _held_out_set(tmp_path / "held_out")
    held_before = _pair_gap(models.load(f"tiny:{mini}"), held_out)
    held_after = _pair_gap(adapted, held_out)
    assert held_after < 0.7 * held_before, (held_before, held_after)

    # the after-fix rd in the report is the after audit's, recomputed here from its per-prompt counts
    results = json.loads((out / "after" / "test" / "results.json").read_text())
    assert report["after"]["run_dir"] == str(out / "after" / "test")
    for attr in ("gender", "race"):
        per_prompt = [rd([c for c in p["counts"][attr].values()]) for p in results["prompts"]
                      if p["counts"].get(attr) and sum(p["counts"][attr].values())]
        after_rd = report["after"]["rd"][attr]
        if per_prompt:
            assert after_rd["mean"] == pytest.approx(sum(per_prompt) / len(per_prompt))
            assert 0.0 <= after_rd["mean"] <= 1.0
            change = report["rd_change"].get(attr)
            if report["before"]["rd"][attr]:
                assert change["after"] == after_rd["mean"] and change["before"] == report["before"]["rd"][attr]["mean"]
                assert change["relative"] == pytest.approx((change["after"] - change["before"]) / change["before"])
        else:  # this barely trained tokenizer's images are seldom faces: no face, no rd (never a 0)
            assert after_rd is None or after_rd["mean"] is None
            assert report["rd_change"].get(attr, {}).get("after") is None

    # the re-audit ran with the adapter, and the report holds every part
    manifest = json.loads((out / "after" / "test" / "manifest.json").read_text())
    assert manifest["config"]["adapter"] == str(out / "adapter")
    assert "adapter" in manifest["model_provenance"]
    assert set(report) >= {"before", "after", "rd_change", "explicit_adherence", "training", "data"}
    assert set(report["explicit_adherence"]["after"]) == {"gender"}
    by_group = report["explicit_adherence_by_group"]["after"]["gender"]
    assert set(by_group) == {"female", "male"}  # and the attribute's share is their mean (equal images each)
    assert report["explicit_adherence"]["after"]["gender"] == pytest.approx(sum(by_group.values()) / 2)
    assert "By group: gender female" in (out / "fix_report.md").read_text()
    assert json.loads((out / "fix_report.json").read_text()) == report
    assert "| gender **(fixed)** |" in (out / "fix_report.md").read_text()

    # re-running resumes: nothing is trained again; other settings in the same folder are refused
    stamp = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = fix(_config(mini, suites_dir), out)
    assert again["rd_change"] == report["rd_change"]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FairgenError, match="holds a fix run with bpo_steps=30, not 31; resume it with --bpo-steps 30"):
        fix(_config(mini, suites_dir, bpo_steps=31), out)
    with pytest.raises(FairgenError, match=r"attributes=\['gender'\], not \['gender', 'race'\]; resume it with the "
                                           "settings it was started with"):
        fix(_config(mini, suites_dir, attributes=("gender", "race")), out)
    # a run written before --contrast existed trained without it, and resumes as such; not with another
    manifest = json.loads((out / "fix_manifest.json").read_text())
    del manifest["config"]["contrast"]
    (out / "fix_manifest.json").write_text(json.dumps(manifest))
    assert fix(_config(mini, suites_dir), out)["rd_change"] == report["rd_change"]
    with pytest.raises(FairgenError, match="holds a fix run with contrast=0.0, not 1.0; resume it with --contrast 0.0"):
        fix(_config(mini, suites_dir, contrast=1.0), out)


def test_interrupted_training_resumes_to_the_same_adapter(mini, suites_dir, tmp_path):
    """Killed mid-stage, a re-run continues from the checkpoint and ends with the very adapter an
    uninterrupted run trains (same batches, optimizer state restored), with no log line lost or doubled."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    data = BalancedSet.load(_built_set(mini, suites_dir, tmp_path))
    config = TrainConfig(stages=stages_for("bpo", 6, 6, 0.0, 1.0, 3e-3), units_per_batch=2, log_every=1, save_every=2)

    def stop_at(stage: str, done: int, total: int) -> None:
        if (stage, done) == ("bpo", 3):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapter(models.load(f"tiny:{mini}"), BatchPlan(data, 2), config, tmp_path / "stopped", progress=stop_at)
    state = torch.load(tmp_path / "stopped" / "checkpoint" / "state.pt", weights_only=True)
    assert (state["stage"], state["step"]) == (1, 1)  # the last checkpoint before the interruption
    resumed = train_adapter(models.load(f"tiny:{mini}"), BatchPlan(data, 2), config, tmp_path / "stopped")
    whole = train_adapter(models.load(f"tiny:{mini}"), BatchPlan(data, 2), config, tmp_path / "whole")
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (resumed, whole))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)
    steps = [(r["stage"], r["step"]) for r in map(json.loads, (tmp_path / "stopped" / "train_log.jsonl").read_text().splitlines())]
    assert steps == [("sft", i) for i in range(6)] + [("bpo", i) for i in range(6)]


def test_explicit_anchor_is_the_sft_loss_of_the_explicit_prompts(mini, suites_dir, tmp_path):
    """With anchor w, each logged loss is alpha*SFT + beta*BPO + w*anchor, and the anchor is the mean
    negative image log-probability under the explicit prompts the images were made from."""
    torch.set_num_threads(1)
    data = BalancedSet.load(_built_set(mini, suites_dir, tmp_path))
    plan = BatchPlan(data, 2)
    config = TrainConfig(stages=stages_for("bpo", 1, 1, 0.5, 1.0, 1e-9), units_per_batch=2, log_every=1, anchor=2.0)
    model = models.load(f"tiny:{mini}")
    batch = plan.draw(0, 0)
    assert all(e != n and "male" in e for e, n in zip(batch.explicit_prompts, batch.prompts))  # "male" or "female"
    with torch.no_grad():
        expected = -model.image_token_logprob(batch.explicit_prompts, batch.images).mean().item()
    train_adapter(model, plan, config, tmp_path / "anchored")
    log = [json.loads(line) for line in (tmp_path / "anchored" / "train_log.jsonl").read_text().splitlines()]
    # lr 1e-9: the first step's loss is that of the untrained adapter (LoRA B starts at zero).
    assert log[0]["anchor"] == pytest.approx(expected, abs=1e-4)
    for r in log:
        alpha = 1.0 if r["stage"] == "sft" else 0.5
        beta = 0.0 if r["stage"] == "sft" else 1.0
        assert r["loss"] == pytest.approx(alpha * r["sft"] + beta * r["bpo"] + 2.0 * r["anchor"], abs=1e-4)


def _built_set(mini, suites_dir, tmp_path):
    """A balanced set of the training suite, drawn by the world renderer."""
    from fairgen import perception, suites
    from fairgen.fix.data import build

    prompts = suites.load(str(suites_dir / "train.yaml"))
    build(prompts, ["gender"], models.load("world"), perception.load("world"), tmp_path / "data", images_per_group=3)
    return tmp_path / "data"


def test_mix_set_copies_name_the_other_attribute_in_turn(suites_dir, tmp_path):
    """gender + race from the world renderer (which samples unnamed attributes with the spec's skew): each
    race group's images are half female, half male, and each gender group's images cover the four races,
    so neither attribute's units teach the other's skew."""
    from fairgen import perception, suites
    from fairgen.fix.data import build, requests

    prompts = suites.load(str(suites_dir / "train.yaml"))[:2]
    data = build(prompts, ["gender", "race"], models.load("world"), perception.load("world"),
                 tmp_path / "data", images_per_group=4)
    assert len(data.frame) == 2 * (2 + 4) * 4  # the renderer draws what is asked: nothing dropped
    records = {(r["prompt_id"], r["sample"]): r["label"] for r in
               map(json.loads, (tmp_path / "data" / "perception.jsonl").read_text().splitlines())}
    for r in requests(prompts, ["gender", "race"]):
        other = "race" if r.attribute == "gender" else "gender"
        labels = [records[(r.explicit_at(k).id, k)] for k in range(4)]
        assert all(label[r.attribute] == r.group for label in labels)
        balanced = ATTRIBUTES[other] * (4 // len(ATTRIBUTES[other]))  # each group as often
        assert sorted(label[other] for label in labels) == sorted(balanced)
        kept = data.frame[(data.frame.prompt_id == r.neutral.id) & (data.frame.group == r.group)]
        assert sorted(kept.prompt) == sorted(r.explicit_at(k).text for k in range(4))


def test_balanced_set_from_a_folder_source(mini, suites_dir, tmp_path):
    """folder:<dir> reads an existing dataset in fairgen's layout, e.g. another run's balanced set."""
    torch.set_num_threads(1)
    first = tmp_path / "a"
    fix(_config(mini, suites_dir, sft_steps=0, bpo_steps=2, images_per_prompt=4, explicit_concepts=0), first)
    second = tmp_path / "b"
    fix(_config(mini, suites_dir, sft_steps=0, bpo_steps=2, images_per_prompt=4, explicit_concepts=0,
                data_source=f"folder:{first / 'data'}", before=str(first / "before")), second)
    a, b = BalancedSet.load(first / "data").frame, BalancedSet.load(second / "data").frame
    assert a["prompt"].tolist() == b["prompt"].tolist()
    assert all(p.startswith(str(first / "data")) for p in b["image"])  # read in place, not copied


def test_rebalance_drops_mismatches_and_evens_out_groups():
    nurse = Prompt("nurse", "A photo of the face of a nurse, a person", "nurse")
    judge = Prompt("judge", "A photo of the face of a judge, a person", "judge")
    from fairgen.fix.data import requests

    reqs = requests([nurse, judge], ["gender"])
    plan = [(r, k, 0) for r in reqs for k in range(3)]
    seen = {  # (prompt, group) -> what perception saw in samples 0, 1, 2
        ("nurse", "female"): ["female", "female", "female"],
        ("nurse", "male"): ["male", None, "female"],   # one without a face, one of the wrong group
        ("judge", "female"): ["male", "male", None],   # nothing usable: the judge prompt is dropped
        ("judge", "male"): ["male", "male", "male"],
    }
    records = {}
    for r, k, _ in plan:
        label = seen[(r.neutral.id, r.group)][k]
        records[(r.explicit.id, k)] = {"face": label is not None, "label": {"gender": label} if label else {}}
    rows, stats = rebalance(reqs, plan, records)
    assert [(row["prompt_id"], row["group"], row["sample"]) for row in rows] == [
        ("nurse", "female", 0), ("nurse", "male", 0)]  # one each: the scarcer group sets the count
    g = stats["gender"]
    assert g["prompts_dropped"] == ["judge"] and g["prompts_kept"] == 1
    assert g["groups"]["male"] == {"generated": 6, "no_face": 1, "wrong_group": 1, "wrong_concept": 0, "kept": 1,
                                   "drop_rate": 2 / 6}
    assert g["groups"]["female"]["wrong_group"] == 2 and g["groups"]["female"]["no_face"] == 1
    assert isinstance(reqs[0], Request) and reqs[0].explicit.group == {"gender": "female"}
    # the concept cue is checked only on request (a model may draw the group right and the cue wrong)
    from fairgen.world import concept_code

    wrong = {"face": True, "label": {"gender": "female"}, "concept_read": concept_code("judge")}
    nurse_female = reqs[0].explicit
    assert mismatch(wrong, nurse_female) is None
    assert mismatch(wrong, nurse_female, check_concept=True) == "wrong_concept"
    right = {**wrong, "concept_read": concept_code("nurse")}
    assert mismatch(right, nurse_female, check_concept=True) is None
    # a mix copy names two groups: both must be read back
    two = explicit(nurse, {"gender": "female", "race": "asian"})
    assert mismatch({"face": True, "label": {"gender": "female", "race": "asian"}}, two) is None
    assert mismatch({"face": True, "label": {"gender": "female", "race": "white"}}, two) == "wrong_group"


def test_bad_input_is_one_line_fairgen_error(mini, suites_dir, tmp_path, cli):
    runner = CliRunner()
    bad = [["--attributes", "height"], ["--method", "dpo"], ["--data-source", "nope:x"], ["--alpha", "0", "--beta", "0"],
           ["--model", "world"], ["--images-per-group", "0"], ["--train-prompts", "0"]]
    for n, extra in enumerate(bad):
        args = ["fix", "--model", f"tiny:{mini}", "--train-suite", str(suites_dir / "train.yaml"),
                "--test-suite", str(suites_dir / "test.yaml"), "--out", str(tmp_path / str(n)), *extra]
        result = runner.invoke(app, args)
        assert isinstance(result.exception, FairgenError), (extra, result.output, result.exception)
        assert "\n" not in str(result.exception)
        assert not (tmp_path / str(n)).exists()  # refused before anything was written
    assert parse_attributes("gender, race") == ("gender", "race")
    done = cli("fix", "--model", f"tiny:{mini}", "--attributes", "gender,gender", "--out", str(tmp_path / "cli"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "--attributes" in done.stderr


def test_adherence_by_group_known_counts():
    """Two explicit prompts per group: shares by hand, faceless images count as not followed."""
    from fairgen.fix.report import adherence_by_group, group_means
    from fairgen.types import Prompt

    prompts = [Prompt(id=f"{c}--{g}", text="t", concept=c, group={"gender": g})
               for c in ("nurse", "pilot") for g in ("female", "male")]
    counts = {"nurse--female": (9, 10), "pilot--female": (6, 10), "nurse--male": (10, 10), "pilot--male": (4, 10)}
    results = {"prompts": [{"id": i, "n_images": n, "counts": {"gender": {i.split("--")[1]: k}}}
                           for i, (k, n) in counts.items()]}
    assert adherence_by_group(results, prompts) == {"gender": {"female": 0.75, "male": 0.7}}
    assert group_means(adherence_by_group(results, prompts)) == {"gender": pytest.approx(0.725)}
