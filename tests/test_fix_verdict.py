"""Issue 26: the fix's defaults (recipes), its validation split and the adapter it keeps, the guardrails'
verdict, and the adapter merged for the after audits.

Recipes, the choice of adapter and the verdict are checked on planted numbers with known answers; the
validation and the merge run for real on the session's small fairgen-tiny (`mini`, conftest.py).
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import FIX_CONCEPTS, write_suite
from fairgen import models
from fairgen.cli import app
from fairgen.fix import FixConfig, fix
from fairgen.fix.guardrails import verdict
from fairgen.fix.recipes import PAPER_SAMPLING, resolve
from fairgen.fix.validation import Validation, choose, explicit_floor, failures, split
from fairgen.models.adapters import applied_adapter, merged_adapter
from fairgen.types import FairgenError, Prompt


# --- recipes -------------------------------------------------------------------------------------------

def test_recipes_fill_only_what_the_user_left_unset():
    tiny = resolve(FixConfig(model="tiny", attributes=("gender",)))
    assert (tiny.data_source, tiny.sft_steps, tiny.bpo_steps, tiny.lr, tiny.alpha, tiny.beta) == \
        ("world", 150, 300, 1e-3, 1.0, 1.0)
    assert (tiny.anchor, tiny.rank, tiny.lora_alpha, tiny.keep, tiny.bpo_lr) == (2.0, 8, 16.0, "best", None)
    assert resolve(FixConfig(model="tiny:/x", attributes=("race",))).anchor == 3.0
    assert resolve(FixConfig(model="tiny", attributes=("gender", "race"))).anchor == 3.0
    janus = resolve(FixConfig(model="janus:some/dir"))
    assert (janus.data_source, janus.lr) == ("model", 1e-4)
    # the balanced set's suite: occupations, and for tiny with race the personal descriptors too (with 450
    # BPO steps); not for other families (not measured there) nor under the paper preset
    assert (tiny.train_suite, janus.train_suite) == ("occupations:train", "occupations:train")
    for attributes in (("race",), ("gender", "race")):
        race = resolve(FixConfig(model="tiny", attributes=attributes))
        assert (race.train_suite, race.sft_steps, race.contrast) == \
            ("occupations:train,personal_descriptors:train", 150, 3.0)
        janus_race = resolve(FixConfig(model="janus:d", attributes=attributes))
        assert (janus_race.train_suite, janus_race.contrast, janus_race.units_per_batch) == ("occupations:train", 0.0, 8)
        assert resolve(FixConfig(model="tiny", attributes=attributes, preset="paper")).contrast == 0.0
        assert resolve(FixConfig(model="tiny", attributes=attributes, contrast=0.5)).contrast == 0.5
        assert race.probe_suite == "none"  # the balance probe is opt-in (docs/fix.md)
    # race alone: 16 prompts per batch and 300 BPO steps; mix: 8 and 450; gender: 8 and 300
    alone, mix = (resolve(FixConfig(model="tiny", attributes=a)) for a in (("race",), ("gender", "race")))
    assert (alone.units_per_batch, alone.bpo_steps, mix.units_per_batch, mix.bpo_steps) == (16, 300, 8, 450)
    assert (tiny.units_per_batch, tiny.bpo_steps, tiny.probe_suite) == (8, 300, "none")
    assert resolve(FixConfig(model="tiny", attributes=("race",), units_per_batch=4)).units_per_batch == 4
    assert resolve(FixConfig(model="tiny", attributes=("race",), preset="paper")).units_per_batch == 8
    assert tiny.contrast == 0.0  # gender alone: the anchor held explicit prompts without it
    assert resolve(FixConfig(model="tiny", attributes=("race",), train_suite="sports:test",
                             bpo_steps=10)).train_suite == "sports:test"
    mine = resolve(FixConfig(model="tiny", lr=5e-4, anchor=0.0, rank=4))
    assert (mine.lr, mine.anchor, mine.rank, mine.lora_alpha) == (5e-4, 0.0, 4, 8.0)
    # generate() batch: tiny's whole call is one batch (256); other families keep the audit's 64
    assert (tiny.batch_size, janus.batch_size) == (256, 64)
    assert resolve(FixConfig(model="tiny", batch_size=16)).batch_size == 16


def test_paper_preset_is_the_papers_settings_and_user_values_still_win():
    paper = resolve(FixConfig(model="tiny", attributes=("race",), preset="paper"))
    assert (paper.alpha, paper.beta, paper.anchor, paper.lr, paper.bpo_lr) == (0.0, 1.0, 0.0, 1e-4, 8e-7)
    assert (paper.rank, paper.lora_alpha, paper.keep) == (32, 32.0, "last")
    assert (paper.train_suite, paper.sft_steps, paper.bpo_steps) == ("occupations:train", 150, 300)
    assert paper.sampling == PAPER_SAMPLING
    stages = paper.train_config().stages
    assert [(s.name, s.lr, s.alpha, s.beta) for s in stages] == [("sft", 1e-4, 1.0, 0.0), ("bpo", 8e-7, 0.0, 1.0)]
    mixed = resolve(FixConfig(model="tiny", preset="paper", sampling={"cfg": 5.0}, bpo_steps=7))
    assert mixed.sampling == {**PAPER_SAMPLING, "cfg": 5.0} and mixed.bpo_steps == 7
    with pytest.raises(FairgenError, match="unknown preset"):
        resolve(FixConfig(model="tiny", preset="nope"))


# --- validation: the split and the choice ---------------------------------------------------------------

def test_split_holds_out_whole_concepts():
    prompts = [Prompt(f"{c}-{t}", f"{c} {t}", c, {}) for c in "abcdefghij" for t in range(3)]
    train, val = split(prompts, 2)
    held = {p.concept for p in val}
    assert len(val) == 2 and len(held) == 2 and [p.id for p in val] == [f"{c}-0" for c in sorted(held)]
    assert not held & {p.concept for p in train} and len(train) == 24
    assert split(prompts, 0) == (prompts, [])
    assert len(split(prompts, 100)[1]) == 4  # fewer than half the concepts: (10 - 1) // 2
    assert split(prompts[:6], 5) == (prompts[:6], [])  # two concepts: nothing held out


def _record(step, rd, fidelity=1.0, face=1.0, female=0.99, male=0.99):
    return {"step": step, "stage": "bpo", "rd": {"gender": rd}, "fidelity": fidelity, "face_rate": face,
            "explicit": {"gender": {"female": female, "male": male}}}


def test_choice_keeps_the_lowest_rd_that_passes_every_guardrail():
    first = _record(0, 0.8, female=0.90)
    records = [first, _record(75, 0.5), _record(150, 0.2, fidelity=0.95),  # fidelity -5 points: fails
               _record(225, 0.3, female=0.86), _record(300, 0.35, female=0.88)]  # floor for female: 0.87
    assert explicit_floor(0.90) == pytest.approx(0.87) and explicit_floor(0.99) == 0.95
    # a group that starts above the floor keeps the floor itself, however close it starts
    assert explicit_floor(0.969) == 0.95 and explicit_floor(0.95) == 0.95
    assert explicit_floor(0.949) == pytest.approx(0.919) and explicit_floor(None) == 0.95
    assert failures(records[2], first) == ["fidelity -5.0 points"]
    assert failures(records[3], first) == ["explicit female 0.86 < 0.870"]
    kept, why = choose(records, "best")
    assert kept["step"] == 300 and "lowest validation rd" in why and "0.800 → 0.350" in why
    assert choose(records, "last")[0]["step"] == 300 and choose(records[:4], "last")[0]["step"] == 225
    # none passes: the fewest failures, then the lowest rd
    bad = [first, _record(75, 0.3, face=0.5, fidelity=0.5), _record(150, 0.6, fidelity=0.5)]
    kept, why = choose(bad, "best")
    assert kept["step"] == 150 and why.startswith("step 150: no measured step passed")


def _probed(step, rd, probe, upper=0.15):
    return {**_record(step, rd), "probe": {"gender": {"mean": probe, "ci95": [probe - 0.03, upper],
                                                      "noise_floor": 0.1}}}


def test_balance_probe_fails_a_step_above_step_zeros_interval_and_the_choice_skips_it():
    first = _probed(0, 0.8, 0.12)  # step 0's probe interval ends at 0.15
    records = [first, _probed(75, 0.5, 0.14), _probed(150, 0.3, 0.151), _probed(225, 0.35, 0.15)]
    assert failures(records[1], first) == [] and failures(records[3], first) == []  # the upper end itself passes
    assert failures(records[2], first) == ["probe gender rd 0.151 > 0.150"]
    kept, why = choose(records, "best")
    assert kept["step"] == 225 and "0.800 → 0.350" in why  # 150 has the lowest rd but moved the probe
    # without a probe (or an unmeasured one) nothing changes
    assert failures(_record(150, 0.3), first) == []
    assert failures({**records[2], "probe": {"gender": None}}, first) == []
    assert failures({**records[2], "probe": {"gender": {"mean": None, "ci95": None}}}, first) == []  # no faces
    assert failures(records[2], {**first, "probe": {"gender": {"mean": 0.1, "ci95": None}}}) == []


def test_training_stops_after_patience_measurements_without_a_better_adapter():
    v = Validation(measure=lambda step, stage: {}, every=75, patience=2)
    records = [_record(0, 0.8), _record(75, 0.4), _record(150, 0.5)]
    assert not v.stale(records)
    assert v.stale(records + [_record(225, 0.45)])
    assert not v.stale(records + [_record(225, 0.39)])
    assert not Validation(measure=v.measure, every=75, patience=2, keep="last").stale(records + [_record(225, 0.45)])


# --- the verdict ------------------------------------------------------------------------------------------

def _summary(rd, ci=None, face=1.0, fidelity=0.99, n=160):
    return {"images_per_prompt": n, "face_rate": face, "fidelity": {"metric": "concept_match", "value": fidelity},
            "rd": {"gender": {"mean": rd, "ci95": ci or [rd - 0.02, rd + 0.02], "noise_floor": 0.063},
                   "race": None, "gender_x_race": None, "age": None}}


def _quality(clip_score, ci=(0.5, 0.5), iqa=0.6):
    """A test-suite audit's quality summary: CLIP score with an interval `ci` below/above it, CLIP-IQA ± 0.005."""
    return {"model": "clip", "clip_score": {"mean": clip_score, "ci95": [clip_score - ci[0], clip_score + ci[1]]},
            "clip_iqa": {"mean": iqa, "ci95": [iqa - 0.005, iqa + 0.005]}}


