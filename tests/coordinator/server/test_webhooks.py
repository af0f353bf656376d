"""A push to a test repository, signed as GitHub signs it, starts exactly one run at that
commit, filtered by `on:`, visible through the API, with pending then final statuses at
the (recording) forge. Real git, Redis, a worker and uvicorn; the forge's API is the only
stand-in."""
from __future__ import annotations

import json
import textwrap

import pytest

from tests.coordinator.server.ci_fixture import (CI, FORGE_TOKEN, PAYLOADS, REPO, SECRET, github_pull_request,
                                                 github_push, sign)

pytestmark = [pytest.mark.services, pytest.mark.slow]

PIPELINE = textwrap.dedent("""
    name: app
    on:
      push: {branches: [main, "release/*"]}
      pull_request: {branches: [main]}
      api: true
    jobs:
      build:
        steps:
          - name: show
            script:
              - echo "event=$CONVEYOR_EVENT branch=$CONVEYOR_BRANCH sha=$CONVEYOR_COMMIT_SHA"
              - cat src/version.txt
      secretive:
        secrets: [DEPLOY_KEY]
        steps: [{name: s, script: ["echo key=${DEPLOY_KEY:-none}"]}]
      only-main:
        depends_on: [build]
        conditional: success() && git.branch == 'main'
        steps: [{name: s, script: ["echo on main"]}]
""")


def statuses(ci: CI, sha: str) -> list[dict]:
    return [call.body for call in ci.forge.calls if call.path == f"/repos/{REPO}/statuses/{sha}"]


def test_a_signed_push_starts_one_run_at_that_commit_with_statuses(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "v1\n"})
    code, answer = ci.deliver(github_push(sha))
    assert code == 202, answer
    [run_id] = answer["runs"]
    view = ci.wait_run(run_id)
    assert view["status"] == "success", (view, [ci.api("GET", f"/api/v1/runs/{run_id}/jobs/{j}/log")[1] for j in view["jobs"]])
    assert view["trigger"]["sha"] == sha and view["trigger"]["branch"] == "main"
    assert view["trigger"]["event"] == "push" and view["trigger"]["repository"] == REPO
    assert view["jobs"]["only-main"]["status"] == "success"
    code, log = ci.api("GET", f"/api/v1/runs/{run_id}/jobs/build/log")
    assert f"event=push branch=main sha={sha}" in log and "v1" in log
    # pending at creation, success at the end, both for this commit and this pipeline
    assert ci.forge.wait_for(lambda calls: len(statuses(ci, sha)) >= 2, timeout=15), ci.forge.calls
    states = [body["state"] for body in statuses(ci, sha)]
    assert states == ["pending", "success"]
    assert {body["context"] for body in statuses(ci, sha)} == {"conveyor/app"}
    assert statuses(ci, sha)[-1]["target_url"] == f"http://ci.example/runs/{run_id}"
    call = [c for c in ci.forge.calls if c.path.endswith(sha)][0]
    assert call.header("Authorization") == f"Bearer {FORGE_TOKEN}"


def test_a_redelivery_gets_the_same_answer_and_starts_nothing(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "v2\n"})
    payload = github_push(sha)
    first = ci.deliver(payload, delivery="delivery-1")
    before = ci.run_count()
    again = ci.deliver(payload, delivery="delivery-1")
    assert again == first and first[0] == 202
    assert ci.run_count() == before


def test_on_filters_a_push_to_another_branch(ci: CI) -> None:
    ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "v1\n"})
    sha = ci.repo.commit({"src/version.txt": "feature\n"}, branch="feature")
    before = ci.run_count()
    code, answer = ci.deliver(github_push(sha, branch="feature"))
    assert code == 200 and answer["runs"] == [] and "feature" in answer["ignored"]
    assert ci.run_count() == before


def test_an_invalid_pipeline_gives_a_failed_run_with_diagnostics_and_a_failure_status(ci: CI) -> None:
    broken = "name: app\njobs:\n  build:\n    stepz: []\n"
    sha = ci.repo.commit({".conveyor.yml": broken})
    code, answer = ci.deliver(github_push(sha))
    assert code == 202, answer
    [run_id] = answer["runs"]
    view = ci.wait_run(run_id)
    assert view["status"] == "failed"
    code, log = ci.api("GET", f"/api/v1/runs/{run_id}/jobs/pipeline/log")
    assert ".conveyor.yml:4:5" in log and "stepz" in log
    assert ci.forge.wait_for(lambda calls: [b["state"] for b in statuses(ci, sha)][-1:] == ["failure"], 15)
    # the same context as the pipeline's valid runs: a required check fails instead of waiting
    assert {body["context"] for body in statuses(ci, sha)} == {"conveyor/app"}


def test_a_missing_pipeline_file_is_a_failed_run_not_a_silent_drop(ci: CI) -> None:
    sha = ci.repo.commit({"README": "no pipeline here\n"})
    code, answer = ci.deliver(github_push(sha))
    assert code == 202
    view = ci.wait_run(answer["runs"][0])
    assert view["status"] == "failed"
    log = ci.api("GET", f"/api/v1/runs/{answer['runs'][0]}/jobs/pipeline/log")[1]
    assert "not found" in log and ".conveyor.yml" in log


