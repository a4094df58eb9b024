"""`fairgen fix`: the typer command function `fix_command` (fairgen.cli mounts it as `app.command("fix")`)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..config import default
from ..models.registry import help_texts, spec_help
from ..models.sampling import preset_help
from .config import FixConfig

console = Console(stderr=True)
HELP = help_texts()


def D(name: str):  # noqa: N802  (reads like the constant it stands for)
    """FixConfig's default of a field: each default is written once, there (None: the family's recipe or
    the preset's, fix/recipes.py)."""
    return default(FixConfig, name)


RECIPE = "default: the model family's recipe (fix/recipes.py; docs/fix.md)"


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
    train_suite: Optional[str] = typer.Option(D("train_suite"), "--train-suite",
                                              help="Suite NAME:split the balanced set is built from, or several "
                                              "joined by commas; default: occupations:train, and for tiny with "
                                              "race also personal_descriptors:train (fix/recipes.py)."),
    test_suite: str = typer.Option(D("test_suite"), "--test-suite", help="Suite NAME:split audited before and after."),
    attributes: str = typer.Option(",".join(D("attributes")), help="Attributes to balance: gender, race, or 'gender,race' (mix)."),
    method: str = typer.Option(D("method"), help="bpo (stage 1 SFT, then stage 2 BPO), sft (text -> image SFT only), "
                               "understanding-sft (image -> text: captions), prompt (', any gender' appended; no "
                               "training) or all (the four, one table)."),
    out: Path = typer.Option(..., help="Fix run directory (re-run the same command to resume)."),
    data_source: Optional[str] = typer.Option(D("data_source"), "--data-source", help="Who draws the balanced set: "
                                              "model, world, diffusers:<id|dir> or folder:<dir> (<dir>/images/<explicit "
                                              "prompt id>/); default: world for tiny, model for the others."),
    perception: Optional[str] = typer.Option(None, help=HELP["perception"]),
    images_per_group: int = typer.Option(D("images_per_group"), "--images-per-group",
                                         help="Balanced-set images per prompt and group, before filtering."),
    check_concept: bool = typer.Option(D("check_concept"), "--check-concept", help="Also drop balanced-set images whose "
                                       "concept cue is not the prompt's (perception that reads one: world)."),
    train_prompts: Optional[int] = typer.Option(D("train_prompts"), "--train-prompts",
                                                help="Use at most this many training prompts (evenly spread)."),
    sft_steps: Optional[int] = typer.Option(D("sft_steps"), "--sft-steps", help=f"Stage 1 (SFT) steps; 0 skips it ({RECIPE})."),
    bpo_steps: Optional[int] = typer.Option(D("bpo_steps"), "--bpo-steps", help=f"Stage 2 steps, method bpo ({RECIPE})."),
    alpha: Optional[float] = typer.Option(D("alpha"), help=f"Stage 2 weight of the SFT loss (paper: 0; {RECIPE})."),
    beta: Optional[float] = typer.Option(D("beta"), help=f"Stage 2 weight of the BPO loss (paper: 1; {RECIPE})."),
    lr: Optional[float] = typer.Option(D("lr"), help=f"Peak learning rate of the LoRA weights ({RECIPE})."),
    bpo_lr: Optional[float] = typer.Option(D("bpo_lr"), "--bpo-lr", help="Stage 2's peak learning rate (default: "
                                           "--lr; paper preset 8e-7)."),
    anchor: Optional[float] = typer.Option(D("anchor"), help="Weight of an SFT term on the explicit prompts the balanced "
                                           "images were made from, in every stage: keeps explicit prompts followed (0: "
                                           "off, the paper; default 2 for gender alone, 3 with race)."),
    contrast: Optional[float] = typer.Option(D("contrast"), help="Weight of a term that keeps each explicit prompt "
                                             "telling its group's image from another group's as well as the model "
                                             "did before the fix, in every stage (0: off, the paper; default 3 for tiny "
                                             "with race, else 0)."),
    rank: Optional[int] = typer.Option(D("rank"), help=f"LoRA rank ({RECIPE}: 8; paper preset 32)."),
    lora_alpha: Optional[float] = typer.Option(D("lora_alpha"), "--lora-alpha", help="LoRA alpha (default 2 x rank; "
                                               "paper preset 32)."),
    units_per_batch: Optional[int] = typer.Option(D("units_per_batch"), "--units-per-batch",
                                                  help="Prompts per batch, each with one image of every group "
                                                  "(default 16 for tiny with race alone, else 8)."),
    val_concepts: int = typer.Option(D("val_concepts"), "--val-concepts", help="Training concepts held out for "
                                     "validation (0: no validation; fewer than half of the suite's concepts)."),
    val_images: int = typer.Option(D("val_images"), "--val-images", help="Images per validation prompt."),
    val_explicit_images: int = typer.Option(D("val_explicit_images"), "--val-explicit-images",
                                            help="Images per explicit validation prompt (every held-out concept and group)."),
    val_every: int = typer.Option(D("val_every"), "--val-every", help="Validate every K optimizer steps (and at 0 "
                                  "and the end)."),
    patience: int = typer.Option(D("patience"), help="Stop after this many validations without a better adapter (0: "
                                 "never)."),
    probe_suite: Optional[str] = typer.Option(D("probe_suite"), "--probe-suite", help="Balance probe: a suite the "
                                              "fix does not train on, audited at every validation; a step whose rd on "
                                              "it rises above step 0's 95% interval is not kept (default none; "
                                              "everyday_people is made for it: docs/fix.md)."),
    probe_images: int = typer.Option(D("probe_images"), "--probe-images", help="Images per balance-probe prompt "
                                     "(as a check suite's, so the probe sees what the generalisation guardrail "
                                     "would)."),
    keep: Optional[str] = typer.Option(D("keep"), help="Adapter kept: best (the validation's choice; default) or last "
                                       "(paper preset)."),
    target: str = typer.Option(D("target"), "--target",
                               help="Shares to balance toward: 'uniform' (the paper) or a targets YAML "
                               "(docs/metrics.md); the audits report the distance to it (tv, js)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when a guardrail of the verdict fails."),
    merge_for_audit: bool = typer.Option(D("merge_for_audit"), "--merge-for-audit/--no-merge-for-audit",
                                         help="Merge the adapter into the weights for the after audits (engine "
                                         "speed; restored exactly after)."),
    images_per_prompt: int = typer.Option(D("images_per_prompt"), "--images-per-prompt", "-n", help="Images per test prompt in the audits."),
    explicit_concepts: int = typer.Option(D("explicit_concepts"), "--explicit-concepts",
                                          help="Test prompts of the explicit-adherence check (0: none)."),
    explicit_images: int = typer.Option(D("explicit_images"), "--explicit-images", help="Images per explicit prompt in that check."),
    check_suites: str = typer.Option(",".join(D("check_suites")), "--check-suites",
                                     help="Other suites audited before and after, comma-separated ('none': no check)."),
    check_images: int = typer.Option(D("check_images"), "--check-images", help="Images per prompt of the check suites "
                                     "(64: noise floor of gender rd 0.099, of race 0.070)."),
    check_prompts: Optional[int] = typer.Option(D("check_prompts"), "--check-prompts",
                                                help="At most this many prompts per check suite (evenly spread)."),
    understanding_images: int = typer.Option(D("understanding_images"), "--understanding-images", help="Labelled world images of the "
                                             "understanding-accuracy check (0: none)."),
    quality: Optional[str] = typer.Option(D("quality"), help="A CLIP checkpoint (directory or hub id): the test-suite "
                                          "audits before and after also report CLIP score and CLIP-IQA, and the "
                                          "verdict checks that neither drops (docs/fix.md)."),
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
    preset: Optional[str] = typer.Option(None, help=preset_help() + "; for fix also the paper's training (alpha 0, "
                                         "beta 1, lr 1e-4 then 8e-7, LoRA rank 32 / alpha 32, no anchor, last adapter)."),
    batch_size: Optional[int] = typer.Option(D("batch_size"), "--batch-size", help=f"Images per generate() call "
                                             f"({RECIPE}: 256 for tiny, 64 otherwise; a family may split a call "
                                             "further to fit free memory)."),
) -> None:
    """Debias a model: balanced data, LoRA SFT then the balanced preference loss, and a before/after audit."""
    from ..distributed import launch_rank
    from ..models import parse_options
    from ..models.sampling import settings
    from . import table as fix_table
    from .config import METHODS, parse_attributes
    from .pipeline import fix
    from .report import REPORT_HTML, REPORT_JSON, REPORT_MD, markdown

    given = dict(locals())  # the options, by FixConfig's field names; those below need converting
    converted = {"attributes": parse_attributes(attributes), "check_suites": _suites(check_suites),
                 "sampling": settings(preset, cfg=cfg, temperature=temperature, top_p=top_p),
                 "before": str(before) if before else None, "model_options": parse_options(model_option or [])}
    config = FixConfig(**{f.name: converted[f.name] if f.name in converted else given[f.name]
                          for f in fields(FixConfig)})
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
        verdicts = {m: json.loads((out / m / REPORT_JSON).read_text())["verdict"] for m in METHODS}
        for m, v in verdicts.items():
            typer.echo(f"{m}: " + ("PASS" if v["passed"] else "FAIL ("
                       + "; ".join(g["name"] for g in v["guardrails"] if g["passed"] is False) + ")"))
        if strict and not all(v["passed"] for v in verdicts.values()):
            raise typer.Exit(1)
        return
    typer.echo(markdown(report), nl=False)
    adapter = f"adapter: {out / 'adapter'}  " if method != "prompt" else ""
    typer.echo(f"{adapter}report: {out / REPORT_JSON}, {out / REPORT_MD}, {out / REPORT_HTML}")
    if strict and not report["verdict"]["passed"]:
        raise typer.Exit(1)


def _suites(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'); 'none' or '' -> ()."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    return () if names in ((), ("none",)) else names