def _report(after_rd=0.2, fidelity_points=-1.0, female=(0.99, 0.97), suite_after=0.3, face_after=1.0,
            quality=(_quality(30.0), _quality(29.5))):
    from fairgen.fix.report import rd_changes

    suite_before, suite_after_s = _summary(0.5, [0.45, 0.55], n=64), _summary(suite_after, n=64, face=face_after)
    before, after = _summary(0.8), _summary(after_rd)
    before["quality"], after["quality"] = quality
    return {"config": {"attributes": ["gender"]}, "before": before, "after": after,
            "fidelity_change_points": fidelity_points,
            "explicit_adherence_by_group": {"before": {"gender": {"female": female[0], "male": 1.0}},
                                            "after": {"gender": {"female": female[1], "male": 1.0}}},
            "checks": {"suites": {"sports": {"before": suite_before, "after": suite_after_s,
                                             "rd_change": rd_changes(suite_before, suite_after_s)}}}}


def test_verdict_one_line_per_guardrail_with_known_answers():
    ok = verdict(_report())
    assert ok["passed"] and [g["name"] for g in ok["guardrails"]] == \
        ["fidelity", "explicit adherence", "generalisation", "face rate", "image quality"]
    assert all(g["line"].startswith("PASS ") for g in ok["guardrails"])
    fails = {g["name"] for g in verdict(_report(fidelity_points=-3.5))["guardrails"] if g["passed"] is False}
    assert fails == {"fidelity"}
    assert verdict(_report(fidelity_points=-3.0))["passed"]  # a drop of exactly 3 points is allowed
    # explicit: 0.94 fails against a before of 0.99, and of 0.96 (a start above 0.95 keeps 0.95);
    # 0.92 passes against its own start below 0.95 (0.94 - 0.03)
    assert not verdict(_report(female=(0.99, 0.94)))["passed"]
    assert not verdict(_report(female=(0.96, 0.94)))["passed"]
    assert verdict(_report(female=(0.94, 0.92)))["passed"]
    # generalisation: above the before interval's upper end (0.55) fails; inside it passes
    worse = verdict(_report(suite_after=0.56))
    assert [g["name"] for g in worse["guardrails"] if g["passed"] is False] == ["generalisation"]
    assert "sports gender 0.560 > 0.550" in worse["guardrails"][2]["line"]
    assert verdict(_report(suite_after=0.54))["passed"]
    assert not verdict(_report(face_after=0.98))["passed"]
    # not measured is said, and does not fail
    bare = _report()
    bare["checks"], bare["fidelity_change_points"] = {"suites": {}}, None
    lines = verdict(bare)
    assert lines["passed"] and lines["guardrails"][0]["line"].startswith("NOT MEASURED fidelity")
    assert lines["guardrails"][2]["line"].startswith("NOT MEASURED generalisation")
    assert verdict(_report(quality=(None, None)))["guardrails"][4]["line"] == (
        "NOT MEASURED image quality: no quality model (--quality)")


