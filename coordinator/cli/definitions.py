"""`conveyor validate` and `conveyor plan`: read pipeline files, report, render."""
from __future__ import annotations

import sys

import click

from coordinator.cli.options import parse_vars, var_option
from coordinator.frontend import load_file
from coordinator.terminal import clean, clean_lines


def _report(diagnostics) -> None:
    for diagnostic in diagnostics:
        # Messages quote the file's values; a pull request's pipeline is not trusted.
        click.echo(clean(str(diagnostic)), err=True)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@var_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", help="How to print diagnostics.")
def validate(files: tuple[str, ...], variables: tuple[str, ...], fmt: str) -> None:
    """Check pipeline files; print every problem as file:line:col: error: message."""
    parameters = parse_vars(variables)
    invalid = False
    report = []
    for file in files:
        result = load_file(file, parameters)
        invalid = invalid or not result.ok
        if fmt == "json":
            report.append({"file": file, "valid": result.ok, "diagnostics": [d.to_dict() for d in result.diagnostics]})
        else:
            _report(result.diagnostics)
            if result.ok:
                count = len(result.plan.jobs)
                click.echo(clean(f"{file}: valid ({count} job{'' if count == 1 else 's'})"))
    if fmt == "json":
        import json

        click.echo(json.dumps(report, indent=2))
    sys.exit(1 if invalid else 0)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@var_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "dot", "mermaid"]), default="text", show_default=True)
def plan(file: str, variables: tuple[str, ...], fmt: str) -> None:
    """Show the execution plan: levels, critical path and the job graph."""
    from coordinator.render import RENDERERS

    result = load_file(file, parse_vars(variables))
    _report(result.diagnostics)
    if not result.ok:
        sys.exit(1)
    rendered = RENDERERS[fmt](result.plan)
    # Text and Mermaid show job names as written (matrix values included); JSON and dot
    # quote them with JSON escapes, so they stay exact.
    click.echo(clean_lines(rendered) if fmt in ("text", "mermaid") else rendered)
