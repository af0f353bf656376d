"""`[[repositories]]` tables: every mistake is named with its table and field at start-up."""
from __future__ import annotations

import pytest

from coordinator.server.repositories import Repositories, RepositoryConfigError, parse_repositories

BASE = {"name": "acme/app", "forge": "github", "url": "https://github.com/acme/app.git",
        "webhook_secret_env": "CONVEYOR_WEBHOOK_SECRET_ACME"}


def test_defaults_follow_the_spec() -> None:
    [repo] = parse_repositories([BASE])
    assert (repo.pipeline, repo.trust_forks, repo.status_api, repo.default_branch) == \
        (".conveyor.yml", False, "https://api.github.com", "main")


@pytest.mark.parametrize("change,field,words", [
    ({"pipelin": "x"}, "pipelin", "did you mean `pipeline`"),
    ({"forge": "bitbucket"}, "forge", "github, gitlab, gitea"),
    ({"name": "acme/../etc"}, "name", "owner/name"),
    ({"name": "app"}, "name", "owner/name"),
    ({"pipeline": "../outside.yml"}, "pipeline", ".."),
    ({"pipeline": ".git/config"}, "pipeline", ".git"),
    ({"webhook_secret_env": "the secret itself"}, "webhook_secret_env", "never goes in this file"),
    ({"webhook_secret_env": ""}, "webhook_secret_env", "is required"),
    ({"status_api": "file:///etc"}, "status_api", "http(s)"),
    ({"status_api": "https://user:pw@api.example"}, "status_api", "without credentials"),
    ({"trust_forks": "yes"}, "trust_forks", "true or false"),
    ({"default_branch": "a..b"}, "default_branch", ".."),
])
def test_mistakes_name_the_table_and_field(change: dict, field: str, words: str) -> None:
    with pytest.raises(RepositoryConfigError) as info:
        parse_repositories([BASE, {**BASE, "name": "acme/other", **change}], where="/etc/conveyor.toml")
    message = str(info.value)
    assert message.startswith("/etc/conveyor.toml: [[repositories]] #2, field `" + field + "`")
    assert words in message


def test_a_repository_configured_twice_is_refused() -> None:
    with pytest.raises(RepositoryConfigError, match="configured twice"):
        parse_repositories([BASE, {**BASE, "name": "ACME/App"}])


def test_lookup_is_case_insensitive_and_per_forge() -> None:
    repos = Repositories(parse_repositories([BASE, {**BASE, "forge": "gitea", "status_api": "https://git.example"}]))
    assert repos.find("github", "Acme/APP").forge == "github"
    assert repos.find("gitlab", "acme/app") is None
    assert len(repos.of_forge("gitea")) == 1


def test_the_url_s_credentials_never_show_in_repr() -> None:
    [repo] = parse_repositories([{**BASE, "url": "https://bot:hunter2@git.example/acme/app.git"}])
    assert "hunter2" not in repr(repo)


def test_the_secret_comes_from_the_environment_and_empty_means_refuse_all() -> None:
    [repo] = parse_repositories([BASE])
    assert repo.webhook_secret({"CONVEYOR_WEBHOOK_SECRET_ACME": "abc"}) == b"abc"
    assert repo.webhook_secret({}) == b""
