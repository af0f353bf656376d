"""`conveyor server`: the API for people and forges without broker credentials."""
from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
def server(host: str, port: int) -> None:
    """Serve the HTTP API (docs/server.md); stateless, so several may run behind one address."""
    import uvicorn

    from coordinator.cli.options import cli_settings
    from coordinator.server.app import create_app

    settings = cli_settings()
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    # One process, the default loop; proxy headers off: it answers clients directly.
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", proxy_headers=False,
                server_header=False)