def test_a_fork_pull_request_runs_without_secrets_and_says_so(ci: CI) -> None:
    ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "v1\n"})
    sha = ci.repo.commit({"src/version.txt": "from a fork\n"}, branch="fork-work")
    # GitHub publishes every pull request's head in the base repository.
    from tests.coordinator.server.ci_fixture import git
    git(ci.repo.work, "push", "-q", "origin", f"{sha}:refs/pull/7/head")
    code, answer = ci.deliver(github_pull_request(sha, 7, "mallory/app"), event="pull_request")
    assert code == 202, answer
    run_id = answer["runs"][0]
    view = ci.wait_run(run_id)
    assert view["trigger"]["pr"] == {"number": 7, "head_repository": "mallory/app", "fork": True}
    log = ci.api("GET", f"/api/v1/runs/{run_id}/jobs/secretive/log")[1]
    assert "key=none" in log and "worker-secret-value" not in log
    assert any("secrets withheld" in event.get("message", "") for event in view.get("events", [])), view


def test_a_bad_signature_is_refused_before_anything_is_recorded(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    before = ci.run_count()
    body = json.dumps(github_push(sha)).encode()
    code, answer = ci.deliver({}, raw=body, signature=sign(body, "wrong-secret"))
    assert code == 401 and answer["error"]["code"] == "unauthorized"
    code, _ = ci.deliver({}, raw=b"{not json", signature="sha256=" + "0" * 64)
    assert code == 401  # not 400: the body is not parsed before it is verified
    assert ci.run_count() == before
    assert not (ci.settings.data_dir / "mirrors").exists() or not any((ci.settings.data_dir / "mirrors").iterdir())


def test_a_webhook_for_an_unconfigured_repository_is_404(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE})
    code, answer = ci.deliver(github_push(sha, repository="acme/other"))
    assert code == 404 and "acme/other" in answer["error"]["message"]


def test_the_api_starts_a_run_at_a_branch_with_the_token_as_actor(ci: CI) -> None:
    sha = ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "api\n"})
    code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": "main", "vars": {"X": "1"}})
    assert code == 201, answer
    view = ci.wait_run(answer["run_id"])
    assert view["status"] == "success"
    assert view["trigger"]["event"] == "api" and view["trigger"]["sha"] == sha
    assert view["trigger"]["actor"].startswith("tester-")


def test_the_api_answers_422_with_diagnostics_for_an_invalid_pipeline(ci: CI) -> None:
    ci.repo.commit({".conveyor.yml": "name: app\njobs:\n  build:\n    stepz: []\n"})
    before = ci.run_count()
    code, answer = ci.api("POST", "/api/v1/runs", {"repository": REPO, "ref": "main"})
    assert code == 422
    assert answer["error"]["diagnostics"][0]["line"] == 4
    assert ".conveyor.yml:4:5" in answer["error"]["message"]
    assert ci.run_count() == before


def test_a_forge_that_is_down_never_fails_the_run(ci: CI) -> None:
    ci.forge.stop()
    sha = ci.repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": "v3\n"})
    code, answer = ci.deliver(github_push(sha))
    assert code == 202
    view = ci.wait_run(answer["runs"][0])
    assert view["status"] == "success"
    assert any(e.get("kind") == "commit_status" for e in view.get("events", [])), view


def _forge_payload(forge: str, sha: str) -> dict:
    payload = json.loads((PAYLOADS / forge / "push.json").read_text())
    payload.update({"ref": "refs/heads/main", "before": "0" * 40, "after": sha})
    if forge == "gitlab":
        payload["checkout_sha"] = sha
        payload["project"].update({"path_with_namespace": REPO, "default_branch": "main"})
    else:
        payload["repository"].update({"full_name": REPO, "default_branch": "main"})
    return payload


@pytest.mark.parametrize("forge", ["gitlab", "gitea"])
def test_gitlab_and_gitea_pushes_start_a_run_with_their_own_authenticity_and_status_shape(
        forge: str, tmp_path, cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.coordinator.server.ci_fixture import ForgeRepo, serving_ci
    from tests.forge_recorder import recording_forge

    repo = ForgeRepo.create(tmp_path / "forge")
    sha = repo.commit({".conveyor.yml": PIPELINE, "src/version.txt": forge + "\n"})
    with recording_forge() as recorder, serving_ci(tmp_path, cluster, recorder, repo, monkeypatch,
                                                   forge=forge) as ci:
        body = json.dumps(_forge_payload(forge, sha)).encode()
        if forge == "gitlab":
            headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "u-1", "X-Gitlab-Token": SECRET}
            wrong = {**headers, "X-Gitlab-Token": "nope"}
        else:
            headers = {"X-Gitea-Event": "push", "X-Gitea-Delivery": "g-1",
                       "X-Gitea-Signature": sign(body)[len("sha256="):]}
            wrong = {**headers, "X-Gitea-Signature": sign(body, "nope")[len("sha256="):]}
        assert ci.post(f"/hooks/{forge}", body, wrong)[0] == 401
        code, answer = ci.post(f"/hooks/{forge}", body, headers)
        assert code == 202, answer
        view = ci.wait_run(answer["runs"][0])
        assert view["status"] == "success" and view["trigger"]["sha"] == sha
        path = (f"/projects/acme%2Fapp/statuses/{sha}" if forge == "gitlab" else f"/repos/{REPO}/statuses/{sha}")
        assert recorder.wait_for(lambda calls: len([c for c in calls if c.path == path]) >= 2, 15), recorder.calls
        states = [c.body["state"] for c in recorder.calls if c.path == path]
        assert states == ["pending", "success"]
        assert ci.post(f"/hooks/{forge}", body, headers) == (code, answer)  # a redelivery
