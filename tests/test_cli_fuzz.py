"""Issue 24: bad input to every command gives exit code 2, exactly one `error:` line, no traceback, and leaves
the run directory it names unchanged (or absent). Run in-process through the console entry point
(fairgen.cli.main), which is what `fairgen` executes, so the 70-odd cases take seconds, not minutes."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_suite


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Files the cases point at: a suite, a finished run, an unfinished one, junk files."""
    import fairgen

    d = tmp_path_factory.mktemp("fuzz")
    write_suite(d / "s.yaml", ["nurse", "ceo"])
    fairgen.audit(model="world", suite=str(d / "s.yaml"), images_per_prompt=4, out=d / "run")
    (d / "file.txt").write_text("not a directory")
    (d / "notrun").mkdir()
    (d / "notrun" / "x.txt").write_text("user data")
    (d / "unfinished").mkdir()
    (d / "unfinished" / "manifest.json").write_text(json.dumps({"config": {}}))
    (d / "unfinished" / "results.json").write_text("{}")
    (d / "badresults").mkdir()
    (d / "badresults" / "manifest.json").write_text(json.dumps({"config": {}, "finished": "x"}))
    (d / "badresults" / "results.json").write_text("{not json")
    (d / "bad.yaml").write_text("prompts: [text: a\n  - b: [")
    (d / "dup.yaml").write_text(yaml.safe_dump({"prompts": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}))
    (d / "junk.json").write_text("[1, 2")
    (d / "edited.yaml").write_text(yaml.safe_dump({"prompts": [
        {"id": "nurse", "text": "A photo of the face of a ceo, a person", "concept": "nurse"},
        {"id": "ceo", "text": "A photo of the face of a ceo, a person", "concept": "ceo"}]}))
    (d / "empty").mkdir()
    garbage = d / "garbage"
    import shutil

    shutil.copytree(d / "run", garbage)
    lines = (garbage / "perception.jsonl").read_text().splitlines()
    (garbage / "perception.jsonl").write_text("\n".join(lines[:1] + ["{oops"] + lines[1:]) + "\n")
    return d


def _audit(*extra: str, out: str = "{out}") -> list[str]:
    return ["audit", "--model", "world", "--suite", "{d}/s.yaml", "-n", "2", "--out", out, *extra]


def _audit_args(**swap: str) -> list[str]:
    args = {"--model": "world", "--suite": "{d}/s.yaml", "-n": "2", "--out": "{out}"}
    args.update(swap)
    return ["audit", *(x for kv in args.items() for x in kv)]


