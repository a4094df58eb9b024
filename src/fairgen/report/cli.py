"""Command functions behind `fairgen report` and `fairgen compare`; the main CLI registers them.

They take typer-annotated parameters so `app.command("report")(report_command)` gives the right --help,
and raise FairgenError for bad input (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .compare import FORMATS, compare_runs
from .html import read_run, render_report


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (`fairgen audit --out`).")],
) -> None:
    """Re-render RUN_DIR/report.html from the run's results, manifest and perception records."""
    read_run(run_dir, require_finished=True)  # refuse half-written runs before touching anything
    typer.echo(f"report: {render_report(run_dir)}")


def compare_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run directories, one table row each.")],
    format: Annotated[str, typer.Option("--format", help=f"Output format: {', '.join(FORMATS)}.")] = "md",
) -> None:
    """Print a table of suite-mean rd (with ci95), face rate and fidelity per run; for two runs on the
    same prompts, also their paired difference with a bootstrap ci95."""
    typer.echo(compare_runs(run_dirs, fmt=format), nl=False)
