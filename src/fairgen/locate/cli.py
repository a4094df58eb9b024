"""Command functions behind `fairgen locate` and `fairgen tiny plant-tokenizer-bias`; the main CLI registers
them (`app.command("locate")(locate_command)`, `tiny_app.command("plant-tokenizer-bias")(plant_command)`).

Bad input raises FairgenError (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..types import ATTRIBUTES, FairgenError

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
    model: Annotated[str, typer.Option(help="Model spec: tiny[:<dir>], janus:<id|dir>, emu3:<id|dir>, tokenflow:<dir>, ...")],
    out: Annotated[Path, typer.Option(help="Output directory (re-run the same command to resume).")],
    suite: Annotated[str, typer.Option(help="Suite NAME[:split] or a suite file.")] = "occupations:test",
    audit: Annotated[Path | None, typer.Option(
        help="A finished audit of this model on the suite to reuse; default: audit into OUT/audit.")] = None,
    images_per_prompt: Annotated[int, typer.Option("--images-per-prompt", "-n",
                                                   help="Images per prompt of the audit run without --audit.")] = 64,
    labelled: Annotated[str | None, typer.Option(
        help="Labelled images for the tokenizer audit: world[:N] (default world:800 for tiny/world), a CSV "
             "file,gender,race,age or a folder of class folders.")] = None,
    sequences: Annotated[int, typer.Option(help="Code sequences per prompt and variant in the LM audit.")] = 16,
    perception: Annotated[str | None, typer.Option(help="Perception backend (default: the audit's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the audit, renders, sequences and bootstraps.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.")] = 64,
) -> None:
    """Locate the bias: understanding probe, partial alignment, vision tokenizer and language-model audits,
    and a verdict per component. Writes OUT/findings.json and OUT/locate.html."""
    from ..distributed import launch_rank
    from .pipeline import locate

    bars = _StageProgress()
    try:
        findings = locate(model, suite, out, audit=audit, images_per_prompt=images_per_prompt, labelled=labelled,
                          sequences=sequences, seed=seed, perception_backend=perception, batch_size=batch_size,
                          progress=bars)
    finally:
        bars.stop()
    if launch_rank() != 0:  # launched as several processes (docs/distributed.md): the main one speaks
        return
    v = findings["verdicts"]
    for key, name in (("understanding", "understanding"), ("tokenizer", "vision tokenizer"),
                      ("language_model", "language model")):
        typer.echo(f"{name}: {v[key]['verdict']}")
    typer.echo(v["headline"])
    typer.echo(f"findings: {out / 'findings.json'}  report: {out / 'locate.html'}")


def plant_command(
    model: Annotated[Path, typer.Option(help="fairgen-tiny checkpoint directory to start from.")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    attribute: Annotated[str, typer.Option(help="Attribute whose class the decoder changes.")] = "gender",
    source: Annotated[str, typer.Option("--from", help="Class that is changed on reconstruction.")] = "female",
    target: Annotated[str, typer.Option("--to", help="Class it is changed into.")] = "male",
    only: Annotated[list[str] | None, typer.Option(help="Restrict to renders of ATTR=CLASS (repeatable); default "
                                                        "age=young; give 'all' for every source render.")] = None,
    steps: Annotated[int, typer.Option(help="Decoder fine-tuning steps.")] = 600,
    seed: Annotated[int, typer.Option(help="Seed of the renders and the fine-tuning.")] = 0,
) -> None:
    """Fine-tune a fairgen-tiny checkpoint's vision decoder so one group decodes as another (a planted,
    known tokenizer bias for `fairgen locate`); the encoder and the language model are unchanged."""
    from .plant import plant_tokenizer_bias

    conditions: dict[str, str] = {}
    for item in only or ["age=young"]:
        if item == "all":
            continue
        attr, eq, cls = item.partition("=")
        if not eq or attr not in ATTRIBUTES:
            raise FairgenError(f"--only {item!r}: expected ATTR=CLASS, e.g. age=young")
        conditions[attr] = cls
    with console.status("planting the tokenizer bias"):
        planted = plant_tokenizer_bias(model, out, attribute, source, target, conditions, steps=steps, seed=seed)
    info = planted.training["planted_tokenizer_bias"]
    typer.echo(f"saved {planted.spec}: {attribute} {source} -> {target} where {conditions or 'always'} "
               f"(final loss {info['final_loss']}, {info['seconds']} s)")
