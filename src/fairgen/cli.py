"""The `fairgen` command line (DESIGN.md "CLI"). Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .audit import DEFAULT_MODEL
from .report.cli import compare_command, report_command
from .suites.cli import suites_app
from .types import FairgenError

app = typer.Typer(
    help="Audit and debias image generation in unified multimodal LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(suites_app, name="suites")
app.command("report")(report_command)
app.command("compare")(compare_command)
console = Console(stderr=True)


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
    model: str = typer.Option(DEFAULT_MODEL, help="Model spec: world, tiny, tiny:<dir>, folder:<dir>, plugin:<mod>:<Class>."),
    suite: str = typer.Option("occupations:test", help="Suite NAME[:split] or a suite file."),
    images_per_prompt: int = typer.Option(160, "--images-per-prompt", "-n", help="Images per prompt."),
    seed: int = typer.Option(0, help="Run seed; image seeds derive from (seed, prompt id, sample)."),
    perception: Optional[str] = typer.Option(None, help="Perception backend (default: world for world/tiny)."),
    world_spec: Optional[Path] = typer.Option(None, "--world-spec", help="Planted-bias YAML for --model world."),
    cfg: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    preset: Optional[str] = typer.Option(None, help="'paper' = cfg 3.0, temperature 0.9, top-p 0.6."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per generation batch."),
    out: Path = typer.Option(..., help="Run directory (re-run the same command to resume)."),
) -> None:
    """Generate images per prompt, perceive gender / race / age, and measure skew with intervals."""
    from .audit import PAPER_PRESET
    from .audit import audit as run_audit

    sampling: dict[str, float] = {}
    if preset is not None:
        if preset != "paper":
            raise FairgenError(f"unknown preset {preset!r}; known: paper")
        sampling.update(PAPER_PRESET)
    for key, value in (("cfg", cfg), ("temperature", temperature), ("top_p", top_p)):
        if value is not None:
            sampling[key] = value
    with _LazyProgress("audit") as progress:
        result = run_audit(
            model=model, suite=suite, images_per_prompt=images_per_prompt, seed=seed, out=out,
            perception_backend=perception, world_spec=world_spec, sampling=sampling, batch_size=batch_size,
            progress=progress,
        )
    _print_summary(result.results)
    typer.echo(f"results: {out / 'results.json'}  table: {out / 'results.csv'}  report: {out / 'report.html'}")


def _print_summary(results: dict) -> None:
    from rich.table import Table

    s = results["summary"]
    table = Table(title=f"{results['model']} on {results['suite']} ({results['images_per_prompt']} images/prompt)")
    for col in ("attribute", "rd", "ci95", "noise floor", "kl", "entropy"):
        table.add_column(col)
    for attr in ("gender", "race", "gender_x_race", "age"):
        m = s.get(attr)
        if m is None:
            table.add_row(attr, "not measured", "", "", "", "")
            continue
        rd = m["rd"]
        ci = rd["ci95"]
        table.add_row(
            attr, _f(rd["mean"]), f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "–", _f(rd["noise_floor"]),
            _f(m["kl"]["mean"]), _f(m["entropy"]["mean"]),
        )
    Console().print(table)
    fid = s.get("fidelity")
    typer.echo(f"face rate {_f(s['face_rate'])}" + (f"  fidelity ({fid['metric']}) {_f(fid['value'])}" if fid else ""))


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


@app.command("models")
def list_models() -> None:
    """List model families and their spec syntax."""
    from .models import FAMILIES

    for name, text in FAMILIES.items():
        typer.echo(f"{name:8s} {text}")


def _fail(message: str) -> None:
    """One line on stderr (never wrapped by a console), exit code 2."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(2)


def main() -> None:
    """Console entry point: runs the app, turning input errors into one line and exit code 2."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="fairgen", standalone_mode=False)
    except FairgenError as e:
        _fail(str(e))
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown option, a value of the wrong type ...
        _fail(e.format_message() if hasattr(e, "format_message") else str(e))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
