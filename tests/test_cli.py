"""The command line as a user meets it: bad input gives one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli, write_spec, write_suite


def assert_one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def suite(tmp_path):
    return write_suite(tmp_path / "suite.yaml", ["nurse", "pilot"])


def test_audit_runs_and_says_where_results_are(tmp_path, suite):
    proc = run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "5", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    assert "results.json" in proc.stdout and "report.html" in proc.stdout
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert [p["id"] for p in results["prompts"]] == ["nurse", "pilot"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--suite", "no/such/suite.yaml"], ["suite.yaml"]),
        (["--suite", "nosuchsuite"], ["nosuchsuite"]),
        (["--model", "gpt5:foo"], ["unknown model", "gpt5"]),
        (["-n", "0"], ["images per prompt", "positive"]),
        (["-n", "-3"], ["images per prompt"]),
        (["-n", "many"], ["images-per-prompt"]),
        (["--preset", "fast"], ["preset"]),
        (["--perception", "magic"], ["perception", "magic"]),
        (["--world-spec", "missing.yaml"], ["missing.yaml"]),
    ],
)
def test_bad_arguments(tmp_path, suite, args, needles):
    base = ["audit", "--model", "world", "--suite", str(suite), "-n", "2", "--out", str(tmp_path / "run")]
    # later options override earlier ones in typer, so the bad value wins
    assert_one_line_error(run_cli(*base, *args), *needles)


def test_malformed_suite(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts: [unclosed")
    assert_one_line_error(run_cli("audit", "--suite", str(bad), "--out", str(tmp_path / "r")), "bad.yaml")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert_one_line_error(run_cli("audit", "--suite", str(empty), "--out", str(tmp_path / "r")), "empty.txt")


@pytest.mark.parametrize(
    "dist, needles",
    [
        ({"gender": {"female": 1.2, "male": -0.2}}, [">= 0", "-0.2"]),
        ({"gender": {"female": 0.7, "male": 0.7}}, ["sum"]),
        ({"gender": {"female": 0.5, "nonbinary": 0.5}}, ["nonbinary"]),
        ({"height": {"tall": 1.0}}, ["height"]),
    ],
)
def test_bad_world_spec(tmp_path, suite, dist, needles):
    spec = write_spec(tmp_path / "spec.yaml", {"nurse": dist})
    proc = run_cli("audit", "--model", "world", "--world-spec", str(spec), "--suite", str(suite), "-n", "2",
                   "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "nurse", *needles)


def test_malformed_spec_yaml(tmp_path, suite):
    spec = tmp_path / "spec.yaml"
    spec.write_text("default: {gender: [1, 2")
    proc = run_cli("audit", "--model", "world", "--world-spec", str(spec), "--suite", str(suite),
                   "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "spec.yaml")


def test_world_spec_with_another_model(tmp_path, suite):
    spec = write_spec(tmp_path / "spec.yaml", {})
    proc = run_cli("audit", "--model", "tiny", "--world-spec", str(spec), "--suite", str(suite), "--out", str(tmp_path / "r"))
    assert_one_line_error(proc, "--world-spec")


def test_output_path_that_is_a_file(tmp_path, suite):
    target = tmp_path / "taken"
    target.write_text("not a directory")
    proc = run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "2", "--out", str(target))
    assert_one_line_error(proc, "not a directory")
    assert target.read_text() == "not a directory"  # nothing of the user's lost


def test_resuming_with_other_settings_keeps_the_run(tmp_path, suite):
    out = tmp_path / "run"
    assert run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "3", "--out", str(out)).returncode == 0
    before = (out / "results.json").read_bytes()
    proc = run_cli("audit", "--model", "world", "--suite", str(suite), "-n", "3", "--seed", "9", "--out", str(out))
    assert_one_line_error(proc, "seed")
    assert (out / "results.json").read_bytes() == before


def test_unknown_option_and_command():
    assert_one_line_error(run_cli("audit", "--bogus"), "--bogus")
    assert_one_line_error(run_cli("frobnicate"), "frobnicate")


def test_help_and_models():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "audit" in proc.stdout
    proc = run_cli("models")
    assert proc.returncode == 0 and "world" in proc.stdout


def test_the_command_line_starts_without_torch_or_pandas():
    """`fairgen --help` should answer in well under a second: the CLI module tree may not import torch or
    pandas (seconds of import) before a command runs (issue 24's start-up target; benchmarks/cli_startup.py)."""
    import subprocess
    import sys

    code = "import sys, fairgen.cli; print(sorted({'torch', 'pandas', 'transformers'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
