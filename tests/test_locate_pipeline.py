"""`fairgen locate` end to end on a saved random fairgen-tiny (code paths real, numbers meaningless): the run
directory, resume, --audit reuse, the HTML page, input errors; and the tokenizer-bias planting helper."""

from __future__ import annotations

import json
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

import fairgen
from fairgen.locate import locate
from fairgen.models.tiny.cli import plant_command
from fairgen.models.tiny.plant import plant_tokenizer_bias
from fairgen.locate.cli import locate_command
from fairgen.models.tiny import load
from fairgen.types import FairgenError, Prompt
from fairgen.world import render
from test_locate_models import random_tiny

PROMPTS = [Prompt("nurse", "A photo of the face of a nurse, a person", "nurse"),
           Prompt("judge", "A photo of the face of a judge, a person", "judge")]
FAST = {"images_per_prompt": 4, "labelled": "world:16", "sequences": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("locate") / "random-tiny"
    random_tiny(seed=1).save(path)
    return path


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    from conftest import write_suite

    return write_suite(tmp_path_factory.mktemp("suite") / "two.yaml", ["nurse", "judge"])


def _app() -> typer.Typer:
    """The commands as the main CLI registers them."""
    app = typer.Typer()
    app.command("locate")(locate_command)
    app.command("plant-tokenizer-bias")(plant_command)
    return app


def test_cli_writes_findings_and_a_self_contained_page_and_resumes(checkpoint, suite_file, tmp_path) -> None:
    out = tmp_path / "loc"
    args = ["locate", "--model", f"tiny:{checkpoint}", "--suite", str(suite_file), "--out", str(out),
            "-n", "4", "--labelled", "world:16", "--sequences", "2", "--batch-size", "8"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "language model:" in result.output and "findings:" in result.output
    findings = json.loads((out / "findings.json").read_text())
    assert {"understanding", "alignment", "tokenizer", "language_model", "verdicts"} <= set(findings)
    assert findings["understanding"]["prompts"][0]["gender"]["p_unknown"] >= 0.0
    assert findings["tokenizer"]["probes"]["tokenizer"]["features"] == 4 * 8 * 8
    for key in ("understanding", "tokenizer", "language_model"):
        assert findings["verdicts"][key]["verdict"] in ("biased", "not biased", "inconclusive")
    assert (out / "audit" / "results.json").is_file()
    stages = sorted(p.name for p in (out / "stages").rglob("*.json"))
    looks = findings["language_model"]["controlled"]["looks_used"]
    assert stages == sorted(["hidden_probe.json", "tokenizer.json", "understanding.json",
                             *(f"{k}.json" for k in range(looks) for _ in ("judge", "nurse"))])
    html = (out / "locate.html").read_text()
    assert "Content-Security-Policy" in html and "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)
    assert 'src="data:image/png;base64,' in html  # the survival chart, embedded

    before = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")}
    again = CliRunner().invoke(_app(), args)  # a re-run reuses every finished stage
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")} == before
    assert json.loads((out / "findings.json").read_text())["verdicts"] == findings["verdicts"]
    changed = CliRunner().invoke(_app(), [*args[:-4], "--sequences", "3"])
    assert changed.exit_code != 0 and isinstance(changed.exception, FairgenError)


def test_reuses_an_audit_and_checks_it_covers_the_suite(checkpoint, tmp_path) -> None:
    model = load(checkpoint)
    fairgen.audit(model, PROMPTS, images_per_prompt=4, out=tmp_path / "audit", batch_size=8)
    findings = locate(model, PROMPTS, tmp_path / "loc", audit=tmp_path / "audit", **FAST)
    assert not (tmp_path / "loc" / "audit").exists()
    assert findings["audit"] == str(tmp_path / "audit")
    extra = PROMPTS + [Prompt("chef", "A photo of the face of a chef, a person", "chef")]
    with pytest.raises(FairgenError, match="does not cover"):
        locate(model, extra, tmp_path / "loc2", audit=tmp_path / "audit", **FAST)
    with pytest.raises(FairgenError, match="no results.json"):
        locate(model, PROMPTS, tmp_path / "loc3", audit=tmp_path / "nowhere", **FAST)
    with pytest.raises(FairgenError, match="labelled set"):
        locate(model, PROMPTS, tmp_path / "loc4", **{**FAST, "labelled": "no/such/dir"})
    with pytest.raises(FairgenError, match="sequences"):
        locate(model, PROMPTS, tmp_path / "loc5", **{**FAST, "sequences": 1})


def test_planting_changes_the_decoder_only(checkpoint, tmp_path) -> None:
    base = load(checkpoint)
    planted = plant_tokenizer_bias(checkpoint, tmp_path / "planted", images=64, steps=3, batch=16)
    again = load(tmp_path / "planted")
    images = [render("female", "black", "young", "nurse", 3), render("male", "white", "old", "judge", 4)]
    assert torch.equal(again.encode_image(images), base.encode_image(images))
    for a, b in zip(again.lm.state_dict().values(), base.lm.state_dict().values()):
        assert torch.equal(a, b)
    codes = base.encode_image(images)
    assert not torch.equal(again.tokenizer.decode(codes), base.tokenizer.decode(codes))
    info = again.training["planted_tokenizer_bias"]
    assert (info["attribute"], info["from"], info["to"], info["only"]) == ("gender", "female", "male", {"age": "young"})
    assert planted.training == again.training
    for bad in ({"attribute": "height"}, {"source": "male"}, {"target": "purple"}, {"only": {"age": "ancient"}}):
        with pytest.raises(FairgenError):
            plant_tokenizer_bias(base, tmp_path / "bad", images=64, steps=1, **bad)
    result = CliRunner().invoke(_app(), ["plant-tokenizer-bias", "--model", str(checkpoint), "--out",
                                         str(tmp_path / "cli"), "--only", "age", "--steps", "1"])
    assert result.exit_code != 0 and "ATTR=CLASS" in str(result.exception)


def test_two_process_accelerate_locate_equals_one_process(checkpoint, suite_file, tmp_path) -> None:
    """`accelerate launch -m fairgen locate`: the processes share the audit's images and the LM audit's
    prompts; the findings, the stage files and the audit equal one process's."""
    import subprocess
    import sys

    from test_distributed import _env, _free_port

    args = ["locate", "--model", f"tiny:{checkpoint}", "--suite", str(suite_file), "-n", "4",
            "--labelled", "world:16", "--sequences", "2", "--batch-size", "4"]
    one = subprocess.run([sys.executable, "-m", "fairgen", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(_free_port()), "-m", "fairgen", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env=_env(), timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("findings: ") == 1  # printed by rank 0 alone

    def comparable(run):
        findings = json.loads((run / "findings.json").read_text())
        del findings["seconds"]
        return json.loads(json.dumps(findings).replace(str(run), "<out>"))

    assert comparable(tmp_path / "two") == comparable(tmp_path / "one")
    same = ("audit/results.json", "audit/perception.jsonl", "stages/lm/nurse/0.json", "stages/lm/judge/0.json")
    for name in same:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
