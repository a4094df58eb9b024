"""The command function behind `fairgen locate`; the main CLI registers it (`app.command("locate")(locate_command)`).

Bad input raises FairgenError (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..models.registry import help_texts
from ..config import AuditConfig

console = Console(stderr=True)


class _StageProgress:
    """One rich progress bar per stage, created at the stage's first report (so input errors print alone)."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console)
            self.bar.start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def locate_command(
    model: Annotated[str, typer.Option(help=help_texts()["model"])],
    out: Annotated[Path, typer.Option(help="Output directory (re-run the same command to resume).")],
    suite: Annotated[str, typer.Option(help="Suite NAME[:split] or a suite file.")] = AuditConfig.suite,
    audit: Annotated[Path | None, typer.Option(
        help="A finished audit of this model on the suite to reuse; default: audit into OUT/audit.")] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-n",
                                                   help="Images per prompt of the audit run without --audit.")] = 64,
    labelled: Annotated[str | None, typer.Option(
        help="Labelled images for the tokenizer audit: world[:N] (default world:800 for families of world "
             "images; the first look), a CSV file,gender,race,age or a folder of class folders.")] = None,
    sequences: Annotated[int, typer.Option(help="Code sequences per prompt in the LM audit's first look.")] = 16,
    budget: Annotated[int, typer.Option(help="Looks per sampled component (tokenizer, LM): each doubles its "
                                             "samples until the verdict is decided, up to 2^(budget-1) times "
                                             "the first look's.")] = 6,
    perception: Annotated[str | None, typer.Option(help="Perception backend (default: the audit's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the audit, renders, sequences and bootstraps.")] = AuditConfig.seed,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per generate() call and per batch of the "
                                            "tokenizer audit.")] = AuditConfig.batch_size,
) -> None:
    """Locate the bias: understanding probe, partial alignment, vision tokenizer and language-model audits,
    and a verdict per component. Writes OUT/findings.json and OUT/locate.html."""
    from ..distributed import launch_rank
    from .pipeline import locate

    bars = _StageProgress()
    try:
        findings = locate(model, suite, out, audit=audit, images_per_prompt=images_per_prompt, labelled=labelled,
                          sequences=sequences, seed=seed, perception_backend=perception, batch_size=batch_size,
                          progress=bars, budget=budget)
    finally:
        bars.stop()
    if launch_rank() != 0:  # launched as several processes (docs/distributed.md): the main one speaks
        return
    v = findings["verdicts"]
    for key, name in (("understanding", "understanding"), ("tokenizer", "vision tokenizer"),
                      ("language_model", "language model")):
        effort = v[key].get("effort") or {}
        spent = ", ".join(f"{k} {val}" for k, val in effort.items() if val is not None and k != "exact")
        typer.echo(f"{name}: {v[key]['verdict']}" + (f" ({spent})" if spent else ""))
    typer.echo(v["headline"])
    typer.echo(f"findings: {out / 'findings.json'}  report: {out / 'locate.html'}")
