"""`fairgen fix`: the typer command function `fix_command` (fairgen.cli mounts it as `app.command("fix")`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..types import FairgenError
from .checks import DEFAULT_CHECK_SUITES

console = Console(stderr=True)
# The paper's sampling (as `fairgen audit --preset paper`).
PRESETS = {"paper": {"cfg": 3.0, "temperature": 0.9, "top_p": 0.6}}


class _Bars:
    """One rich progress bar per task name, started at the first report (so input errors print cleanly)."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.tasks: dict[str, int] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        if self.progress is None:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=console)
            self.progress.start()
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def fix_command(
    model: str = typer.Option(..., help="Model spec to fix (needs LoRA): tiny[:<dir>], janus:<id|dir>, emu3:<id|dir>, tokenflow:<dir>."),
    train_suite: str = typer.Option("occupations:train", "--train-suite",
                                    help="Suite NAME:split the balanced set is built from."),
    test_suite: str = typer.Option("occupations:test", "--test-suite", help="Suite NAME:split audited before and after."),
    attributes: str = typer.Option("gender", help="Attributes to balance: gender, race, or 'gender,race' (mix)."),
    method: str = typer.Option("bpo", help="bpo (stage 1 SFT, then stage 2 BPO), sft (text -> image SFT only), "
                               "understanding-sft (image -> text: captions), prompt (', any gender' appended; no "
                               "training) or all (the four, one table)."),
    out: Path = typer.Option(..., help="Fix run directory (re-run the same command to resume)."),
    data_source: str = typer.Option("model", "--data-source", help="Who draws the balanced set: model, world, "
                                    "diffusers:<id|dir> or folder:<dir> (<dir>/images/<explicit prompt id>/)."),
    perception: Optional[str] = typer.Option(None, help="Perception backend (default: world for tiny)."),
    images_per_group: int = typer.Option(4, "--images-per-group",
                                         help="Balanced-set images per prompt and group, before filtering."),
    check_concept: bool = typer.Option(False, "--check-concept", help="Also drop balanced-set images whose "
                                       "concept cue is not the prompt's (perception that reads one: world)."),
    train_prompts: Optional[int] = typer.Option(None, "--train-prompts",
                                                help="Use at most this many training prompts (evenly spread)."),
    sft_steps: int = typer.Option(100, "--sft-steps", help="Stage 1 (SFT) steps; 0 skips it."),
    bpo_steps: int = typer.Option(100, "--bpo-steps", help="Stage 2 steps (method bpo)."),
    alpha: float = typer.Option(0.0, help="Stage 2 weight of the SFT loss (paper: 0)."),
    beta: float = typer.Option(1.0, help="Stage 2 weight of the BPO loss (paper: 1)."),
    lr: float = typer.Option(3e-4, help="Peak learning rate of the LoRA weights."),
    anchor: float = typer.Option(0.0, help="Weight of an SFT term on the explicit prompts the balanced images "
                                 "were made from, in every stage: keeps explicit prompts followed (0: off, the paper)."),
    rank: int = typer.Option(8, help="LoRA rank (LoRA alpha = 2 x rank)."),
    units_per_batch: int = typer.Option(8, "--units-per-batch",
                                        help="Prompts per batch, each with one image of every group."),
    images_per_prompt: int = typer.Option(160, "--images-per-prompt", "-n", help="Images per test prompt in the audits."),
    explicit_concepts: int = typer.Option(5, "--explicit-concepts",
                                          help="Test prompts of the explicit-adherence check (0: none)."),
    explicit_images: int = typer.Option(32, "--explicit-images", help="Images per explicit prompt in that check."),
    check_suites: str = typer.Option(",".join(DEFAULT_CHECK_SUITES), "--check-suites",
                                     help="Other suites audited before and after, comma-separated ('none': no check)."),
    check_images: int = typer.Option(16, "--check-images", help="Images per prompt of the check suites."),
    check_prompts: Optional[int] = typer.Option(50, "--check-prompts",
                                                help="At most this many prompts per check suite (evenly spread)."),
    understanding_images: int = typer.Option(64, "--understanding-images", help="Labelled world images of the "
                                             "understanding-accuracy check (0: none)."),
    before: Optional[Path] = typer.Option(None, "--before", help="Folder of the before audits, to share between "
                                          "fix runs (default: OUT/before)."),
    device: Optional[str] = typer.Option(None, help="Device of the model: cpu, cuda, cuda:1 (default: the "
                                         "model's: tiny cpu, janus / emu3 cuda when present)."),
    dtype: Optional[str] = typer.Option(None, help="Weights of janus / emu3: bf16, fp16, fp32 (default bf16 on "
                                        "GPU, fp32 on CPU)."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help="KEY=VALUE option of the "
                                                     "model's family, repeatable (emu3: image_area=65536)."),
    gradient_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Recompute decoder layers in backward (janus / emu3)."),
    seed: int = typer.Option(0, help="Seed of images, batches and LoRA initialisation."),
    cfg: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (generation)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    preset: Optional[str] = typer.Option(None, help="'paper' = cfg 3.0, temperature 0.9, top-p 0.6."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per generation batch."),
) -> None:
    """Debias a model: balanced data, LoRA SFT then the balanced preference loss, and a before/after audit."""
    from ..distributed import launch_rank
    from ..models import parse_options
    from . import table as fix_table
    from .pipeline import FixConfig, fix, parse_attributes
    from .report import REPORT_JSON, REPORT_MD, markdown

    sampling: dict[str, float] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FairgenError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        sampling.update(PRESETS[preset])
    for key, value in (("cfg", cfg), ("temperature", temperature), ("top_p", top_p)):
        if value is not None:
            sampling[key] = value
    config = FixConfig(
        model=model, train_suite=train_suite, test_suite=test_suite, attributes=parse_attributes(attributes),
        method=method, data_source=data_source, perception=perception, images_per_group=images_per_group,
        check_concept=check_concept, train_prompts=train_prompts, sft_steps=sft_steps, bpo_steps=bpo_steps,
        alpha=alpha, beta=beta, anchor=anchor, lr=lr, rank=rank, units_per_batch=units_per_batch, images_per_prompt=images_per_prompt,
        explicit_concepts=explicit_concepts, explicit_images=explicit_images, seed=seed, sampling=sampling,
        batch_size=batch_size, before=str(before) if before else None, check_suites=_suites(check_suites),
        check_images=check_images, check_prompts=check_prompts, understanding_images=understanding_images,
        device=device, dtype=dtype, model_options=parse_options(model_option or []),
        gradient_checkpointing=gradient_checkpointing)
    bars = _Bars()
    try:
        report = fix(config, out, progress=bars)
    finally:
        bars.stop()
    if launch_rank() != 0:  # launched as several processes: the main one speaks
        return
    if method == "all":
        typer.echo(fix_table.markdown(report), nl=False)
        typer.echo(f"table: {out / fix_table.TABLE_JSON}, {out / fix_table.TABLE_MD}; each method in {out}/<method>/")
        return
    typer.echo(markdown(report), nl=False)
    adapter = f"adapter: {out / 'adapter'}  " if method != "prompt" else ""
    typer.echo(f"{adapter}report: {out / REPORT_JSON}, {out / REPORT_MD}")


def _suites(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'); 'none' or '' -> ()."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    return () if names in ((), ("none",)) else names
