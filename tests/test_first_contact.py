"""Issue 24, first contact: --version, audit listed first, flags without a <bool> placeholder, help that wraps,
and report charts that fit (the start-up time is measured by benchmarks/cli_startup.py)."""

from __future__ import annotations

import subprocess
import sys

from conftest import run_cli

import fairgen


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"fairgen {fairgen.__version__}"


def test_audit_is_listed_first_and_help_wraps():
    for columns in ("80", "200"):
        out = _help(columns)
        commands = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 2
                    and line.split()[1].isalpha() and line[2] != " "]
        assert commands[:3] == ["audit", "calibrate", "models"], commands
        assert max(len(line) for line in out.splitlines()) <= int(columns)
    wide = _help("200")
    # a docstring's line break no longer cuts a sentence: the compare line reads on in one piece at 200 columns
    assert "for two runs on the same prompts, also their paired difference" in wide


def test_flags_have_no_bool_placeholder():
    out = subprocess.run([sys.executable, "-m", "fairgen", "suites", "show", "--help"], capture_output=True,
                         text=True, env=_env("120")).stdout
    assert "--json" in out and "<bool>" not in out
    assert "<bool>" not in _help("120")


def test_charts_keep_their_labels_and_explain_their_marks():
    """The gender panel's y labels stayed outside the figure with age-gender's two panels; the dashed line
    and the hatching now have a legend."""
    from fairgen.report.plots import ShareCharts

    for attrs in (["gender", "age"], ["gender", "race", "gender_x_race", "age"]):
        charts = ShareCharts(attrs)
        renderer = charts.canvas.get_renderer()
        for ax in charts.figure.axes:
            assert ax.get_tightbbox(renderer).x0 >= 0
        labels = [t.get_text() for t in charts.figure.legends[0].get_texts()]
        assert "share if balanced" in labels
        assert ("male (gender × race)" in labels) == ("gender_x_race" in attrs)


def _env(columns: str) -> dict:
    import os

    return dict(os.environ, COLUMNS=columns, TERM="dumb")


def _help(columns: str) -> str:
    return subprocess.run([sys.executable, "-m", "fairgen", "--help"], capture_output=True, text=True,
                          env=_env(columns)).stdout
