"""The `conveyor` command line. Subcommands import their heavy dependencies lazily, so
`conveyor --help` and `conveyor validate` never load Celery, boto3 or docker."""
from __future__ import annotations

import importlib

import click

# command name -> "module:function"; loaded only when that command runs or shows help
COMMANDS = {
    "validate": "coordinator.cli.definitions:validate",
    "plan": "coordinator.cli.definitions:plan",
    "run": "coordinator.cli.runs:run",
    "submit": "coordinator.cli.runs:submit",
    "status": "coordinator.cli.runs:status",
    "logs": "coordinator.cli.runs:logs",
    "cancel": "coordinator.cli.runs:cancel",
    "runs": "coordinator.cli.runs:runs",
    "worker": "coordinator.cli.services:worker",
    "flower": "coordinator.cli.services:flower",
    "artifacts": "coordinator.cli.artifacts:artifacts",
    "approve": "coordinator.cli.deployments:approve",
    "reject": "coordinator.cli.deployments:reject",
    "abort": "coordinator.cli.deployments:abort",
    "rollback": "coordinator.cli.deployments:rollback",
    "token": "coordinator.cli.tokens:token",
    "server": "coordinator.cli.server:server",
    "schedules": "coordinator.cli.server:schedules",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor", prog_name="conveyor")
def cli() -> None:
    """Conveyor: distributed CI/CD pipelines on Celery workers and Docker."""


def main() -> None:
    cli(prog_name="conveyor")
