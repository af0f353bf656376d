"""The repositories a server builds: `[[repositories]]` tables of conveyor.toml, checked.

The operator's file is trusted but may be wrong; every mistake is reported at start-up
with the table's index and field, so a typo never shows up later as a webhook that is
silently refused. Secrets are never in the file: each table names the environment
variables that hold them (`webhook_secret_env`, `status_token_env`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from shared.suggest import closest

Forge = Literal["github", "gitlab", "gitea"]
FORGES: tuple[Forge, ...] = ("github", "gitlab", "gitea")
DEFAULT_PIPELINE = ".conveyor.yml"
DEFAULT_BRANCH = "main"
# Where statuses go when the table does not say (only GitHub has one public API address).
DEFAULT_STATUS_API = {"github": "https://api.github.com"}
_KNOWN = ("name", "forge", "url", "pipeline", "webhook_secret_env", "status_api", "status_token_env",
          "trust_forks", "default_branch")
# GitHub owner/name, GitLab group/subgroup/project: path segments of safe characters.
_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class RepositoryConfigError(ValueError):
    """A `[[repositories]]` table is wrong; the message names the table and the field."""


@dataclass(frozen=True)
class Repository:
    """One repository the server accepts webhooks for and builds."""

    name: str
    forge: Forge
    url: str
    pipeline: str = DEFAULT_PIPELINE
    webhook_secret_env: str = ""
    status_api: str = ""
    status_token_env: str = ""
    trust_forks: bool = False
    default_branch: str = DEFAULT_BRANCH

    def webhook_secret(self, environ: Mapping[str, str] = os.environ) -> bytes:
        """The secret deliveries are verified with; b"" (refuse everything) when unset."""
        return environ.get(self.webhook_secret_env, "").encode() if self.webhook_secret_env else b""

    def status_token(self, environ: Mapping[str, str] = os.environ) -> str:
        return environ.get(self.status_token_env, "") if self.status_token_env else ""

    def __repr__(self) -> str:  # the URL may carry credentials
        from shared.config import redact_url

        return f"Repository(name={self.name!r}, forge={self.forge!r}, url={redact_url(self.url)!r})"


def parse_repositories(tables: Iterable[Mapping[str, Any]], where: str = "conveyor.toml") -> tuple[Repository, ...]:
    """Check every table; raises `RepositoryConfigError` naming `where`, the table and the field."""
    from coordinator.git_mirror import MirrorError, branch_ref, check_path

    seen: dict[tuple[str, str], int] = {}
    out: list[Repository] = []
    for index, table in enumerate(tables):
        at = f"{where}: [[repositories]] #{index + 1}"

        def fail(field_name: str, message: str) -> RepositoryConfigError:
            return RepositoryConfigError(f"{at}, field `{field_name}`: {message}")

        for key in table:
            if key not in _KNOWN:
                guess = closest(str(key), set(_KNOWN))
                raise fail(str(key), "unknown field" + (f"; did you mean `{guess}`?" if guess else
                                                        f"; known fields: {', '.join(_KNOWN)}"))
        for required in ("name", "forge", "url"):
            if not isinstance(table.get(required), str) or not table[required]:
                raise fail(required, "is required (a non-empty string)")
        name, forge, url = table["name"], table["forge"], table["url"]
        if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
            raise fail("name", f"{name!r} is not owner/name as the forge spells it (e.g. acme/app)")
        if forge not in FORGES:
            raise fail("forge", f"{forge!r} is not one of {', '.join(FORGES)}")
        strings = {key: table.get(key, "") for key in ("pipeline", "webhook_secret_env", "status_api",
                                                       "status_token_env", "default_branch")}
        for key, value in strings.items():
            if not isinstance(value, str):
                raise fail(key, "must be a string")
        pipeline = strings["pipeline"] or DEFAULT_PIPELINE
        for key, check, value in (("pipeline", check_path, pipeline),
                                  ("default_branch", branch_ref, strings["default_branch"] or DEFAULT_BRANCH)):
            try:
                check(value)
            except MirrorError as exc:
                raise fail(key, str(exc)) from None
        for key in ("webhook_secret_env", "status_token_env"):
            if strings[key] and not _ENV_NAME.fullmatch(strings[key]):
                raise fail(key, f"{strings[key]!r} is not an environment variable name (the secret itself "
                                "never goes in this file)")
        if not strings["webhook_secret_env"]:
            raise fail("webhook_secret_env", "is required: deliveries are verified with the secret in that "
                                             "environment variable")
        status_api = strings["status_api"] or DEFAULT_STATUS_API.get(forge, "")
        if status_api and not re.match(r"https?://[^/@\s]+(/|$)", status_api):
            raise fail("status_api", f"{status_api!r} must be an http(s) URL without credentials")
        trust_forks = table.get("trust_forks", False)
        if not isinstance(trust_forks, bool):
            raise fail("trust_forks", "must be true or false")
        key = (forge, name.lower())
        if key in seen:
            raise fail("name", f"{name!r} ({forge}) is configured twice (also table #{seen[key]})")
        seen[key] = index + 1
        out.append(Repository(name=name, forge=forge, url=url, pipeline=pipeline,
                              webhook_secret_env=strings["webhook_secret_env"], status_api=status_api.rstrip("/"),
                              status_token_env=strings["status_token_env"], trust_forks=trust_forks,
                              default_branch=strings["default_branch"] or DEFAULT_BRANCH))
    return tuple(out)


class Repositories:
    """Lookup by forge and name (forges treat names case-insensitively)."""

    def __init__(self, repositories: Iterable[Repository]) -> None:
        self.all = tuple(repositories)
        self._by_key = {(r.forge, r.name.lower()): r for r in self.all}

    def find(self, forge: str, name: str) -> Repository | None:
        return self._by_key.get((forge, name.lower()))

    def of_forge(self, forge: str) -> tuple[Repository, ...]:
        return tuple(r for r in self.all if r.forge == forge)

    def named(self, name: str) -> Repository | None:
        """By name alone (the API's `repository`); the first forge when a name is on two."""
        return next((r for r in self.all if r.name.lower() == name.lower()), None)
