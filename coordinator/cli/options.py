"""Options shared by several commands."""
from __future__ import annotations

import re

import click

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

var_option = click.option(
    "--var", "variables", multiple=True, metavar="K=V",
    help="A run parameter; overrides every environment. Repeatable.",
)


def parse_vars(items: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise click.UsageError(f"--var '{item}': expected NAME=VALUE with NAME like [A-Za-z_][A-Za-z0-9_]*")
        out[name] = value
    return out