def test_quality_guardrail_allows_the_larger_of_the_before_noise_and_the_floor():
    def line(before, after):
        return verdict(_report(quality=(before, after)))["guardrails"][4]

    # tight before interval (0.5 below): the 1-point floor decides; a drop of exactly 1.0 passes, 1.01 fails
    assert line(_quality(30.0), _quality(29.0))["passed"] is True
    failed = line(_quality(30.0), _quality(28.99))
    assert failed["passed"] is False and failed["line"].startswith("FAIL image quality: dropped too far: clip_score;")
    assert "clip_score 30.000 → 28.990 (a drop of at most 1.000 allowed)" in failed["line"]
    # a wide before interval (2.5 below its mean): its noise decides
    assert line(_quality(30.0, ci=(2.5, 2.0)), _quality(27.6))["passed"] is True
    assert line(_quality(30.0, ci=(2.5, 2.0)), _quality(27.4))["passed"] is False
    # CLIP-IQA alone: its floor is 0.01 (its interval here is ±0.005)
    assert line(_quality(30.0), _quality(30.0, iqa=0.591))["passed"] is True
    iqa = line(_quality(30.0), _quality(30.0, iqa=0.585))
    assert iqa["passed"] is False and "dropped too far: clip_iqa" in iqa["line"]
    # a rise never fails
    assert line(_quality(30.0), _quality(35.0, iqa=0.9))["passed"] is True