# (case id, argv with {d} = fixture dir and {out} = a fresh output path, the directory that must stay unchanged)
CASES: list[tuple[str, list[str], str]] = [
    # audit: sampling, seed, sizes
    ("top-p>1", _audit("--top-p", "1.5"), "{out}"),
    ("top-p=0", _audit("--top-p", "0"), "{out}"),
    ("top-p nan", _audit("--top-p", "nan"), "{out}"),
    ("temperature<0", _audit("--temperature", "-1"), "{out}"),
    ("temperature inf", _audit("--temperature", "inf"), "{out}"),
    ("cfg nan", _audit("--cfg", "nan"), "{out}"),
    ("cfg<0", _audit("--cfg", "-2"), "{out}"),
    ("cfg text", _audit("--cfg", "high"), "{out}"),
    ("seed<0", _audit("--seed", "-1"), "{out}"),
    ("seed huge", _audit("--seed", str(2**64)), "{out}"),
    ("seed text", _audit("--seed", "abc"), "{out}"),
    ("n=0", _audit_args(**{"-n": "0"}), "{out}"),
    ("n<0", _audit_args(**{"-n": "-5"}), "{out}"),
    ("n huge", _audit_args(**{"-n": "1000000000"}), "{out}"),
    ("n float", _audit_args(**{"-n": "1.5"}), "{out}"),
    ("batch 0", _audit("--batch-size", "0"), "{out}"),
    ("preset", _audit("--preset", "fast"), "{out}"),
    # audit: specs and files
    ("perception empty", _audit("--perception", ""), "{out}"),
    ("perception unknown", _audit("--perception", "nope"), "{out}"),
    ("perception option", _audit("--perception", "world:x=1"), "{out}"),
    ("perception noisy missing", _audit("--perception", "world-noisy:{d}/none.yaml"), "{out}"),
    ("model unknown", _audit_args(**{"--model": "nope"}), "{out}"),
    ("model world arg", _audit_args(**{"--model": "world:x"}), "{out}"),
    ("model folder missing", _audit_args(**{"--model": "folder:{d}/none"}), "{out}"),
    ("model folder empty arg", _audit_args(**{"--model": "folder:"}), "{out}"),
    ("model folder no match", _audit_args(**{"--model": "folder:{d}/empty"}), "{out}"),
    ("model plugin bad", _audit_args(**{"--model": "plugin:nomodule:Cls"}), "{out}"),
    ("model tiny missing", _audit_args(**{"--model": "tiny:{d}/none"}), "{out}"),
    ("model janus missing", _audit_args(**{"--model": "janus:{d}/none"}), "{out}"),
    ("suite unknown", _audit_args(**{"--suite": "nope"}), "{out}"),
    ("suite split typo", _audit_args(**{"--suite": "occupations:tset"}), "{out}"),
    ("suite file missing", _audit_args(**{"--suite": "{d}/none.yaml"}), "{out}"),
    ("suite bad yaml", _audit_args(**{"--suite": "{d}/bad.yaml"}), "{out}"),
    ("suite duplicate ids", _audit_args(**{"--suite": "{d}/dup.yaml"}), "{out}"),
    ("suite junk json", _audit_args(**{"--suite": "{d}/junk.json"}), "{out}"),
    ("world spec missing", _audit("--world-spec", "{d}/none.yaml"), "{out}"),
    ("world spec bad", _audit("--world-spec", "{d}/bad.yaml"), "{out}"),
    ("world spec not world", _audit_args(**{"--model": "folder:{d}/run"}) + ["--world-spec", "{d}/s.yaml"], "{out}"),
    ("calibration missing", _audit("--calibration", "{d}/none.json"), "{out}"),
    ("calibration junk", _audit("--calibration", "{d}/junk.json"), "{out}"),
    ("calibration not json", _audit("--calibration", "{d}/s.yaml"), "{out}"),
    ("model option no =", _audit("--model-option", "dtype"), "{out}"),
    ("model option world", _audit("--model-option", "dtype=fp32"), "{out}"),
    ("adapter missing", _audit("--adapter", "{d}/none"), "{out}"),
    ("out is a file", _audit(out="{d}/file.txt"), "{d}/file.txt"),
    ("out not a run", _audit(out="{d}/notrun"), "{d}/notrun"),
    ("unknown flag", _audit("--frobnicate"), "{out}"),
    # audit: resuming a run with other inputs
    ("resume other seed", _audit("--seed", "1", out="{d}/run"), "{d}/run"),
    ("resume other sampling", _audit("--cfg", "2", out="{d}/run"), "{d}/run"),
    ("resume other texts", _audit_args(**{"--suite": "{d}/edited.yaml", "--out": "{d}/run"}), "{d}/run"),
    ("resume other perception", _audit("--perception", "world-noisy:{d}/s.yaml", out="{d}/run"), "{d}/run"),
    ("resume garbage record", _audit(out="{d}/garbage"), "{d}/garbage"),
    # calibrate
    ("calibrate perception", ["calibrate", "--perception", "nope", "--labelled", "world:8", "--out", "{out}"], "{out}"),
    ("calibrate labelled", ["calibrate", "--perception", "world", "--labelled", "{d}/none.csv", "--out", "{out}"],
     "{out}"),
    ("calibrate labelled n", ["calibrate", "--perception", "world", "--labelled", "world:x", "--out", "{out}"],
     "{out}"),
    ("calibrate batch", ["calibrate", "--perception", "world", "--labelled", "world:8", "--out", "{out}",
                         "--batch-size", "0"], "{out}"),
    ("calibrate seed", ["calibrate", "--perception", "world", "--labelled", "world:8", "--out", "{out}",
                        "--seed", "-1"], "{out}"),
    ("calibrate out dir", ["calibrate", "--perception", "world", "--labelled", "world:8", "--out", "{d}/notrun"],
     "{d}/notrun"),
    # report, compare
    ("report missing", ["report", "{d}/none"], "{d}/none"),
    ("report not run", ["report", "{d}/notrun"], "{d}/notrun"),
    ("report unfinished", ["report", "{d}/unfinished"], "{d}/unfinished"),
    ("report bad results", ["report", "{d}/badresults"], "{d}/badresults"),
    ("compare none", ["compare"], "{out}"),
    ("compare missing", ["compare", "{d}/none"], "{out}"),
    ("compare format", ["compare", "--format", "xls", "{d}/run"], "{d}/run"),
    ("compare unfinished", ["compare", "{d}/run", "{d}/unfinished"], "{d}/run"),
    # suites, models, top level
    ("suites show unknown", ["suites", "show", "nope"], "{out}"),
    ("suites show split", ["suites", "show", "occupations:tset"], "{out}"),
    ("suites bad file", ["suites", "show", "{d}/bad.yaml"], "{out}"),
    ("suites subcommand", ["suites", "frob"], "{out}"),
    ("models flag", ["models", "--frob"], "{out}"),
    ("no such command", ["frobnicate"], "{out}"),
    ("top-level flag", ["--frob"], "{out}"),
    # locate, fix, tiny
    ("locate world", ["locate", "--model", "world", "--out", "{out}", "-n", "2"], "{out}"),
    ("locate n=0", ["locate", "--model", "tiny", "--out", "{out}", "-n", "0"], "{out}"),
    ("locate sequences", ["locate", "--model", "tiny", "--out", "{out}", "--sequences", "1"], "{out}"),
    ("locate model", ["locate", "--model", "nope", "--out", "{out}"], "{out}"),
    ("locate suite", ["locate", "--model", "tiny", "--out", "{out}", "--suite", "nope"], "{out}"),
    ("fix method", ["fix", "--model", "tiny", "--out", "{out}", "--method", "nope"], "{out}"),
    ("fix attributes", ["fix", "--model", "tiny", "--out", "{out}", "--attributes", "nope"], "{out}"),
    ("fix model", ["fix", "--model", "nope", "--out", "{out}"], "{out}"),
    ("fix suite", ["fix", "--model", "tiny", "--out", "{out}", "--train-suite", "nope"], "{out}"),
    ("tiny train recipe", ["tiny", "train", "--out", "{out}", "--recipe", "nope"], "{out}"),
    ("tiny plant model", ["tiny", "plant-tokenizer-bias", "--model", "{d}/none", "--out", "{out}"], "{out}"),
    ("tiny plant only", ["tiny", "plant-tokenizer-bias", "--model", "{d}/none", "--out", "{out}", "--only", "x"],
     "{out}"),
]


def snapshot(root: Path) -> object:
    if not root.exists():
        return None
    if root.is_file():
        return hashlib.sha256(root.read_bytes()).hexdigest()
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_enough_cases_across_every_command():
    import typer

    from fairgen.cli import app

    commands = set(typer.main.get_command(app).commands)
    covered = {argv[0] for _, argv, _ in CASES}
    assert len(CASES) >= 60 and commands <= covered | {"models"}, commands - covered


@pytest.mark.parametrize("name, argv, keep", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(fx, tmp_path, monkeypatch, capsys, name, argv, keep):
    from fairgen import cli

    fill = {"d": str(fx), "out": str(tmp_path / "out")}
    args = [a.format(**fill) for a in argv]
    kept = Path(keep.format(**fill))
    before = snapshot(kept)
    monkeypatch.setattr(sys, "argv", ["fairgen", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (args, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len([x for x in lines if x.startswith("error: ")]) == 1 and lines[-1].startswith("error: "), err
    assert snapshot(kept) == before
