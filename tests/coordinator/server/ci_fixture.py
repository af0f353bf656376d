"""A small CI installation for server tests: a forge-side bare git repository, a Redis and a
worker (tests/cluster.py), a recording forge for commit statuses, and `conveyor server`
configured for the repository, served by uvicorn on a free port."""
from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import uvicorn

from coordinator.server.app import create_app
from shared.config import Settings
from shared.state import open_state
from shared.tokens import open_tokens
from tests.cluster import Cluster
from tests.forge_recorder import RecordingForge
from tests.services import free_port

PAYLOADS = Path(__file__).resolve().parents[1] / "triggers" / "payloads"
REPO = "acme/app"
SECRET = "s3cret-webhook-key"
SECRET_ENV = "CONVEYOR_TEST_WEBHOOK_SECRET"
TOKEN_ENV = "CONVEYOR_TEST_FORGE_TOKEN"
FORGE_TOKEN = "ghp_forge_token_for_statuses"


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass
class ForgeRepo:
    """A bare repository (what the forge hosts) and a work tree pushing to it."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, root: Path) -> "ForgeRepo":
        bare, work = root / "app.git", root / "work"
        bare.mkdir(parents=True)
        git(bare, "init", "--bare", "-q", "-b", "main")
        work.mkdir()
        git(work, "init", "-q", "-b", "main")
        git(work, "remote", "add", "origin", str(bare))
        return cls(bare, work)

    def commit(self, files: dict[str, str], branch: str = "main", message: str = "change") -> str:
        """Commit ``files`` on ``branch`` (created from the current HEAD) and push; the new sha."""
        if git(self.work, "symbolic-ref", "--short", "HEAD") != branch:
            try:
                git(self.work, "checkout", "-q", branch)
            except subprocess.CalledProcessError:
                git(self.work, "checkout", "-q", "-b", branch)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return git(self.work, "rev-parse", "HEAD")


def github_push(sha: str, before: str = "0" * 40, branch: str = "main", repository: str = REPO) -> dict:
    """GitHub's real push payload (octokit example) pointed at this commit."""
    payload = json.loads((PAYLOADS / "github" / "push.with-new-branch.json").read_text())
    payload["ref"] = f"refs/heads/{branch}"
    payload["before"], payload["after"] = before, sha
    payload["head_commit"]["id"] = sha
    payload["repository"]["full_name"] = repository
    payload["repository"]["default_branch"] = "main"
    return payload


def github_pull_request(sha: str, number: int, head_repository: str, head_branch: str = "feature") -> dict:
    payload = json.loads((PAYLOADS / "github" / "pull_request.opened.json").read_text())
    payload = copy.deepcopy(payload)
    payload["number"] = payload["pull_request"]["number"] = number
    payload["pull_request"]["head"]["sha"] = sha
    payload["pull_request"]["head"]["ref"] = head_branch
    payload["pull_request"]["head"]["repo"]["full_name"] = head_repository
    payload["pull_request"]["base"]["ref"] = "main"
    payload["pull_request"]["base"]["repo"]["full_name"] = REPO
    payload["repository"]["full_name"] = REPO
    return payload


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class CI:
    url: str
    repo: ForgeRepo
    cluster: Cluster
    forge: RecordingForge
    settings: Settings
    app: Any
    token: str = ""
    deliveries: list[str] = field(default_factory=list)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def deliver(self, payload: dict, event: str = "push", delivery: str | None = None,
                signature: str | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        body = raw if raw is not None else json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
                   "X-Hub-Signature-256": signature if signature is not None else sign(body)}
        return self.post("/hooks/github", body, headers)

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {token or self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw.strip().startswith((b"{", b"[")) else raw.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_run(self, run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, view = self.api("GET", f"/api/v1/runs/{run_id}")
            assert status == 200, view
            if view["status"] != "running" or time.monotonic() > deadline:
                return view
            time.sleep(0.2)

    def run_count(self) -> int:
        return len(self.api("GET", "/api/v1/runs?limit=1000")[1])


@contextlib.contextmanager
def serving_ci(tmp: Path, cluster: Cluster, recorder: RecordingForge, repo: ForgeRepo, monkeypatch: Any = None,
               **repository: Any) -> Iterator[CI]:
    """The server, in this process; the secrets' environment variables are set for its
    lifetime (with ``monkeypatch`` when given, so a test may change them)."""
    if monkeypatch is not None:
        monkeypatch.setenv(SECRET_ENV, SECRET)
        monkeypatch.setenv(TOKEN_ENV, FORGE_TOKEN)
    else:
        os.environ[SECRET_ENV], os.environ[TOKEN_ENV] = SECRET, FORGE_TOKEN
    table = {"name": REPO, "forge": "github", "url": str(repo.bare), "webhook_secret_env": SECRET_ENV,
             "status_api": recorder.url, "status_token_env": TOKEN_ENV, **repository}
    # The workers' artifact store (a file store in their data dir): the server stores sources there.
    settings = Settings(broker_url=cluster.redis_url, data_dir=tmp / "server-data", repositories=(table,),
                        artifacts_url=f"file://{cluster.tmp / 'data' / 'artifacts'}",
                        public_url="http://ci.example")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_state(settings.effective_state_url)
    tokens = open_tokens(settings.effective_state_url)
    app = create_app(settings, store, tokens)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    ci = CI(f"http://127.0.0.1:{port}", repo, cluster, recorder, settings, app)
    ci.token = tokens.create(f"tester-{port}", "admin")
    try:
        yield ci
    finally:
        server.should_exit = True
        thread.join(timeout=15)
