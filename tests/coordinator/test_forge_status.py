"""Commit statuses, the pure part: run status -> state, state -> each forge's exact request, retry policy."""
from __future__ import annotations

import json
from functools import partial

import pytest

from coordinator.forge_status import (
    ELLIPSIS,
    MAX_ATTEMPTS,
    build_request,
    context_for,
    next_delay,
    status_for_run,
)

SHA = "a" * 40
TOKEN = "tok_s3cr3t_value"
RUN_URL = "https://ci.example.com/runs/r-1"


def request(forge: str = "github", **overrides):
    args = dict(forge=forge, status_api="https://api.example.com", repository="acme/app", sha=SHA,
                state="success", context="conveyor/build", description="Build passed",
                target_url=RUN_URL, token=TOKEN)
    args.update(overrides)
    return build_request(**args)


# -- run status -> state --------------------------------------------------------------


@pytest.mark.parametrize("run_status, state", [
    ("running", "pending"), ("waiting", "pending"), ("success", "success"),
    ("failed", "failure"), ("cancelled", "error"),
])
def test_run_statuses_map_to_commit_states(run_status: str, state: str) -> None:
    assert status_for_run(run_status) == state


def test_an_invalid_pipeline_is_a_failure() -> None:
    assert status_for_run("failed", invalid=True) == "failure"


def test_an_unknown_run_status_is_refused() -> None:
    with pytest.raises(ValueError, match="'exploded'"):
        status_for_run("exploded")


def test_context_is_conveyor_slash_the_pipeline_name_made_one_line() -> None:
    assert context_for("build") == "conveyor/build"
    assert context_for("  deploy\n\tprod\x1b[31m ") == "conveyor/deploy prod [31m"
    assert context_for("") == "conveyor/pipeline"
    long = context_for("x" * 500)
    assert len(long) == 255 and long.endswith(ELLIPSIS)


# -- request shapes -------------------------------------------------------------------


def test_github_request_shape() -> None:
    req = request("github", status_api="https://api.github.com/")
    assert (req.method, req.url) == ("POST", f"https://api.github.com/repos/acme/app/statuses/{SHA}")
    assert req.body == {"state": "success", "target_url": RUN_URL, "description": "Build passed",
                        "context": "conveyor/build"}
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Accept"] == "application/vnd.github+json"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.data()) == req.body


@pytest.mark.parametrize("state, forge_state", [
    ("pending", "pending"), ("success", "success"), ("failure", "failed"), ("error", "canceled"),
])
def test_gitlab_request_shape_and_state_names(state: str, forge_state: str) -> None:
    req = request("gitlab", status_api="https://gitlab.example.com/api/v4", state=state)
    assert req.url == f"https://gitlab.example.com/api/v4/projects/acme%2Fapp/statuses/{SHA}"
    assert req.body == {"state": forge_state, "name": "conveyor/build", "target_url": RUN_URL,
                        "description": "Build passed"}
    assert req.headers["PRIVATE-TOKEN"] == TOKEN
    assert "Authorization" not in req.headers
    assert req.state == state  # Conveyor's spelling is kept for events


def test_gitlab_nested_groups_are_one_url_encoded_segment() -> None:
    req = request("gitlab", repository="group/sub/app")
    assert req.url == f"https://api.example.com/projects/group%2Fsub%2Fapp/statuses/{SHA}"


@pytest.mark.parametrize("state", ["pending", "success", "failure", "error"])
def test_gitea_request_shape(state: str) -> None:
    req = request("gitea", status_api="https://gitea.example.com/api/v1", state=state)
    assert req.url == f"https://gitea.example.com/api/v1/repos/acme/app/statuses/{SHA}"
    assert req.body == {"state": state, "target_url": RUN_URL, "description": "Build passed",
                        "context": "conveyor/build"}
    assert req.headers["Authorization"] == f"token {TOKEN}"


def test_an_empty_target_url_is_left_out() -> None:
    assert "target_url" not in request(target_url="").body


def test_sha_is_lower_cased_and_sha256_accepted() -> None:
    assert request(sha="ABCDEF" + "0" * 34).url.endswith("/statuses/abcdef" + "0" * 34)
    assert request(sha="b" * 64).url.endswith("/statuses/" + "b" * 64)


def test_key_is_the_commit_url_and_context() -> None:
    assert request(state="pending").key == request(state="success").key
    assert request(context="conveyor/a").key != request(context="conveyor/b").key
    assert request(sha="c" * 40).key != request().key


