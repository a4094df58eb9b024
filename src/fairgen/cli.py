"""The `fairgen` command line (docs/architecture.md, "Stages and data flow"). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__, models
from .config import AuditConfig
from .distributed import SharedError, launch_rank
from .models.registry import builtins, help_texts, resolve
from .models.sampling import preset_help
from .types import FairgenError

app = typer.Typer(
    help="Audit and debias image generation in unified multimodal LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fairgen {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print fairgen's version and exit."),
) -> None:
    """Audit and debias image generation in unified multimodal LLMs."""


console = Console(stderr=True)
HELP = help_texts()
BATCH_HELP = "Images per generate() call (a family may split a call further to fit free memory)."
DEVICE_HELP = "Device of the model: cpu, cuda, cuda:1 (default: the family's; `fairgen models`)."


class _LazyProgress:
    """A rich progress bar that appears at the first progress report, so that input errors found
    before any work starts print as one clean line. Call it as progress(done, total)."""

    def __init__(self, description: str):
        self.description = description
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=total)
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> "_LazyProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@app.command()
def audit(
    model: str = typer.Option(AuditConfig.model, help=HELP["model"]),
    suite: str = typer.Option(AuditConfig.suite, help="Suite NAME[:split] or a suite file."),
    images_per_prompt: int = typer.Option(AuditConfig.images_per_prompt, "--images-per-prompt", "-n",
                                          help="Images per prompt."),
    seed: int = typer.Option(AuditConfig.seed, help="Run seed; image seeds derive from (seed, prompt id, sample)."),
    perception: Optional[str] = typer.Option(None, help=HELP["perception"]),
    world_spec: Optional[Path] = typer.Option(None, "--world-spec", help="Planted-bias YAML for --model world."),
    cfg: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    preset: Optional[str] = typer.Option(None, help=preset_help()),
    batch_size: int = typer.Option(AuditConfig.batch_size, "--batch-size", help=BATCH_HELP),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    out: Path = typer.Option(..., help="Run directory (re-run the same command to resume)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A peft LoRA adapter directory to apply to the model."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", help="CAL.json from `fairgen calibrate` for this perception: adds corrected "
        "estimates."
    ),
    model_option: Optional[list[str]] = typer.Option(None, "--model-option", help=HELP["options"]),
    target: str = typer.Option(AuditConfig.target, help="Shares the model should produce: 'uniform' or a "
                               "targets YAML (docs/metrics.md); distances to it (tv, js) are reported."),
    quality: Optional[str] = typer.Option(None, help="A CLIP checkpoint (directory or hub id): adds CLIP score "
                                          "and CLIP-IQA per image and per prompt (docs/metrics.md)."),
) -> None:
    """Generate images per prompt, perceive gender / race / age, and measure skew with intervals."""
    from .audit import run
    from .models.sampling import settings

    config = AuditConfig(model=model, suite=suite, images_per_prompt=images_per_prompt, seed=seed,
                         perception=perception, sampling=settings(preset, cfg=cfg, temperature=temperature, top_p=top_p),
                         batch_size=batch_size, device=device, model_options=models.parse_options(model_option or []),
                         world_spec=world_spec, adapter=adapter, calibration=calibration, target=target,
                         quality=quality)
    with _LazyProgress("audit") as progress:
        result = run(config, out, progress)
    if launch_rank() == 0:  # launched as several processes (docs/distributed.md): the main one speaks
        _print_summary(result.results)
        typer.echo(f"results: {out / 'results.json'}  table: {out / 'results.csv'}  report: {out / 'report.html'}")


def _print_summary(results: dict) -> None:
    from rich.table import Table

    s = results["summary"]
    calibrated = "calibration" in results  # corrected columns only then: uncalibrated output is unchanged
    table = Table(title=f"{results['model']} on {results['suite']} ({results['images_per_prompt']} images/prompt asked)")
    columns = ("attribute", "rd (Shen)", "ci95", "noise floor", "population rd", "ci95", "kl", "entropy")
    for col in columns + (("corrected rd", "population", "ci95") if calibrated else ()):
        table.add_column(col)
    for attr in ("gender", "race", "gender_x_race", "age"):
        m = s.get(attr)
        if m is None:
            table.add_row(attr, "not measured", *[""] * (len(table.columns) - 2))
            continue
        rd = m["rd"]
        pop = m.get("rd_population") or {"estimate": None, "ci95": None}
        corrected = m.get("rd_corrected") or {"mean": None}
        cpop = m.get("rd_corrected_population") or {"estimate": None, "ci95": None}
        table.add_row(
            attr, _f(rd["mean"]), _ci(rd["ci95"]), _f(rd["noise_floor"]), _f(pop["estimate"]), _ci(pop["ci95"]),
            _f(m["kl"]["mean"]), _f(m["entropy"]["mean"]),
            *((_f(corrected["mean"]), _f(cpop["estimate"]), _ci(cpop["ci95"])) if calibrated else ()),
        )
    Console().print(table)
    goal = results.get("target") or {}
    if goal.get("name", "uniform") != "uniform":
        lines = [f"{a} tv {_f(s[a]['tv']['mean'])} {_ci(s[a]['tv']['ci95'])}  js {_f(s[a]['js']['mean'])}"
                 for a in ("gender", "race", "gender_x_race", "age") if s.get(a)]
        typer.echo(f"distance to target {goal['name']}: " + "; ".join(lines))
    q = (results.get("quality") or {}).get("suite") or {}
    if q:
        typer.echo("quality: " + "  ".join(f"{m} {_f(v['mean'])} {_ci(v['ci95'])}" for m, v in q.items()))
    fid = s.get("fidelity")
    typer.echo(f"images {s.get('n_images', '?')}, unreadable {s.get('n_unreadable', 0)}  face rate {_f(s['face_rate'])}"
               + (f"  fidelity ({fid['metric']}) {_f(fid['value'])}" if fid else "")
               + ("  (rates over readable images)" if s.get("n_unreadable") else ""))
    typer.echo("population rd: bias-aware estimate of the rd of the model's distribution, with a ci95 for it "
               "(docs/intervals.md); rd (Shen) is the plain value of the sample, biased upward near balance.")
    from .report.html import folder_warnings

    for line in folder_warnings(results):
        typer.echo(f"warning: {line}", err=True)
    sampling = results.get("effective_sampling")
    if sampling:
        typer.echo("sampling: " + ", ".join(f"{k} {v}" for k, v in sampling.items()))


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(pair: list | None) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]" if pair else "–"


@app.command()
def calibrate(
    perception: str = typer.Option(..., help="Perception backend to calibrate (as for audit --perception)."),
    labelled: str = typer.Option(
        ..., help="Labelled faces: world[:N] (N balanced world renders, default 2000), a CSV "
        "file,gender,race,age, or a folder of class folders (<gender>_<race>/, <class>/)."
    ),
    out: Path = typer.Option(..., help="Calibration file to write (CAL.json)."),
    seed: int = typer.Option(0, help="Seed of the world renders (world[:N] only)."),
    batch_size: int = typer.Option(AuditConfig.batch_size, "--batch-size", help="Images per perception batch."),
) -> None:
    """Measure a perception backend's confusion and detection rates on labelled faces, for --calibration."""
    from .calibrate import calibrate as run_calibrate

    with _LazyProgress("calibrate") as progress:
        cal = run_calibrate(perception, labelled, out=out, batch_size=batch_size, seed=seed,
                            progress=progress)
    from rich.table import Table

    for attr, block in cal.blocks.items():
        table = Table(title=f"{attr}: condition number {block.condition_number:.2f}")
        for col in ("true class", "labelled", "faces found", "detection rate", "accuracy"):
            table.add_column(col)
        for c, n, found, rate, acc in zip(block.classes, block.n_labelled, block.n_detected,
                                           block.detection_rate, block.accuracy):
            table.add_row(c, str(n), str(found), _f(rate), _f(acc))
        Console().print(table)
    typer.echo(f"calibration of {cal.backend} on {cal.n_images} labelled images "
               f"({cal.n_unreadable} unreadable): {out}")


