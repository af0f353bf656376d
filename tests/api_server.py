"""A real `conveyor server` for tests: uvicorn on a free port over a SQLite state store with
one run, tokens from the token store, and a urllib client (`Server.request`)."""
from __future__ import annotations

import contextlib
import json
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from coordinator.frontend import load_text
from coordinator.server.app import create_app
from shared.config import Settings
from shared.state import JobMeta, open_state
from shared.state.base import StateStore
from shared.tokens import TokenStore, open_tokens
from tests.services import free_port

RUN = "20261203-140000-c0ffee"
PIPELINE = """
name: api-demo
jobs:
  build: {steps: [{name: s, script: [x]}]}
  test: {depends_on: [build], steps: [{name: s, script: [x]}]}
"""


@dataclass
class Server:
    url: str
    store: StateStore
    tokens: TokenStore

    def request(self, method: str, path: str, token: str | None = None,
                body: dict | None = None) -> tuple[int, dict | str, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, status, headers = response.read().decode(), response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw, status, headers = exc.read().decode(), exc.code, dict(exc.headers)
        try:
            return status, json.loads(raw), headers
        except ValueError:
            return status, raw, headers


@contextlib.contextmanager
def serving(tmp_path: Path) -> Iterator[Server]:
    """A running server in ``tmp_path``; stopped on exit (the `server` fixture)."""
    settings = Settings(data_dir=tmp_path / "data")
    (tmp_path / "data").mkdir()
    store = open_state(settings.effective_state_url)
    result = load_text(textwrap.dedent(PIPELINE), "p.yml", parameters={}, run_id=RUN)
    store.create_run(RUN, result.plan.pipeline, {n: JobMeta() for n in result.plan.jobs}, result.plan.to_dict(),
                     {"trigger": {"event": "push", "repository": "acme/app", "branch": "main"}})
    tokens = open_tokens(settings.effective_state_url)
    port = free_port()
    config = uvicorn.Config(create_app(settings, store, tokens), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield Server(f"http://127.0.0.1:{port}", store, tokens)
    uv.should_exit = True
    thread.join(timeout=10)
