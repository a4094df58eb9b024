"""Command functions behind `fairgen report` and `fairgen compare`; the main CLI registers them.

They take typer-annotated parameters so `app.command("report")(report_command)` gives the right --help,
and raise FairgenError for bad input (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import sys

import typer

from . import FORMATS


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (`fairgen audit --out`).")],
) -> None:
    """Re-render RUN_DIR/report.html from the run's results, manifest and perception records."""
    from .html import read_run, render_report

    read_run(run_dir, require_finished=True)  # refuse half-written runs before touching anything
    typer.echo(f"report: {render_report(run_dir)}")


def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run directories, one table row each.")],
    format: Annotated[str, typer.Option("--format", help=f"Output format: {', '.join(FORMATS)}.")] = "md",
) -> None:
    """Print a table of suite-mean rd (with ci95), face rate and fidelity per run; for two runs on the
    same prompts, also their paired difference with a bootstrap ci95."""
    from .compare import compare_runs, compare_warnings
    from .html import read_run

    table = compare_runs(run_dirs, fmt=format)
    for note in compare_warnings([read_run(d)[0] for d in run_dirs]):
        print(f"warning: {note}", file=sys.stderr)
    typer.echo(table, nl=False)