@app.command("models")
def list_models(
    as_json: bool = typer.Option(False, "--json", help="Print the model registry as JSON (no perception table)."),
) -> None:
    """List model families and perception backends: spec syntax, capabilities, options, what each needs,
    usable here or not."""
    import json

    from rich.table import Table
    from rich.text import Text

    from . import perception as perception_backends
    from .models import describe

    rows = describe()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Model families (--model)")
    for col in ("spec", "description", "capabilities", "options", "needs", "usable here", "note"):
        table.add_column(col, overflow="fold")
    for row in rows:
        options = "; ".join(f"{k}: {v}" for k, v in row["options"].items())
        table.add_row(*(Text(str(v)) for v in (row["spec"], row["description"], ", ".join(row["capabilities"]),
                                                  options, row["requirements"], "yes" if row["usable"] else "no",
                                                  row["note"])))
    Console().print(table)
    table = Table(title="Perception backends (--perception)")
    table.add_column("backend")
    table.add_column("what it does", overflow="fold")
    for name, text in perception_backends.BACKENDS.items():
        table.add_row(Text(name), Text(text))
    Console().print(table)


def _fail(message: str, shared: bool = False) -> None:
    """One line on stderr (never wrapped by a console), exit code 2. A `shared` error, one that every
    process of a launch stops with (docs/distributed.md), is printed by rank 0 alone."""
    if not shared or launch_rank() == 0:
        print("error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(2)


def _register() -> None:
    """The other commands, after audit, calibrate and models (the order `fairgen --help` lists them in)."""
    from .fix.cli import fix_command
    from .locate.cli import locate_command
    from .report.cli import compare_command, report_command
    from .suites.cli import suites_app

    app.command("report")(report_command)
    app.command("compare")(compare_command)
    app.command("locate")(locate_command)
    app.command("fix")(fix_command)
    app.add_typer(suites_app, name="suites")
    for family in builtins().values():  # a family's own commands: `fairgen tiny train`, ...
        if family.commands:
            app.add_typer(resolve(family.commands, family.name), name=family.name)


_register()


def _tidy(command: Any) -> None:
    """Help texts as flowing sentences (docstrings' line breaks dropped, paragraphs kept, so the terminal
    wraps them at any width) and flags without a value placeholder."""
    if command.help:
        command.help = "\n\n".join(" ".join(par.split()) for par in command.help.split("\n\n"))
    for param in [*command.params, command.get_help_option(typer.Context(command))]:
        if getattr(param, "help", None):  # options (typer's click, duck-typed: typer vendors its own)
            param.help = " ".join(param.help.split())
        if getattr(param, "is_flag", False):
            param.metavar = ""  # `--json`, not `--json <bool>`
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


def main() -> None:
    """Console entry point: runs the app, turning input errors into one line and exit code 2."""
    command = typer.main.get_command(app)
    _tidy(command)
    try:
        code = command.main(args=sys.argv[1:], prog_name="fairgen", standalone_mode=False)
    except FairgenError as e:
        _fail(str(e), shared=isinstance(e, SharedError))
    except OSError as e:  # the environment, not fairgen: a full disk, a permission, a vanished file
        _fail(f"{e.strerror or e}{': ' + str(e.filename) if getattr(e, 'filename', None) else ''}")
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown option, a value of the wrong type ...
        # shared: every launched process has the same arguments
        _fail(e.format_message() if hasattr(e, "format_message") else str(e), shared=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
