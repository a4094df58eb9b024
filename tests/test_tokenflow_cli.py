"""`fairgen audit`, `locate` and `fix` end to end through the CLI on the tiny TokenFlow checkpoint (CPU).
Random weights draw no faces, so the numbers are empty; what must hold is that every stage runs and says
what it could not do (TokenFlow has no understanding model here). `audit` runs as a user runs it (a
subprocess); `locate` and `fix` run the same Typer app in this process, which saves their start-up."""

from __future__ import annotations

import json

import pytest

from conftest import write_suite
from test_models_tokenflow import tokenflow_dir  # noqa: F401  (session fixture)


def invoke(*args: str):
    """The CLI in this process (the audit test runs it as a subprocess; torch is imported once here)."""
    from typer.testing import CliRunner

    from fairgen.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_suite(tmp_path_factory.mktemp("tf-suite") / "tf.yaml", ["nurse"])


def test_audit(tokenflow_dir, suite, tmp_path, cli):  # noqa: F811
    proc = cli(
        "audit",
        "--model",
        f"tokenflow:{tokenflow_dir}",
        "--suite",
        str(suite),
        "-n",
        "2",
        "--perception",
        "world",
        "--batch-size",
        "2",
        "--model-option",
        "dtype=fp32",
        "--out",
        str(tmp_path / "run"),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == f"tokenflow:{tokenflow_dir}"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["model_provenance"]["family"] == "tokenflow"


def test_locate(tokenflow_dir, suite, tmp_path):  # noqa: F811
    proc = invoke(
        "locate",
        "--model",
        f"tokenflow:{tokenflow_dir}",
        "--suite",
        str(suite),
        "-n",
        "2",
        "--perception",
        "world",
        "--labelled",
        "world:8",
        "--sequences",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "loc"),
    )
    assert proc.exit_code == 0, proc.output
    findings = json.loads((tmp_path / "loc" / "findings.json").read_text())
    assert {"tokenizer", "language_model", "verdicts"} <= set(findings) and "understanding" not in findings
    assert any("answers no questions" in n for n in findings["notes"])
    assert findings["tokenizer"]["probes"]["tokenizer"]["features"] == 40 * 8 * 8  # 16x16 grid pooled 2x2


def test_fix(tokenflow_dir, suite, tmp_path):  # noqa: F811
    proc = invoke(
        "fix",
        "--model",
        f"tokenflow:{tokenflow_dir}",
        "--train-suite",
        str(suite),
        "--test-suite",
        str(suite),
        "--method",
        "bpo",
        "--data-source",
        "world",
        "--perception",
        "world",
        "--images-per-group",
        "1",
        "--sft-steps",
        "2",
        "--bpo-steps",
        "2",
        "--units-per-batch",
        "2",
        "-n",
        "1",
        "--explicit-concepts",
        "0",
        "--check-suites",
        "none",
        "--understanding-images",
        "0",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--out",
        str(tmp_path / "fix"),
    )
    assert proc.exit_code == 0, proc.output
    assert (tmp_path / "fix" / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "fix" / "train_log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in log} == {"sft", "bpo"}


def test_bad_tokenflow_input_is_one_line(tokenflow_dir, suite, tmp_path):  # noqa: F811
    """A missing tokenizer file, or an understanding model, is one line and nothing written."""
    from fairgen.types import FairgenError

    for option, message in (
        ("tokenizer=/no/such.pt", "is not a file"),
        ("understanding=/x", "not supported"),
    ):
        out = tmp_path / option.partition("=")[0]
        result = invoke(
            "audit",
            "--model",
            f"tokenflow:{tokenflow_dir}",
            "--model-option",
            option,
            "--suite",
            str(suite),
            "-n",
            "1",
            "--perception",
            "world",
            "--out",
            str(out),
        )
        assert isinstance(result.exception, FairgenError), result.output
        assert message in str(result.exception) and "\n" not in str(result.exception)
        assert not out.exists()
