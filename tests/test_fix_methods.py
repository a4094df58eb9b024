"""`fairgen fix --method all` on a real (very small) fairgen-tiny: the four methods of the paper's Table 1 on
one balanced set and budget, the after-fix checks, the image -> text log-probability understanding-sft
trains, and data-parallel training under `accelerate launch` against one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import FIX_CONCEPTS, write_suite
from fairgen import models
from fairgen.fix import fix
from fairgen.fix.caption import CAPTION_QUESTION, caption_logprob
from fairgen.fix.checks import IMAGE_QUESTION, OPTION_ORDER, prompt_suffix, suite_dir_name
from fairgen.fix.data import BalancedSet
from fairgen.fix.pipeline import METHODS
from fairgen.fix.table import TABLE_JSON, TABLE_MD
from fairgen.fix.train import stages_for
from fairgen.models import OTHER
from fairgen.types import FairgenError
from fairgen.world import render
from test_fix_pipeline import _config


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_method_on_one_set_and_budget(mini, suites_dir, tmp_path):
    torch.set_num_threads(1)
    check = write_suite(tmp_path / "painted.yaml", FIX_CONCEPTS[:1])
    out = tmp_path / "all"
    config = _config(mini, suites_dir, method="all", sft_steps=10, bpo_steps=10, images_per_prompt=6,
                     check_suites=(str(check),), check_images=3, understanding_images=8)
    table = fix(config, out)

    # one table, Table 1's rows, and each method's own report beside the shared data and before audits
    assert list(table["methods"]) == list(METHODS) == ["prompt", "understanding-sft", "sft", "bpo"]
    assert json.loads((out / TABLE_JSON).read_text()) == table
    md = (out / TABLE_MD).read_text()
    for label in ("before (the model)", "prompt engineering", "FT image→text", "FT text→image", "BPO"):
        assert f"| {label}" in md
    assert (out / "data" / "balanced.parquet").is_file() and (out / "before" / "test" / "results.json").is_file()
    assert not (out / "prompt" / "adapter").exists() and not (out / "prompt" / "train_log.jsonl").exists()
    for method in METHODS:
        assert not (out / method / "data").exists()
        report = json.loads((out / method / "fix_report.json").read_text())
        assert report["config"]["method"] == method
        assert report["before"]["run_dir"] == str(out / "before" / "test")

    # the same budget: every trained method 20 optimizer steps of the same lr on the same batches
    stages = {m: [(r["stage"], r["step"]) for r in _log(out / m / "train_log.jsonl")] for m in METHODS[1:]}
    assert stages["bpo"][-1] == ("bpo", 9) and ("sft", 9) in stages["bpo"]
    assert stages["sft"][-1] == ("sft", 19) and stages["understanding-sft"][-1] == ("understanding", 19)
    caption = [r["caption"] for r in _log(out / "understanding-sft" / "train_log.jsonl")]
    assert caption[-1] < caption[0], caption

    # prompt engineering: nothing trained, every audited prompt carries the suffix, ids unchanged
    after = json.loads((out / "prompt" / "after" / "test" / "results.json").read_text())
    before = json.loads((out / "before" / "test" / "results.json").read_text())
    assert [p["id"] for p in after["prompts"]] == [p["id"] for p in before["prompts"]]
    assert all(p["text"].endswith(", any gender") for p in after["prompts"])
    explicit = json.loads((out / "prompt" / "after" / "explicit-gender" / "results.json").read_text())
    assert all(p["text"].endswith("a person, any gender") for p in explicit["prompts"])
    assert prompt_suffix(("gender", "race")) == ", any gender, any race"

    # after-fix checks: understanding accuracy before / after (the prompt method leaves the model as it is),
    # and the check suite audited before and after every method
    name = suite_dir_name(str(check))
    assert name == "painted"
    und = table["before"]["understanding_accuracy"]
    assert set(und) == {"gender", "race", "age"} and all(0.0 <= v <= 1.0 for v in und.values())
    assert table["methods"]["prompt"]["understanding_accuracy"] == und
    for method in METHODS:
        assert set(table["methods"][method]["suites"]) == {name}
        assert (out / method / "after" / "checks" / name / "results.json").is_file()
    assert (out / "before" / "checks" / name / "results.json").is_file()
    report = json.loads((out / "bpo" / "fix_report.json").read_text())
    assert set(report["checks"]["suites"][name]) == {"before", "after", "rd_change"}
    assert "Understanding accuracy on 8 labelled world images" in (out / "bpo" / "fix_report.md").read_text()

    # understanding-sft raised what it trains: the neutral prompt as the caption of its balanced images
    data = BalancedSet.load(out / "data")
    images, texts = [data.image(i) for i in range(len(data.frame))], data.frame["neutral_prompt"].tolist()
    with torch.no_grad():
        base = caption_logprob(models.load(f"tiny:{mini}"), images, texts).mean()
        tuned = caption_logprob(models.load(f"tiny:{mini}", adapter=out / "understanding-sft" / "adapter"),
                                images, texts).mean()
    assert tuned > base + 0.1, (base, tuned)

    # a re-run resumes everything: same table, nothing retrained
    stamp = (out / "bpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    assert fix(config, out) == table
    assert (out / "bpo" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_caption_logprob_is_the_answer_score_and_batch_invariant(mini):
    """exp(mean log p * tokens) of a one-word caption is answer_distribution's raw mass for that answer to
    the caption question; scored in a batch (left padding) or alone, the same; and it has gradients."""
    model = models.load(f"tiny:{mini}")
    images = [render("female", "white", "young", "baker", 1), render("male", "black", "old", "baker", 2)]
    texts = ["female", "A photo of the face of a baker, a person"]
    together = caption_logprob(model, images, texts)
    alone = torch.cat([caption_logprob(model, [im], [t]) for im, t in zip(images, texts)])
    assert torch.allclose(together, alone, atol=1e-5)
    raw = 1.0 - model.answer_distribution(images[0], CAPTION_QUESTION, ["female"])[OTHER]
    n_tokens = len(model.vocab.answer("female"))
    assert together[0].item() * n_tokens == pytest.approx(torch.tensor(raw).log().item(), abs=1e-4)
    together.sum().backward()
    assert model.lm.wte.weight.grad is not None
    with pytest.raises(FairgenError, match="2 images but 1 texts"):
        caption_logprob(model, images, texts[:1])


def test_understanding_question_is_the_one_tiny_is_trained_on():
    from fairgen.models.tiny import data as tiny_data

    assert IMAGE_QUESTION == tiny_data.IMAGE_QUESTION and OPTION_ORDER == tiny_data.OPTION_ORDER


def test_method_budgets_and_bad_methods():
    assert [(s.name, s.steps) for s in stages_for("bpo", 3, 4, 0.0, 1.0, 1e-3)] == [("sft", 3), ("bpo", 4)]
    assert [(s.name, s.steps) for s in stages_for("sft", 3, 4, 0.0, 1.0, 1e-3)] == [("sft", 7)]
    assert [(s.name, s.steps) for s in stages_for("understanding-sft", 0, 4, 0.0, 1.0, 1e-3)] == [("understanding", 4)]
    with pytest.raises(FairgenError, match="last stage"):
        stages_for("bpo", 3, 0, 0.0, 1.0, 1e-3)
    with pytest.raises(FairgenError, match="unknown training method"):
        stages_for("prompt", 3, 4, 0.0, 1.0, 1e-3)


def test_bad_fix_options_are_one_line_errors(mini, suites_dir, tmp_path, cli):
    from typer.testing import CliRunner

    from fairgen.cli import app

    base = ["fix", "--model", f"tiny:{mini}", "--train-suite", str(suites_dir / "train.yaml"),
            "--test-suite", str(suites_dir / "test.yaml")]
    cases = [(["--method", "dpo"], "unknown --method 'dpo'"),
             (["--device", "gpu7"], "--device 'gpu7' is not a device"),
             (["--dtype", "bf16"], "takes no options"),
             (["--model-option", "image_area"], "--model-option expects KEY=VALUE"),
             (["--check-suites", "nosuchsuite"], "nosuchsuite"),
             (["--check-images", "0"], "--check-images must be >= 1"),
             (["--units-per-batch", "1", "--understanding-images", "-1"], "--understanding-images must be >= 0"),
             (["--probe-images", "0"], "--probe-images must be >= 1"),
             (["--probe-suite", "nosuchprobe"], "nosuchprobe"),
             (["--probe-suite", "sports", "--val-concepts", "0"], "it needs --val-concepts >= 1")]
    for n, (extra, message) in enumerate(cases):
        result = CliRunner().invoke(app, [*base, *extra, "--out", str(tmp_path / str(n))])
        assert isinstance(result.exception, FairgenError), (extra, result.output, result.exception)
        assert message in str(result.exception) and "\n" not in str(result.exception), extra
        assert not (tmp_path / str(n)).exists()  # refused before anything was written
    done = cli(*base, "--method", "all", "--check-suites", "none,sports", "--out", str(tmp_path / "cli"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "none" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_training_matches_one_process(mini, suites_dir, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (two CPU processes through torchrun, gloo) with the
    same global batch and seed trains to the same losses as one process: each process takes half of every
    batch's sets and the LoRA gradients are summed. Rank 0 alone writes the run."""
    torch.set_num_threads(1)
    settings = dict(attributes=("gender", "race"), images_per_group=2, sft_steps=8, bpo_steps=8, units_per_batch=4,
                    lr=3e-3, images_per_prompt=4, explicit_concepts=0)
    one = tmp_path / "one"
    fix(_config(mini, suites_dir, **settings), one)
    two = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), "-m", "fairgen", "fix", "--model", f"tiny:{mini}",
         "--train-suite", str(suites_dir / "train.yaml"), "--test-suite", str(suites_dir / "test.yaml"),
         "--data-source", "world", "--attributes", "gender,race", "--images-per-group", "2", "--sft-steps", "8",
         "--bpo-steps", "8", "--units-per-batch", "4", "--lr", "3e-3", "--alpha", "0", "--anchor", "0", "-n", "4", "--explicit-concepts", "0",
         "--batch-size", "32", "--check-suites", "none", "--understanding-images", "0", "--out", str(two)],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report: ") == 1  # rank 0 speaks
    a, b = _log(one / "train_log.jsonl"), _log(two / "train_log.jsonl")
    assert [(r["stage"], r["step"]) for r in a] == [(r["stage"], r["step"]) for r in b]  # one writer
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=0.02)
    for x, y in zip(a, b):
        assert y["sft"] == pytest.approx(x["sft"], rel=0.02)
        assert y["bpo"] == pytest.approx(x["bpo"], rel=0.05, abs=1e-4)
    assert (two / "adapter" / "adapter_model.safetensors").is_file() and (two / "fix_report.json").is_file()
