"""`fairgen tiny ...`: train and evaluate fairgen-tiny, plant a known tokenizer bias (typer app `tiny_app`,
the tiny family's commands: its registry entry names it and fairgen.cli mounts it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ...types import ATTRIBUTES, FairgenError

tiny_app = typer.Typer(
    help="fairgen-tiny: a small unified multimodal LLM trained on the synthetic world.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@tiny_app.command()
def train(
    spec: Path | None = typer.Option(None, help="Planted-bias world spec YAML (default: the packaged spec)."),
    out: Path = typer.Option(
        ..., help="Checkpoint directory to write (config.json, *.safetensors, train_log.jsonl)."
    ),
    recipe: str = typer.Option(
        "full", help="Recipe: 'full' (a GPU), 'anneal' (with --init-from: continue a full run at a lower "
        "learning rate), 'adherence' (with --init-from: more explicit, counter-stereotype requests), "
        "'adherence-cpu' then 'settle-cpu' (the same in minutes on a CPU; docs/tiny.md says which recipes "
        "made the shipped model) or 'smoke' (tiny, CPU)."
    ),
    steps: int | None = typer.Option(None, help="Language-model steps (default: the recipe's)."),
    tokenizer_steps: int | None = typer.Option(
        None, "--tokenizer-steps", help="Tokenizer steps (default: the recipe's)."
    ),
    tokenizer_from: Path | None = typer.Option(
        None, "--tokenizer-from", help="Reuse this checkpoint's tokenizer; skip stage 1."
    ),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="Continue training this checkpoint (its tokenizer and language model)."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda (bf16 autocast on cuda)."),
    seed: int = typer.Option(0, help="Seed of everything random in the run."),
    top_p: float | None = typer.Option(
        None, "--top-p", help="Default nucleus threshold the checkpoint records (config.json `sampling`); "
        "generate() uses it unless told otherwise. Default: --init-from's, else none."
    ),
) -> None:
    """Train the vision tokenizer, then the language model, on data drawn from a world spec."""
    from .train import RECIPES
    from .train import train as run_train

    if recipe not in RECIPES:
        raise FairgenError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if (steps is not None and steps < 1) or (tokenizer_steps is not None and tokenizer_steps < 1):
        raise FairgenError("--steps and --tokenizer-steps must be >= 1")
    r = RECIPES[recipe]
    r = replace(r, lm_steps=steps or r.lm_steps, tok_steps=tokenizer_steps or r.tok_steps)
    if recipe == "full" and device == "cpu":
        console.print(
            "[yellow]note: the full recipe is sized for a GPU (--device cuda); on a CPU it takes hours[/]"
        )
    with _progress() as progress:
        tasks: dict[str, int] = {}

        def bar(name: str, total: int):
            tasks[name] = progress.add_task(name, total=total, loss="")
            return lambda n: progress.advance(tasks[name], n)

        shown = {"loss": "", "gain": ""}

        def echo(record: dict) -> None:
            name = "tokenizer" if record["stage"] == "tokenizer" else "language model"
            if "text_gain" in record:
                shown["gain"] = f"  text gain {record['text_gain']:.3f}"
            else:
                shown["loss"] = f"loss {record['loss']:.4f}"
            if name in tasks:
                progress.update(tasks[name], loss=shown["loss"] + shown["gain"])

        model = run_train(
            spec,
            out,
            r,
            seed=seed,
            device=device,
            tokenizer_from=tokenizer_from,
            init_from=init_from,
            echo=echo,
            progress_factory=bar,
            sampling=None if top_p is None else {"top_p": top_p},
        )
    console.print(f"saved {model.spec} ({model.training['train_seconds']} s); log: {out / 'train_log.jsonl'}")


@tiny_app.command("eval")
def evaluate_cmd(
    model: Path | None = typer.Option(None, help="Checkpoint directory (default: the packaged model)."),
    spec: Path | None = typer.Option(None, help="The world spec it was trained on (default: packaged)."),
    images: int = typer.Option(64, help="Images per test prompt."),
    concepts: int = typer.Option(50, help="Test occupations to use (of 50)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    out: Path | None = typer.Option(None, help="Also write the numbers to this JSON file."),
) -> None:
    """Measure the acceptance numbers with the world reader: face rate, cue match, shares vs spec,
    explicit prompts, understanding accuracy, blank-image probe, tokenizer round trips."""
    from ...world import WorldSpec
    from .adapter import load
    from .evaluate import evaluate

    if images < 4 or not 1 <= concepts <= 50:
        raise FairgenError("--images must be >= 4 and --concepts in 1..50")
    tiny = load(model, device=device)
    ws = WorldSpec.load(spec) if spec else WorldSpec.default()
    with console.status("evaluating") as status:
        numbers = evaluate(
            tiny,
            ws,
            images=images,
            concepts=concepts,
            progress=lambda stage: status.update(f"evaluating: {stage} done"),
        )
    text = json.dumps(numbers, indent=2)
    if out:
        out.write_text(text + "\n")
    typer.echo(text)


@tiny_app.command("plant-tokenizer-bias")
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
