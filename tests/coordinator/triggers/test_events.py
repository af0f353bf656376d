"""Forge webhook payloads -> TriggerEvent | Ignored | PayloadError, on the forges' real payload shapes.

GitHub payloads are octokit/webhooks' examples (payloads/github/README.md); GitLab and
Gitea payloads follow those forges' documented formats (payloads/*/README.md). Cases the
examples lack (a fork, a push to an existing branch) are a copy with a few fields changed.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from coordinator.triggers.events import (
    Ignored,
    PayloadError,
    PullRequest,
    TriggerEvent,
    api_event,
    from_gitea,
    from_github,
    from_gitlab,
    schedule_event,
    split_ref,
)

PAYLOADS = Path(__file__).parent / "payloads"
ZEROS = "0" * 40


def load(forge: str, name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / forge / name).read_text())


def event_of(result: object) -> TriggerEvent:
    assert isinstance(result, TriggerEvent), result
    return result


def ignored(result: object) -> str:
    assert isinstance(result, Ignored), result
    return result.reason


# -- GitHub -------------------------------------------------------------------------------


def test_github_ping_is_ignored() -> None:
    assert "ping" in ignored(from_github("ping", load("github", "ping.json"), "d-1"))


def test_github_push_creating_a_branch() -> None:
    event = event_of(from_github("push", load("github", "push.with-new-branch.json"), "d-1"))
    assert event.to_dict() == {
        "event": "push", "repository": "Codertocat/Hello-World", "ref": "refs/heads/master",
        "branch": "master", "tag": "", "sha": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "before": "",  # GitHub sends 40 zeros for a new branch
        "actor": "Codertocat", "pr": None, "delivery": "d-1",
    }
    assert event.default_branch == "master" and event.deleted is False


def test_github_push_to_an_existing_branch_keeps_before() -> None:
    payload = load("github", "push.with-new-branch.json")
    payload.update(before="a" * 40, created=False, ref="refs/heads/release/1.0")
    event = event_of(from_github("push", payload, "d-2"))
    assert (event.before, event.branch, event.tag) == ("a" * 40, "release/1.0", "")


def test_github_tag_deletion_is_ignored() -> None:
    assert "deleted" in ignored(from_github("push", load("github", "push.tag-deleted.json"), "d-1"))


def test_github_branch_deletion_is_ignored_even_without_the_deleted_flag() -> None:
    payload = load("github", "push.with-new-branch.json")
    payload.update(after=ZEROS, before="b" * 40, head_commit=None)
    del payload["deleted"]
    assert "deleted" in ignored(from_github("push", payload, "d-1"))


def test_github_tag_push_names_the_tag_and_the_commit_not_the_tag_object() -> None:
    payload = load("github", "push.tag-deleted.json")  # same shape as a tag creation, reversed
    payload.update(deleted=False, created=True, before=ZEROS, after="c" * 40,
                   head_commit={"id": "d" * 40, "message": "release"})
    event = event_of(from_github("push", payload, "d-3"))
    assert (event.ref, event.branch, event.tag, event.sha, event.before) == (
        "refs/tags/simple-tag", "", "simple-tag", "d" * 40, "")


def test_github_push_to_a_ref_that_is_neither_branch_nor_tag_is_ignored() -> None:
    payload = load("github", "push.with-new-branch.json")
    payload["ref"] = "refs/notes/commits"
    assert "refs/notes/commits" in ignored(from_github("push", payload, "d-1"))


def test_github_pull_request_opened() -> None:
    event = event_of(from_github("pull_request", load("github", "pull_request.opened.json"), "d-4"))
    assert event.to_dict() == {
        "event": "pull_request", "repository": "Codertocat/Hello-World", "ref": "refs/pull/2/head",
        "branch": "changes", "tag": "", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821", "before": "",
        "actor": "Codertocat", "pr": {"number": 2, "head_repository": "Codertocat/Hello-World", "fork": False},
        "delivery": "d-4",
    }
    assert event.pr is not None and event.pr.base_branch == "master"


def test_github_pull_request_synchronize_records_the_previous_head() -> None:
    event = event_of(from_github("pull_request", load("github", "pull_request.synchronize.json"), "d-5"))
    assert event.before == "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
    assert event.sha == "ec26c3e57ca3a959ca5aad62de7213c562f8c821"


def test_github_pull_request_reopened_starts_a_run() -> None:
    event = event_of(from_github("pull_request", load("github", "pull_request.reopened.json"), "d-6"))
    assert event.event == "pull_request" and event.pr is not None and event.pr.number == 2


@pytest.mark.parametrize("name, action", [("pull_request.closed.json", "closed"),
                                          ("pull_request.labeled.json", "labeled")])
def test_github_other_pull_request_actions_are_ignored(name: str, action: str) -> None:
    assert f"'{action}'" in ignored(from_github("pull_request", load("github", name), "d-1"))


def test_github_pull_request_from_a_fork() -> None:
    payload = load("github", "pull_request.opened.json")
    payload["pull_request"]["head"]["repo"]["full_name"] = "someone/Hello-World"
    event = event_of(from_github("pull_request", payload, "d-7"))
    assert event.pr == PullRequest(number=2, head_repository="someone/Hello-World", fork=True, base_branch="master")


def test_github_pull_request_from_a_deleted_fork_counts_as_a_fork() -> None:
    payload = load("github", "pull_request.synchronize.json")
    payload["pull_request"]["head"]["repo"] = None
    event = event_of(from_github("pull_request", payload, "d-8"))
    assert event.pr is not None and (event.pr.head_repository, event.pr.fork) == ("", True)


def test_github_repository_names_compare_case_insensitively() -> None:
    payload = load("github", "pull_request.opened.json")
    payload["pull_request"]["head"]["repo"]["full_name"] = "codertocat/hello-world"
    assert event_of(from_github("pull_request", payload, "d-9")).pr.fork is False  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["issues", "pull_request_target", "workflow_run", ""])
def test_github_unknown_events_are_ignored(name: str) -> None:
    assert ignored(from_github(name, {"anything": 1}, "d-1"))


# -- malformed payloads -------------------------------------------------------------------


def without(payload: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    del node[last]
    return out


def replaced(payload: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    out = copy.deepcopy(payload)
    node = out
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return out


Parser = Callable[[str, object, str], object]

NEEDED = [
    (from_github, "push", ("github", "push.with-new-branch.json"),
     ["ref", "after", "before", "repository.full_name"]),
    (from_github, "pull_request", ("github", "pull_request.opened.json"),
     ["action", "pull_request.number", "repository.full_name", "pull_request.head.ref",
      "pull_request.head.sha", "pull_request.base.ref"]),
    (from_gitlab, "Push Hook", ("gitlab", "push.json"),
     ["ref", "after", "before", "project.path_with_namespace"]),
    (from_gitlab, "Merge Request Hook", ("gitlab", "merge_request.open.json"),
     ["object_attributes.action", "object_attributes.iid", "object_attributes.source_project_id",
      "object_attributes.target_project_id", "project.path_with_namespace", "object_attributes.source_branch",
      "object_attributes.target_branch", "object_attributes.last_commit.id"]),
    (from_gitea, "push", ("gitea", "push.json"), ["ref", "after", "before", "repository.full_name"]),
    (from_gitea, "pull_request", ("gitea", "pull_request.opened.json"),
     ["action", "number", "repository.full_name", "pull_request.head.ref", "pull_request.head.sha",
      "pull_request.base.ref"]),
]
CASES = [(parser, event, source, field) for parser, event, source, fields in NEEDED for field in fields]


@pytest.mark.parametrize("parser, event, source, field", CASES,
                         ids=[f"{e}-{f}" for _, e, _, f in CASES])
def test_a_missing_needed_field_is_a_payload_error_naming_it(parser: Parser, event: str,
                                                             source: tuple[str, str], field: str) -> None:
    payload = load(*source)
    parser(event, payload, "d-1")  # the intact payload parses
    with pytest.raises(PayloadError) as caught:
        parser(event, without(payload, field), "d-1")
    message = str(caught.value)
    assert f"'{field}'" in message and "\n" not in message
    with pytest.raises(PayloadError):
        parser(event, replaced(payload, field, ["wrong", "type"]), "d-1")


@pytest.mark.parametrize("number", ["2", True, 2.0, None])
def test_a_pull_request_number_must_be_an_integer(number: object) -> None:
    payload = replaced(load("github", "pull_request.opened.json"), "pull_request.number", number)
    with pytest.raises(PayloadError, match="pull_request.number"):
        from_github("pull_request", payload, "d-1")


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_a_payload_error(body: object) -> None:
    for parser, event in ((from_github, "push"), (from_gitlab, "Push Hook"), (from_gitea, "pull_request")):
        with pytest.raises(PayloadError, match="JSON object"):
            parser(event, body, "d-1")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)
SOURCES = [(from_github, "push", "github", "push.with-new-branch.json"),
           (from_github, "pull_request", "github", "pull_request.synchronize.json"),
           (from_gitlab, "Push Hook", "gitlab", "push.json"),
           (from_gitlab, "Merge Request Hook", "gitlab", "merge_request.update-commits.json"),
           (from_gitea, "push", "gitea", "push.json"),
           (from_gitea, "pull_request", "gitea", "pull_request.opened.json")]


def _paths(node: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(prefix + (key,))
            out.extend(_paths(value, prefix + (key,)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), data=st.data())
def test_a_hostile_payload_gives_an_event_ignored_or_payload_error_never_a_crash(source, data) -> None:
    parser, event, forge, name = source
    payload = load(forge, name)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(payload)))
        node = payload
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(JSON)
    try:
        result = parser(event, payload, "d-1")
    except PayloadError:
        return
    assert isinstance(result, (TriggerEvent, Ignored))


# -- GitLab -------------------------------------------------------------------------------


def test_gitlab_push() -> None:
    event = event_of(from_gitlab("Push Hook", load("gitlab", "push.json"), "uuid-1"))
    assert event.to_dict() == {
        "event": "push", "repository": "mike/diaspora", "ref": "refs/heads/master", "branch": "master",
        "tag": "", "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "before": "95790bf891e76fee5e1747ab589903a6a1f80f22", "actor": "jsmith", "pr": None, "delivery": "uuid-1",
    }
    assert event.default_branch == "master"


def test_gitlab_branch_deletion_is_ignored() -> None:
    assert "deleted" in ignored(from_gitlab("Push Hook", load("gitlab", "push.branch-deleted.json"), "u"))


def test_gitlab_tag_push_falls_back_to_the_user_name_as_actor() -> None:
    event = event_of(from_gitlab("Tag Push Hook", load("gitlab", "tag_push.json"), "u"))
    assert (event.ref, event.tag, event.branch, event.before, event.actor, event.repository) == (
        "refs/tags/v1.0.0", "v1.0.0", "", "", "John Smith", "jsmith/example")


def test_gitlab_annotated_tag_push_names_the_commit() -> None:
    event = event_of(from_gitlab("Tag Push Hook", load("gitlab", "tag_push.annotated.json"), "u"))
    assert event.sha == "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"  # checkout_sha, not the tag object


def test_gitlab_merge_request_opened() -> None:
    event = event_of(from_gitlab("Merge Request Hook", load("gitlab", "merge_request.open.json"), "u"))
    assert event.to_dict() == {
        "event": "pull_request", "repository": "awesome_space/awesome_project",
        "ref": "refs/merge-requests/1/head", "branch": "ms-viewport", "tag": "",
        "sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "before": "", "actor": "root",
        "pr": {"number": 1, "head_repository": "awesome_space/awesome_project", "fork": False}, "delivery": "u",
    }
    assert event.pr is not None and event.pr.base_branch == "master"


def test_gitlab_merge_request_update_with_new_commits() -> None:
    event = event_of(from_gitlab("Merge Request Hook", load("gitlab", "merge_request.update-commits.json"), "u"))
    assert (event.before, event.sha) == ("95790bf891e76fee5e1747ab589903a6a1f80f22",
                                         "c7a1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9")


def test_gitlab_merge_request_update_without_new_commits_is_ignored() -> None:
    reason = ignored(from_gitlab("Merge Request Hook", load("gitlab", "merge_request.update-title.json"), "u"))
    assert "without new commits" in reason


def test_gitlab_merge_request_reopened_starts_a_run() -> None:
    payload = replaced(load("gitlab", "merge_request.open.json"), "object_attributes.action", "reopen")
    assert event_of(from_gitlab("Merge Request Hook", payload, "u")).event == "pull_request"


def test_gitlab_merged_merge_request_is_ignored() -> None:
    assert "'merge'" in ignored(from_gitlab("Merge Request Hook", load("gitlab", "merge_request.merge.json"), "u"))


def test_gitlab_merge_request_from_a_fork() -> None:
    event = event_of(from_gitlab("Merge Request Hook", load("gitlab", "merge_request.open-from-fork.json"), "u"))
    assert event.pr == PullRequest(number=2, head_repository="contributor/awesome_project", fork=True,
                                   base_branch="master")
    assert event.ref == "refs/merge-requests/2/head"


def test_gitlab_merge_request_whose_source_project_is_gone_counts_as_a_fork() -> None:
    payload = replaced(load("gitlab", "merge_request.open.json"), "object_attributes.source", None)
    assert event_of(from_gitlab("Merge Request Hook", payload, "u")).pr.fork is True  # type: ignore[union-attr]


@pytest.mark.parametrize("header", ["Note Hook", "Pipeline Hook", "System Hook", "push"])
def test_gitlab_other_events_are_ignored(header: str) -> None:
    assert ignored(from_gitlab(header, load("gitlab", "push.json"), "u"))


# -- Gitea --------------------------------------------------------------------------------


def test_gitea_push() -> None:
    event = event_of(from_gitea("push", load("gitea", "push.json"), "g-1"))
    assert event.to_dict() == {
        "event": "push", "repository": "gitea/webhooks", "ref": "refs/heads/develop", "branch": "develop",
        "tag": "", "sha": "bffeb74224043ba2feb48d137756c8a9331c449a",
        "before": "28e1879d029cb852e4844d9c718537df08844e03", "actor": "gitea", "pr": None, "delivery": "g-1",
    }


def test_gitea_tag_push() -> None:
    event = event_of(from_gitea("push", load("gitea", "push.tag.json"), "g-2"))
    assert (event.tag, event.branch, event.before) == ("v1.0.0", "", "")


def test_gitea_delete_event_is_ignored() -> None:
    assert "'delete'" in ignored(from_gitea("delete", load("gitea", "delete.json"), "g-3"))


def test_gitea_pull_request_opened() -> None:
    event = event_of(from_gitea("pull_request", load("gitea", "pull_request.opened.json"), "g-4"))
    assert event.to_dict() == {
        "event": "pull_request", "repository": "gitea/webhooks", "ref": "refs/pull/3/head",
        "branch": "feature/example", "tag": "", "sha": "bffeb74224043ba2feb48d137756c8a9331c449a", "before": "",
        "actor": "gitea", "pr": {"number": 3, "head_repository": "gitea/webhooks", "fork": False}, "delivery": "g-4",
    }


def test_gitea_spells_new_commits_synchronized() -> None:
    payload = load("gitea", "pull_request.synchronized.json")
    assert event_of(from_gitea("pull_request", payload, "g")).sha == "d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3"
    # GitHub's spelling is not Gitea's: a payload claiming it is not a new-commits event.
    assert ignored(from_gitea("pull_request", replaced(payload, "action", "synchronize"), "g"))


def test_gitea_pull_request_from_a_fork() -> None:
    event = event_of(from_gitea("pull_request", load("gitea", "pull_request.opened-from-fork.json"), "g"))
    assert event.pr == PullRequest(number=4, head_repository="contributor/webhooks", fork=True, base_branch="master")
    assert event.actor == "contributor"


def test_gitea_closed_pull_request_is_ignored() -> None:
    assert "'closed'" in ignored(from_gitea("pull_request", load("gitea", "pull_request.closed.json"), "g"))


# -- the event itself ---------------------------------------------------------------------


def push_event(**changes: Any) -> TriggerEvent:
    fields = dict(event="push", repository="acme/app", ref="refs/heads/main", branch="main", tag="",
                  sha="a" * 40, before="b" * 40, actor="alice", pr=None, delivery="d")
    fields.update(changes)
    return TriggerEvent(**fields)


def test_system_variables_of_a_branch_push() -> None:
    assert push_event().system_variables() == {
        "CONVEYOR_EVENT": "push", "CONVEYOR_REPOSITORY": "acme/app", "CONVEYOR_REF": "refs/heads/main",
        "CONVEYOR_BRANCH": "main", "CONVEYOR_TAG": "", "CONVEYOR_COMMIT_SHA": "a" * 40, "CONVEYOR_PR_NUMBER": "",
    }


def test_system_variables_of_a_tag_push_and_a_pull_request() -> None:
    tag = push_event(ref="refs/tags/v1", branch="", tag="v1").system_variables()
    assert (tag["CONVEYOR_BRANCH"], tag["CONVEYOR_TAG"]) == ("", "v1")
    pr = push_event(event="pull_request", ref="refs/pull/7/head", branch="feature",
                    pr=PullRequest(7, "acme/app", False, "main")).system_variables()
    assert (pr["CONVEYOR_EVENT"], pr["CONVEYOR_PR_NUMBER"], pr["CONVEYOR_BRANCH"]) == ("pull_request", "7", "feature")


def test_to_dict_leaves_out_what_the_spec_does_not_list() -> None:
    event = push_event(deleted=False, default_branch="main", event="pull_request",
                       pr=PullRequest(7, "x/app", True, base_branch="main"))
    data = event.to_dict()
    assert list(data) == ["event", "repository", "ref", "branch", "tag", "sha", "before", "actor", "pr", "delivery"]
    assert data["pr"] == {"number": 7, "head_repository": "x/app", "fork": True}


@pytest.mark.parametrize("changes, word", [
    ({"event": "tag"}, "event"),
    ({"event": "pull_request"}, "pr"),
    ({"pr": PullRequest(1, "a/b", False)}, "pr"),
    ({"tag": "v1"}, "both"),
])
def test_inconsistent_events_are_refused_where_they_are_built(changes: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        push_event(**changes)


def test_schedule_and_api_events() -> None:
    tick = schedule_event("acme/app", "main", "c" * 40, delivery="schedule:nightly:2024-01-01T03:00Z")
    assert tick.to_dict()["ref"] == "refs/heads/main" and tick.event == "schedule" and tick.before == ""
    api = api_event("acme/app", "refs/tags/v2", "d" * 40, "deploy-bot")
    assert (api.event, api.tag, api.branch, api.actor) == ("api", "v2", "", "deploy-bot")
    with pytest.raises(ValueError, match="refs/heads"):
        api_event("acme/app", "main", "d" * 40, "deploy-bot")


@pytest.mark.parametrize("ref, parts", [
    ("refs/heads/main", ("main", "")), ("refs/heads/release/1.x", ("release/1.x", "")),
    ("refs/tags/v1.0", ("", "v1.0")), ("refs/heads/", None), ("refs/pull/1/head", None), ("main", None),
])
def test_split_ref(ref: str, parts: tuple[str, str] | None) -> None:
    assert split_ref(ref) == parts