def test_repr_does_not_show_the_token() -> None:
    assert TOKEN not in repr(request())


# -- descriptions ---------------------------------------------------------------------


@pytest.mark.parametrize("forge, limit", [("github", 140), ("gitlab", 255), ("gitea", 255)])
def test_descriptions_are_cut_to_the_forge_limit_with_an_ellipsis(forge: str, limit: int) -> None:
    exact = request(forge, description="x" * limit).body["description"]
    assert exact == "x" * limit
    cut = request(forge, description="y" * (limit + 50)).body["description"]
    assert len(cut) == limit and cut == "y" * (limit - 1) + ELLIPSIS


def test_descriptions_become_one_line() -> None:
    assert request(description="line one\n  line\ttwo\r\n").body["description"] == "line one line two"


# -- refused inputs -------------------------------------------------------------------


@pytest.mark.parametrize("sha", ["", "a" * 39, "a" * 41, "g" * 40, "a" * 40 + "\n", "HEAD", "a" * 63])
def test_bad_shas_are_refused(sha: str) -> None:
    with pytest.raises(ValueError, match="sha"):
        request(sha=sha)


@pytest.mark.parametrize("repository", ["app", "acme/app/extra", "acme/", "/app", "acme//app", "acme/..",
                                        "../app", "acme/app?x=1", "acme/app#f", "acme/a%2Fb", "acme/a b"])
def test_bad_repositories_are_refused_on_github(repository: str) -> None:
    with pytest.raises(ValueError, match="repository"):
        request(repository=repository)


@pytest.mark.parametrize("repository", ["app", "group//app", "group/../app", "group/sub/", "g/" * 21 + "app"])
def test_bad_repositories_are_refused_on_gitlab(repository: str) -> None:
    with pytest.raises(ValueError, match="repository"):
        request("gitlab", repository=repository)


def test_dotted_names_that_are_not_dot_segments_are_fine() -> None:
    assert request(repository="acme/.github").url.startswith("https://api.example.com/repos/acme/.github/")
    assert request(repository="my-org/app_v2.0").url.startswith("https://api.example.com/repos/my-org/app_v2.0/")


@pytest.mark.parametrize("status_api", ["ftp://x", "file:///etc", "gopher://x", "api.github.com", "",
                                        "https://u:p@host", "https://host?x=1", "https://host/#f",
                                        "https://", "https://host:99999", "https://host/a/../b"])
def test_bad_status_apis_are_refused(status_api: str) -> None:
    with pytest.raises(ValueError, match="status_api"):
        request(status_api=status_api)


@pytest.mark.parametrize("field, value", [("forge", "bitbucket"), ("state", "running"), ("context", ""),
                                          ("context", "conveyor/\nx"), ("context", "c" * 256),
                                          ("target_url", "javascript:alert(1)"), ("token", ""),
                                          ("token", "abc\r\nX-Evil: 1"), ("token", "tok en")])
def test_other_bad_inputs_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError):
        request(**{field: value})


# -- retry policy ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt, status, delay", [
    (1, None, 4.0), (2, None, 8.0), (3, 502, 16.0), (4, 503, 32.0), (5, 429, 60.0), (6, None, None),
    (1, 500, 4.0), (1, 599, 4.0), (1, 429, 4.0),
    (1, 400, None), (1, 401, None), (1, 403, None), (1, 404, None), (1, 422, None), (1, 408, None),
    (1, 301, None), (1, 302, None), (1, 200, None),
    (10, 502, None),
])
def test_retry_policy_table(attempt: int, status: int | None, delay: float | None) -> None:
    assert next_delay(attempt, status) == delay


def test_the_whole_schedule_spans_about_two_minutes_in_six_attempts() -> None:
    delays = [next_delay(a, None) for a in range(1, MAX_ATTEMPTS + 1)]
    assert delays[-1] is None and None not in delays[:-1]
    assert len(delays) == MAX_ATTEMPTS == 6
    assert sum(delays[:-1]) == 120.0


def test_the_policy_scales_for_tests_and_keeps_its_decisions() -> None:
    fast = partial(next_delay, base=0.001, cap=0.004)
    assert [fast(a, 502) for a in range(1, 7)] == [0.001, 0.002, 0.004, 0.004, 0.004, None]
    assert fast(1, 404) is None


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        next_delay(0, None)
