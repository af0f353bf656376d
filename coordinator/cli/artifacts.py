"""`conveyor artifacts`: the content-addressed artifact store."""
from __future__ import annotations

import sys

import click


@click.group()
def artifacts() -> None:
    """The artifact store (CONVEYOR_ARTIFACTS_URL: file:///path or s3://bucket/prefix)."""


@artifacts.command()
@click.option("--retries", type=click.IntRange(0, 10), default=1, show_default=True,
              help="Re-reads of an object before it is reported corrupt (a read can fail in transit).")
def verify(retries: int) -> None:
    """Re-hash every stored object; exit 1 when any is corrupt."""
    from coordinator.cli.options import cli_settings
    from shared.artifacts import open_store

    settings = cli_settings()
    store = open_store(settings.effective_artifacts_url, settings.s3_endpoint_url, retries=retries)
    checked = size = 0
    corrupt: list[str] = []
    for info in store.iter_objects():
        checked += 1
        size += info.size
        if not store.verify(info.digest):
            corrupt.append(info.digest)
            click.echo(f"corrupt: {info.digest} ({info.size} bytes): its content no longer hashes to its name", err=True)
    click.echo(f"verified {checked} object(s), {size} bytes in {settings.effective_artifacts_url}: "
               f"{len(corrupt)} corrupt")
    sys.exit(1 if corrupt else 0)
