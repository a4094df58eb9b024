"""Command functions behind `fairgen report` and `fairgen compare`; the main CLI registers them.

They take typer-annotated parameters so `app.command("report")(report_command)` gives the right --help,
and raise FairgenError for bad input (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
    rank_by: Annotated[Optional[str], typer.Option(
        "--rank-by", metavar="METRIC[:ATTRIBUTE]",
        help="Order the runs best first by a suite metric: per attribute rd, kl, entropy (higher is fairer), "
             "mad, disparity, tv, js, rd_population, rd_corrected, rd_corrected_population (lower is fairer; "
             "the attribute defaults to the first the runs share: gender, race, gender_x_race, age), or of "
             "the run clip_score, clip_iqa, fidelity, face_rate (higher is better). E.g. mad:race.")] = None,
) -> None:
    """Print a table of suite-mean rd (with ci95), face rate and fidelity per run; for two runs on the
    same prompts, also their paired difference with a bootstrap ci95. --rank-by orders the runs best first
    by any suite metric (docs/metrics.md, "Ranking runs")."""
    from .compare import compare_runs, compare_warnings
    from .html import read_run

    table = compare_runs(run_dirs, fmt=format, rank_by=rank_by)
    for note in compare_warnings([read_run(d)[0] for d in run_dirs]):
        print(f"warning: {note}", file=sys.stderr)
    typer.echo(table, nl=False)
