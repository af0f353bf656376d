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
    settings: Settings | None = None  # the server's (embedded: SQLite and a file artifact store)

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
    yield Server(f"http://127.0.0.1:{port}", store, tokens, settings)
    uv.should_exit = True
    thread.join(timeout=10)


# -- helpers for the deployment, artifact and event endpoints ----------------------------------

DEPLOY_RUN = "20261203-150000-dep10y"
# A canary with a named approval gate (`go-live`) and an unnamed pause (`pause-3`), as in
# tests/deploy/test_cli.py; the environment is never reached (nothing ticks in these tests).
DEPLOY_PIPELINE = """
name: api-deploy
environments:
  prod:
    router: {type: haproxy, admin: "unix:///nonexistent.sock", backend: web}
    provider: {type: command, start: "true"}
    instances: [{name: web1, address: "127.0.0.1:1"}]
    spare: ["127.0.0.1:2"]
jobs:
  build: {steps: [{name: s, script: ["true"]}]}
  release:
    deploy:
      environment: prod
      version: v2
      strategy: canary
      canary: {steps: [{set_weight: 10}, {approval: {name: go-live}}, {pause: {}}]}
"""


def add_run(server: Server, run_id: str, pipeline: str) -> str:
    """Record a run of ``pipeline`` (YAML) in the server's store; its id."""
    result = load_text(textwrap.dedent(pipeline), "p.yml", parameters={}, run_id=run_id)
    assert result.ok, [str(d) for d in result.diagnostics]
    server.store.create_run(run_id, result.plan.pipeline, {n: JobMeta() for n in result.plan.jobs},
                            result.plan.to_dict(), {})
    return run_id


def add_deploy_run(server: Server, run_id: str = DEPLOY_RUN) -> str:
    """A run with deployment job `release` (gates `go-live`, `pause-3`) and step job `build`."""
    return add_run(server, run_id, DEPLOY_PIPELINE)


def publish_artifact(server: Server, run_id: str, job: str, files: dict[str, bytes], root: Path):
    """Store ``files`` (path -> bytes, written under ``root``) as ``job``'s artifact in the
    server's artifact store and index, as a worker does; the ArtifactRecord."""
    from shared.artifacts import build_manifest, open_store
    from shared.artifacts.index import ArtifactRecord, open_index
    from shared.artifacts.publish import publish_manifest

    assert server.settings is not None
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    now = time.time()
    store = open_store(server.settings.effective_artifacts_url)
    index = open_index(server.settings.effective_state_url)
    try:
        return publish_manifest(store, index, root, build_manifest(root, sorted(files)), ArtifactRecord(
            run_id=run_id, job=job, kind="artifact", name=job, manifest="", size=0, files=0, pipeline="api-demo",
            created_at=now, expire_at=None, last_access=now))
    finally:
        index.close()


def object_path(server: Server, digest: str) -> Path:
    """Where the file artifact store keeps the object ``digest`` (to corrupt it in a test)."""
    from shared.artifacts import object_key

    assert server.settings is not None
    return Path(server.settings.effective_artifacts_url.removeprefix("file://")) / object_key(digest)


def read_events(server: Server, path: str, token: str, headers: dict[str, str] | None = None,
                timeout: float = 20) -> list[tuple[str, object, str | None]]:
    """A server-sent event stream read to its end: (event, JSON data, id) per event."""
    request = urllib.request.Request(server.url + path)
    request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = response.read().decode()
    events = []
    for block in stream.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "event" in fields:
            events.append((fields["event"], json.loads(fields.get("data", "null")), fields.get("id")))
    return events
