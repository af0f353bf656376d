"""Attacks on `POST /hooks/*` and `POST /api/v1/runs`: forged, replayed, oversized, cross-
repository and injected deliveries are refused, and refusing records nothing.

A real server over a real Redis and real git repositories; no worker is needed (nothing
here may start a job)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster import Cluster, running_cluster
from tests.coordinator.server.ci_fixture import (CI, REPO, SECRET, ForgeRepo, github_pull_request, github_push,
                                                 serving_ci, sign)
from tests.forge_recorder import recording_forge

pytestmark = [pytest.mark.services]

PIPELINE = "name: app\njobs:\n  build: {steps: [{name: s, script: [echo hi]}]}\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("attack-cluster"), "local") as running:
        yield running  # no worker: runs are created, never executed


@pytest.fixture
def ci(tmp_path: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[CI]:
    repo = ForgeRepo.create(tmp_path / "forge")
    with recording_forge() as forge, serving_ci(tmp_path, cluster, forge, repo, monkeypatch) as running:
        yield running


def mirrors(ci: CI) -> list[Path]:
    root = ci.settings.data_dir / "mirrors"
    return [p for p in root.iterdir() if p.suffix == ".git"] if root.exists() else []


def test_an_oversized_body_is_413_without_reading_it(ci: CI) -> None:
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(ci.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/hooks/github")
    conn.putheader("Content-Length", str(5 * 1024 * 1024 + 1))
    conn.putheader("X-GitHub-Event", "push")
    conn.putheader("X-Hub-Signature-256", "sha256=" + "0" * 64)
    conn.endheaders()  # and no body: the answer comes from the declared length alone
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "too_large"


def test_a_chunked_oversized_body_is_413_too(ci: CI) -> None:
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(ci.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest("POST", "/hooks/github")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("X-GitHub-Event", "push")
    conn.putheader("X-GitHub-Delivery", "big")
    conn.putheader("X-Hub-Signature-256", "sha256=" + "0" * 64)
    conn.endheaders()
    chunk = b"x" * (1024 * 1024)
    try:
        for _ in range(7):
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may close early: also a refusal
    status = conn.getresponse().status
    assert status == 413


def test_a_forged_signature_is_401_and_the_body_is_never_parsed(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    body = json.dumps(github_push(sha)).encode()
    before = ci.run_count()
    for signature in ("", "sha256=", "sha1=" + "0" * 40, sign(body, "guess"), sign(body)[:-2],
                      sign(body + b" ")):
        code, answer = ci.deliver({}, raw=body, signature=signature)
        assert code == 401, (signature, answer)
    assert ci.run_count() == before and mirrors(ci) == []


def test_an_unset_secret_refuses_everything(ci: CI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_WEBHOOK_SECRET", "")
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    body = json.dumps(github_push(sha)).encode()
    code, _ = ci.deliver({}, raw=body, signature=sign(body, ""))
    assert code == 401


def test_one_repositorys_secret_cannot_start_another_repositorys_run(tmp_path: Path, cluster: Cluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Two repositories with different secrets: a delivery signed with acme/app's secret that
    # names acme/lib is refused, though acme/lib is configured.
    repo = ForgeRepo.create(tmp_path / "forge")
    sha = repo.commit({".conveyor.yml": PIPELINE})
    monkeypatch.setenv("LIB_SECRET", "another-secret")
    from shared.config import Settings  # noqa: F401  (serving_ci builds the settings)
    with recording_forge() as forge, serving_ci(tmp_path, cluster, forge, repo, monkeypatch) as ci:
        runtime = ci.app.state.services.runtime
        from coordinator.server.repositories import Repositories, parse_repositories
        runtime.repositories = Repositories(parse_repositories([
            {"name": REPO, "forge": "github", "url": str(repo.bare), "webhook_secret_env": "CONVEYOR_TEST_WEBHOOK_SECRET"},
            {"name": "acme/lib", "forge": "github", "url": str(repo.bare), "webhook_secret_env": "LIB_SECRET"},
        ]))
        code, answer = ci.deliver(github_push(sha, repository="acme/lib"))  # signed with acme/app's secret
        assert code == 401, answer
        body = json.dumps(github_push(sha, repository="acme/lib")).encode()
        code, answer = ci.deliver({}, raw=body, signature=sign(body, "another-secret"))
        assert code == 202, answer


@pytest.mark.parametrize("field,value", [
    ("after", "--upload-pack=touch /tmp/pwned"),
    ("after", "$(touch /tmp/pwned)"),
    ("ref", "refs/heads/a..b"),
    ("ref", "refs/heads/x;touch /tmp/pwned"),
])
def test_injected_refs_and_shas_are_refused_and_never_reach_git(ci: CI, field: str, value: str) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    payload = github_push(sha)
    before = ci.run_count()
    payload[field] = value
    if field == "after":
        payload["head_commit"]["id"] = value
    code, answer = ci.deliver(payload)
    assert code in (200, 400), answer  # 200 only when the ref is neither a branch nor a tag
    assert ci.run_count() == before
    assert not Path("/tmp/pwned").exists()


def test_a_branch_named_like_an_option_is_only_ever_a_full_ref(ci: CI) -> None:
    # `refs/heads/--upload-pack=x` is a valid (odd) branch name: git only ever sees it after
    # `refs/`, so it is data, never an option; the run is at the pushed commit.
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    payload = github_push(sha)
    payload["ref"] = "refs/heads/--upload-pack=touch /tmp/pwned"
    code, answer = ci.deliver(payload)
    assert code in (202, 400), answer
    assert not Path("/tmp/pwned").exists()


def test_a_redelivery_with_a_changed_body_but_the_same_id_starts_nothing(ci: CI) -> None:
    first = ci.repo.commit({".conveyor.yml": PIPELINE})
    second = ci.repo.commit({"x": "1"})
    before = ci.run_count()
    code, answer = ci.deliver(github_push(first), delivery="same-id")
    assert code == 202
    again = ci.deliver(github_push(second, before=first), delivery="same-id")
    assert again == (code, answer)
    assert ci.run_count() == before + 1


def test_redis_down_answers_503_so_the_forge_redelivers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "own").mkdir()
    with running_cluster(tmp_path / "own", "local") as own:
        repo = ForgeRepo.create(tmp_path / "forge")
        sha = repo.commit({".conveyor.yml": PIPELINE})
        with recording_forge() as forge, serving_ci(tmp_path, own, forge, repo, monkeypatch) as ci:
            port = int(own.redis_url.rsplit(":", 1)[1].split("/")[0])
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=10)
            code, answer = ci.deliver(github_push(sha))
            assert code == 503, answer
            status, body, _ = _get(ci.url + "/readyz")
            assert status == 503


def _get(url: str) -> tuple[int, str, dict]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_a_fork_pull_request_cannot_reach_secrets_or_deployments(ci: CI) -> None:
    pipeline = ("name: app\njobs:\n  build:\n    secrets: [DEPLOY_KEY]\n"
                "    steps: [{name: s, script: [echo hi]}]\n")
    ci.repo.commit({".conveyor.yml": pipeline})
    sha = ci.repo.commit({"evil": "1"}, branch="fork")
    from tests.coordinator.server.ci_fixture import git
    git(ci.repo.work, "push", "-q", "origin", f"{sha}:refs/pull/9/head")
    code, answer = ci.deliver(github_pull_request(sha, 9, "mallory/app"), event="pull_request")
    assert code == 202
    plan = ci.app.state.services.store.get_plan(answer["runs"][0])
    assert plan["jobs"]["build"]["secrets"] == []


def test_the_api_refuses_a_read_token_unknown_repositories_and_bad_refs(ci: CI) -> None:
    ci.repo.commit({".conveyor.yml": PIPELINE})
    before = ci.run_count()
    tokens = ci.app.state.services.tokens
    reader = tokens.create("reader", "read")
    code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": "main"}, token=reader)
    assert code == 403
    code, _ = ci.api("POST", "/api/v1/runs", {"repository": "acme/nope", "ref": "main"})
    assert code == 404
    for ref in ("refs/heads/../x", "refs/notes/x", "a b", "main~1", "HEAD@{1}"):
        code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": ref})
        assert code == 400, (ref, answer)
    # an option-like branch name is a (missing) branch, never an option
    # a branch name with shell or option syntax is a (missing) branch: argv to git, never a shell
    for ref in ("--upload-pack=touch /tmp/pwned", "main;touch /tmp/pwned", "$(touch /tmp/pwned)"):
        code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": ref})
        assert code in (400, 404), (ref, answer)
    assert not Path("/tmp/pwned").exists()
    code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": "main", "vars": {"A B": "x"}})
    assert code == 400
    code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": "no-such-branch"})
    assert code == 404
    assert ci.run_count() == before


def test_unknown_forges_and_unconfigured_forges_are_404(ci: CI) -> None:
    code, _ = ci.post("/hooks/bitbucket", b"{}", {"Content-Type": "application/json"})
    assert code == 404
    code, _ = ci.post("/hooks/gitlab", b"{}", {"X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Push Hook"})
    assert code == 404  # no gitlab repository is configured