# --- the adapter merged for the audits ------------------------------------------------------------------

def _random_adapter(model, path):
    """A peft adapter with non-zero weights on the model's targets (saved as fairgen's training does)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=list(model.lora_targets)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(path)
    peft_model.unload()
    return path


def test_merged_adapter_matches_the_applied_one_and_restores_the_weights_exactly(mini, tmp_path):
    model = models.load(f"tiny:{mini}")
    adapter = _random_adapter(model, tmp_path / "adapter")
    original = {k: v.clone() for k, v in model.lora_root.state_dict().items()}
    prompts, images = ["A photo of the face of a baker, a person"] * 2, None
    with torch.no_grad():
        images = model.generate(prompts, seeds=[1, 2])
        plain = model.image_token_logprob(prompts, images)
        with applied_adapter(model, adapter) as adapted:
            applied = adapted.image_token_logprob(prompts, images)
        with merged_adapter(model, adapter) as adapted:
            assert not any(hasattr(m, "lora_A") for m in model.lora_root.modules())  # plain layers
            assert "adapter" in adapted.provenance()
            merged = adapted.image_token_logprob(prompts, images)
    assert not torch.allclose(applied, plain, atol=1e-4)  # the adapter changes the model
    torch.testing.assert_close(merged, applied, atol=1e-5, rtol=1e-5)
    restored = model.lora_root.state_dict()
    assert set(restored) == set(original) and all(torch.equal(restored[k], original[k]) for k in original)


# --- validation end to end, the report's verdict and --strict -----------------------------------------------

def test_validation_keeps_a_measured_adapter_and_the_cli_strict_exit_matches_the_verdict(mini, tmp_path, cli):
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    train = write_suite(tmp_path / "train.yaml", FIX_CONCEPTS)  # three concepts: one held out
    test = write_suite(tmp_path / "test.yaml", FIX_CONCEPTS[2:])
    probe = write_suite(tmp_path / "probe.yaml", ["jazz fan", "coin collector"])  # the balance probe
    settings = dict(model=f"tiny:{mini}", train_suite=str(train), test_suite=str(test), images_per_group=2,
                    sft_steps=4, bpo_steps=6, units_per_batch=2, val_concepts=1, val_images=4, probe_suite=str(probe),
                    probe_images=4,
                    val_explicit_images=2, val_every=5, patience=0, images_per_prompt=4, explicit_concepts=1,
                    explicit_images=2, check_suites=(str(test),), check_images=2, understanding_images=0,
                    batch_size=16)
    out = tmp_path / "fix"
    report = fix(FixConfig(**settings), out)
    assert report["config"]["data_source"] == "world" and report["config"]["anchor"] == 2.0  # tiny's recipe
    records = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 5, 10]
    assert all(set(r) >= {"rd", "fidelity", "face_rate", "explicit", "probe"} for r in records)
    # the balance probe: audited at every validation, its rd recorded with the interval the next steps are
    # judged by (mini draws too few faces for numbers: the rule itself is checked on planted ones above)
    assert all(set(r["probe"]["gender"]) == {"mean", "ci95", "noise_floor"} for r in records)
    assert len(json.loads((out / "validation" / "step-00005" / "probe" / "results.json").read_text())["prompts"]) == 2
    assert "probe gender rd" in (out / "fix_report.md").read_text()
    held = {p["concept"] for p in json.loads(
        (out / "validation" / "step-00000" / "neutral" / "results.json").read_text())["prompts"]}
    assert held <= set(FIX_CONCEPTS) and not held & set(
        __import__("pandas").read_parquet(out / "data" / "balanced.parquet")["neutral_prompt"].str.extract(
            r"a (\w+), a person")[0])  # the held-out concept never trains
    kept, why = choose(records, "best")
    assert report["validation"]["kept_step"] == kept["step"] and report["validation"]["reason"] == why
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    if kept["step"] != 10:  # the adapter on disk is the kept step's, not the last
        best = load_file(str(out / "best" / "lora.safetensors"))
        assert all(torch.equal(saved[k], best[k.replace(".default", "")] if k not in best else best[k])
                   for k in saved)
    lines = report["verdict"]["guardrails"]
    assert len(lines) == 5 and all(g["line"] in (out / "fix_report.md").read_text() for g in lines)
    html = (out / "fix_report.html").read_text()
    assert all(g["line"].replace(">", "&gt;").replace("<", "&lt;") in html for g in lines)
    # the CLI on the finished run (it resumes): the verdict printed, exit 1 under --strict when it fails
    args = ["fix", "--out", str(out), "--model", settings["model"], "--train-suite", str(train), "--test-suite",
            str(test), "--images-per-group", "2", "--sft-steps", "4", "--bpo-steps", "6", "--units-per-batch", "2",
            "--val-concepts", "1", "--val-images", "4", "--val-explicit-images", "2", "--val-every", "5",
            "--patience", "0", "--images-per-prompt", "4", "--explicit-concepts", "1", "--explicit-images", "2",
            "--check-suites", str(test), "--check-images", "2", "--understanding-images", "0", "--batch-size", "16",
            "--probe-images", "4", "--probe-suite", str(probe)]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert all(g["line"] in plain.output for g in lines)
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == (0 if report["verdict"]["passed"] else 1)
    # a probe the fix trains on: one line, exit 2, nothing written
    fresh = tmp_path / "overlap"
    bad = cli(*[a if a != str(out) else str(fresh) for a in args[:-1]], str(train))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "shares 3 concept(s) with the training suite" in bad.stderr and not fresh.exists()


def test_method_table_shows_quality_with_intervals_only_when_every_row_has_it():
    from fairgen.fix.report import rd_changes
    from fairgen.fix.table import build_table, markdown

    def method_report(quality):
        r = _report(quality=quality)
        r["config"] = {"attributes": ["gender"], "model": "tiny", "train_suite": "t", "test_suite": "s",
                       "sft_steps": 4, "bpo_steps": 6, "lr": 1e-3}
        r["checks"] = {"understanding": {"before": None, "after": None}, "suites": {}}
        r["explicit_adherence"] = {"before": {}, "after": {}}
        r["rd_change"] = rd_changes(r["before"], r["after"])
        return r

    table = build_table({"sft": method_report((_quality(30.0), _quality(29.5))),
                         "bpo": method_report((_quality(30.0), _quality(28.25, iqa=0.55)))})
    text = markdown(table)
    assert "| CLIP score (0–100) | CLIP-IQA (0–1) | explicit followed |" in text
    assert "| 30.000 [29.500, 30.500] | 0.600 [0.595, 0.605] |" in text  # the before row
    assert "| 28.250 [27.750, 28.750] | 0.550 [0.545, 0.555] |" in text  # bpo's
    assert table["methods"]["bpo"]["quality"]["clip_score"]["mean"] == 28.25
    bare = markdown(build_table({"sft": method_report((None, None))}))
    assert "CLIP" not in bare and len({line.count("|") for line in bare.splitlines() if line.startswith("| ")}) == 1
