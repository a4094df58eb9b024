"""`fairgen suites`: list the built-in suites, or show the prompts of one suite.

Mounted by the main CLI as `app.add_typer(suites_app, name="suites")`.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fairgen.suites.builtin import list_suites
from fairgen.suites.loader import load
from fairgen.types import FairgenError

suites_app = typer.Typer(help="Prompt suites: list them, or show the prompts of one.")


@suites_app.callback(invoke_without_command=True)
def suites_main(ctx: typer.Context) -> None:
    """List the built-in suites (no subcommand), or show one (`show NAME[:split]`)."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="Built-in prompt suites")
    for column in ("suite", "splits (prompts)", "description"):
        table.add_column(column)
    for suite in list_suites():
        counts = ", ".join(f"{split} {n}" for split, n in suite["prompts"].items())
        table.add_row(suite["name"], counts, Text(suite["description"]))
    Console().print(table)
    typer.echo("Show one with: fairgen suites show NAME[:split]  (or a .yaml/.json/.txt suite file)")


@suites_app.command()
def show(
    suite: str = typer.Argument(..., help="NAME[:split] of a built-in suite, or a suite file [:split]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {id, text, concept, group}."),
) -> None:
    """Print the prompts of a suite."""
    try:
        prompts = load(suite)
    except FairgenError as err:
        # The CLI contract: one line on stderr, exit status 2.
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        records = [
            {"id": p.id, "text": p.text, "concept": p.concept, "group": dict(p.group)} for p in prompts
        ]
        # Plain echo, not rich: rich would wrap long lines and break the JSON.
        typer.echo(json.dumps(records, ensure_ascii=False, indent=2))
        return
    show_group = any(p.group for p in prompts)
    table = Table(title=f"{suite} ({len(prompts)} prompts)")
    for column in ("id", "text", "concept") + (("group",) if show_group else ()):
        table.add_column(column, overflow="fold")
    for p in prompts:
        group = (", ".join(f"{k}={v}" for k, v in p.group.items()),) if show_group else ()
        # Text(), not str: a user's prompt may contain [brackets] that rich would read as markup.
        table.add_row(*(Text(cell) for cell in (p.id, p.text, p.concept, *group)))
    Console().print(table)
