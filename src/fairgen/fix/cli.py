"""`fairgen fix`: the typer command function `fix_command` (fairgen.cli mounts it as `app.command("fix")`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..config import default
from ..models.registry import help_texts, spec_help
from ..models.sampling import preset_help
from .pipeline import FixConfig

console = Console(stderr=True)
HELP = help_texts()


def D(name: str):  # noqa: N802  (reads like the constant it stands for)
    """FixConfig's default of a field: each default is written once, there."""
    return default(FixConfig, name)


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
    model: str = typer.Option(..., help=f"Model spec to fix (needs LoRA): {spec_help('lora')}."),
    train_suite: str = typer.Option(D("train_suite"), "--train-suite",
                                    help="Suite NAME:split the balanced set is built from."),
    test_suite: str = typer.Option(D("test_suite"), "--test-suite", help="Suite NAME:split audited before and after."),
    attributes: str = typer.Option(",".join(D("attributes")), help="Attributes to balance: gender, race, or 'gender,race' (mix)."),
    method: str = typer.Option(D("method"), help="bpo (stage 1 SFT, then stage 2 BPO), sft (text -> image SFT only), "
                               "understanding-sft (image -> text: captions), prompt (', any gender' appended; no "
                               "training) or all (the four, one table)."),
    out: Path = typer.Option(..., help="Fix run directory (re-run the same command to resume)."),
    data_source: str = typer.Option(D("data_source"), "--data-source", help="Who draws the balanced set: model, world, "
                                    "diffusers:<id|dir> or folder:<dir> (<dir>/images/<explicit prompt id>/)."),
    perception: Optional[str] = typer.Option(None, help=HELP["perception"]),
    images_per_group: int = typer.Option(D("images_per_group"), "--images-per-group",
                                         help="Balanced-set images per prompt and group, before filtering."),
    check_concept: bool = typer.Option(D("check_concept"), "--check-concept", help="Also drop balanced-set images whose "
                                       "concept cue is not the prompt's (perception that reads one: world)."),
    train_prompts: Optional[int] = typer.Option(D("train_prompts"), "--train-prompts",
                                                help="Use at most this many training prompts (evenly spread)."),
    sft_steps: int = typer.Option(D("sft_steps"), "--sft-steps", help="Stage 1 (SFT) steps; 0 skips it."),
    bpo_steps: int = typer.Option(D("bpo_steps"), "--bpo-steps", help="Stage 2 steps (method bpo)."),
    alpha: float = typer.Option(D("alpha"), help="Stage 2 weight of the SFT loss (paper: 0)."),
    beta: float = typer.Option(D("beta"), help="Stage 2 weight of the BPO loss (paper: 1)."),
    lr: float = typer.Option(D("lr"), help="Peak learning rate of the LoRA weights."),
    anchor: float = typer.Option(D("anchor"), help="Weight of an SFT term on the explicit prompts the balanced images "
                                 "were made from, in every stage: keeps explicit prompts followed (0: off, the paper)."),
    rank: int = typer.Option(D("rank"), help="LoRA rank (LoRA alpha = 2 x rank)."),
    units_per_batch: int = typer.Option(D("units_per_batch"), "--units-per-batch",
                                        help="Prompts per batch, each with one image of every group."),
    images_per_prompt: int = typer.Option(D("images_per_prompt"), "--images-per-prompt", "-n", help="Images per test prompt in the audits."),
    explicit_concepts: int = typer.Option(D("explicit_concepts"), "--explicit-concepts",
                                          help="Test prompts of the explicit-adherence check (0: none)."),
    explicit_images: int = typer.Option(D("explicit_images"), "--explicit-images", help="Images per explicit prompt in that check."),
    check_suites: str = typer.Option(",".join(D("check_suites")), "--check-suites",
                                     help="Other suites audited before and after, comma-separated ('none': no check)."),
    check_images: int = typer.Option(D("check_images"), "--check-images", help="Images per prompt of the check suites."),
    check_prompts: Optional[int] = typer.Option(D("check_prompts"), "--check-prompts",
                                                help="At most this many prompts per check suite (evenly spread)."),
    understanding_images: int = typer.Option(D("understanding_images"), "--understanding-images", help="Labelled world images of the "
                                             "understanding-accuracy check (0: none)."),
    before: Optional[Path] = typer.Option(None, "--before", help="Folder of the before audits, to share between "
                                          "fix runs (default: OUT/before)."),
    device: Optional[str] = typer.Option(None, help="Device of the model: cpu, cuda, cuda:1 (default: the "
                                         "family's; `fairgen models`)."),
    dtype: Optional[str] = typer.Option(None, help="The dtype option of families that take one: bf16, fp16, fp32 "
                                        "(= --model-option dtype=...)."),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help=HELP["options"]),
    gradient_checkpointing: bool = typer.Option(D("gradient_checkpointing"), "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="Recompute decoder layers in backward (models whose LoRA "
                                                "root supports it: the transformers families)."),
    seed: int = typer.Option(D("seed"), help="Seed of images, batches and LoRA initialisation."),
    cfg: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (generation)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    preset: Optional[str] = typer.Option(None, help=preset_help()),
    batch_size: int = typer.Option(D("batch_size"), "--batch-size", help="Images per generate() call (a family may split a call "
                                   "further to fit free memory)."),
) -> None:
    """Debias a model: balanced data, LoRA SFT then the balanced preference loss, and a before/after audit."""
    from ..distributed import launch_rank
    from ..models import parse_options
    from ..models.sampling import settings
    from . import table as fix_table
    from .pipeline import fix, parse_attributes
    from .report import REPORT_JSON, REPORT_MD, markdown

    sampling = settings(preset, cfg=cfg, temperature=temperature, top_p=top_p)
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
