"""What started a run: one forge-neutral `TriggerEvent`, and the parsers of forge webhooks.

The server (spec server.md, "Webhooks" and "Run context") turns each authentic delivery
into one call of `from_github`, `from_gitlab` or `from_gitea`. Each returns

* a `TriggerEvent` — a push to a branch or tag, or a pull/merge request that was opened,
  got new commits, or was reopened;
* `Ignored(reason)` — a delivery that is well formed but starts nothing (answered 200
  `{"runs": []}`): GitHub `ping`, event types we do not handle, ref deletions, other pull
  request actions, GitLab merge request updates without new commits, pushes to refs that
  are neither branches nor tags;

or raises `PayloadError` when a field it needs is missing or has the wrong type (the
server answers 400 with the message).

How the forges' fields map onto an event:

| field | push | pull/merge request |
|---|---|---|
| `ref` | the pushed ref (`refs/heads/x`, `refs/tags/v1`) | the forge's fetchable head ref: GitHub and Gitea `refs/pull/N/head`, GitLab `refs/merge-requests/N/head` (these live in the BASE repository, so fork PRs can be fetched from it) |
| `branch` | the branch name, `""` for a tag push | the HEAD (source) branch name |
| `tag` | the tag name, `""` for a branch push | `""` |
| `sha` | the pushed commit (`head_commit.id` / GitLab `checkout_sha` when present, else `after`: for an annotated tag `after` is the tag object, not the commit) | the head commit |
| `before` | the previous tip, `""` for a new branch or tag (the forges send 40 zeros) | GitHub `before` / GitLab `oldrev` on new commits, else `""` (Gitea sends none) |
| `actor` | GitHub/Gitea `sender.login`, GitLab `user_username` (`user_name` when absent, as in GitLab's documented tag push example) | GitHub/Gitea `sender.login`, GitLab `user.username` |
| `repository` | GitHub/Gitea `repository.full_name`, GitLab `project.path_with_namespace` | the BASE repository, named the same way |
| `pr` | `None` | number (GitLab: the project-scoped `iid`), head repository, fork, base branch |

A pull request is from a fork when its head repository is not its base repository:
GitHub and Gitea compare the repositories' `full_name` (case-insensitively: the forges
treat names that way), GitLab compares `source_project_id` with `target_project_id`
(ids survive renames). A head repository the forge no longer knows (deleted fork:
`head.repo` null, GitLab `source` null) counts as a fork: untrusted is the safe default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

EventName = Literal["push", "pull_request", "schedule", "api"]
EVENTS: tuple[str, ...] = ("push", "pull_request", "schedule", "api")

BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"

# GitHub (and Gitea, which copied it) spells the pull request actions that bring new code
# differently from GitLab; anything else (closed, labeled, edited, ...) starts nothing,
# as with GitHub Actions' default `pull_request` activity types.
GITHUB_PR_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
GITEA_PR_ACTIONS = frozenset({"opened", "synchronized", "reopened"})
GITLAB_MR_ACTIONS = frozenset({"open", "update", "reopen"})


class PayloadError(ValueError):
    """A webhook body that lacks a field the event needs (the server answers 400 with str(self))."""


@dataclass(frozen=True)
class Ignored:
    """A well-formed delivery that starts nothing; `reason` is one line for the 200 answer and the log."""

    reason: str


@dataclass(frozen=True)
class PullRequest:
    """The pull/merge request of a `pull_request` event.

    `base_branch` is what `on.pull_request.branches` filters (filters.py); it is not part
    of the spec's `trigger` JSON, so `TriggerEvent.to_dict` leaves it out.
    """

    number: int
    head_repository: str  # "" when the forge no longer knows it (deleted fork)
    fork: bool
    base_branch: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The spec's `pr` object: `{"number", "head_repository", "fork"}`."""
        return {"number": self.number, "head_repository": self.head_repository, "fork": self.fork}


@dataclass(frozen=True)
class TriggerEvent:
    """One reason to start a run, whichever forge (or the scheduler, or the API) it came from.

    Every text field is a string, `""` when it does not apply: `branch` for a tag push,
    `tag` for anything but a tag push, `before` when there is no previous commit (a new
    branch or tag, an opened pull request, a schedule, an API call), `delivery` for
    schedule and API events that have no delivery id.

    `deleted` and `default_branch` are not part of the spec's `trigger` JSON:
    `default_branch` lets the server compute the changed files of a new branch (since its
    merge base with the default branch); `deleted` is always False for events the parsers
    return (deletions are `Ignored`), and `filters.match` refuses an event that has it,
    so an event built by hand cannot start a run for a ref that no longer exists.
    """

    event: EventName
    repository: str
    ref: str
    branch: str
    tag: str
    sha: str
    before: str
    actor: str
    pr: PullRequest | None
    delivery: str
    deleted: bool = False
    default_branch: str = ""

    def __post_init__(self) -> None:
        # Constructed by our own parsers and by the server's schedule/API code: a wrong
        # combination is a bug there, and failing here names it at its source.
        if self.event not in EVENTS:
            raise ValueError(f"TriggerEvent.event: {self.event!r} is not one of {', '.join(EVENTS)}")
        if (self.pr is not None) != (self.event == "pull_request"):
            raise ValueError("TriggerEvent.pr: set it exactly when event is 'pull_request'")
        if self.branch and self.tag:
            raise ValueError("TriggerEvent: branch and tag cannot both be set; a ref is one or the other")

    def to_dict(self) -> dict[str, Any]:
        """The spec's `trigger` JSON (status JSON, and the expressions' `git` root), exactly:

        `{"event", "repository", "ref", "branch", "tag", "sha", "before", "actor",
        "pr": {"number", "head_repository", "fork"} | null, "delivery"}`.
        """
        return {
            "event": self.event,
            "repository": self.repository,
            "ref": self.ref,
            "branch": self.branch,
            "tag": self.tag,
            "sha": self.sha,
            "before": self.before,
            "actor": self.actor,
            "pr": None if self.pr is None else self.pr.to_dict(),
            "delivery": self.delivery,
        }

    def system_variables(self) -> dict[str, str]:
        """The run's trigger system variables; each is `""` when it does not apply.

        `CONVEYOR_BRANCH` is `""` for a tag push, `CONVEYOR_TAG` `""` for anything but a
        tag push, `CONVEYOR_PR_NUMBER` `""` for anything but a pull request (so
        `${CONVEYOR_PR_NUMBER:-none}` works: an empty value takes the default). For a pull
        request `CONVEYOR_BRANCH` is its head branch and `CONVEYOR_REF` the forge's
        `refs/pull/N/head` (GitLab `refs/merge-requests/N/head`).
        """
        return system_variables(self.to_dict())


def system_variables(trigger: Mapping[str, Any] | None) -> dict[str, str]:
    """The trigger system variables of a `trigger` document (`TriggerEvent.to_dict()`, as
    stored with a run and given to the pipeline front end).

    None — a run no trigger started (`conveyor run` on a local file) — and missing fields
    give `""`, as for a field that does not apply, so `${CONVEYOR_BRANCH:-main}` works
    the same everywhere.
    """
    doc: Mapping[str, Any] = trigger or {}
    pr = doc.get("pr")
    number = pr.get("number") if isinstance(pr, Mapping) else None
    return {
        "CONVEYOR_EVENT": _text(doc.get("event")),
        "CONVEYOR_REPOSITORY": _text(doc.get("repository")),
        "CONVEYOR_REF": _text(doc.get("ref")),
        "CONVEYOR_BRANCH": _text(doc.get("branch")),
        "CONVEYOR_TAG": _text(doc.get("tag")),
        "CONVEYOR_COMMIT_SHA": _text(doc.get("sha")),
        "CONVEYOR_PR_NUMBER": _text(number),
    }


def _text(value: object) -> str:
    return "" if value is None else str(value)


ParseResult = TriggerEvent | Ignored


def split_ref(ref: str) -> tuple[str, str] | None:
    """`(branch, tag)` of a full ref, one of them `""`; None for refs that are neither."""
    for prefix, is_tag in ((BRANCH_PREFIX, False), (TAG_PREFIX, True)):
        if ref.startswith(prefix) and len(ref) > len(prefix):
            name = ref[len(prefix):]
            return ("", name) if is_tag else (name, "")
    return None


def schedule_event(repository: str, branch: str, sha: str, *, delivery: str = "",
                   default_branch: str = "") -> TriggerEvent:
    """The event of a schedule tick on `branch` at commit `sha` (resolved by the server)."""
    return TriggerEvent(event="schedule", repository=repository, ref=BRANCH_PREFIX + branch, branch=branch,
                        tag="", sha=sha, before="", actor="", pr=None, delivery=delivery,
                        default_branch=default_branch)


def api_event(repository: str, ref: str, sha: str, actor: str, *, delivery: str = "",
              default_branch: str = "") -> TriggerEvent:
    """The event of `POST /api/v1/runs`: `ref` is a full branch or tag ref the server resolved to `sha`.

    `actor` is the API token's name. Raises ValueError for a ref that is neither.
    """
    parts = split_ref(ref)
    if parts is None:
        raise ValueError(f"api_event ref: {ref!r} is neither refs/heads/<branch> nor refs/tags/<tag>")
    return TriggerEvent(event="api", repository=repository, ref=ref, branch=parts[0], tag=parts[1], sha=sha,
                        before="", actor=actor, pr=None, delivery=delivery, default_branch=default_branch)


# -- reading payloads ---------------------------------------------------------------------


class _Payload:
    """Typed access to one payload, with errors that name the forge, the event and the field."""

    def __init__(self, forge: str, event: str, body: object) -> None:
        self.where = f"{forge} {event} payload"
        if not isinstance(body, Mapping):
            raise PayloadError(f"{self.where}: the body is {type(body).__name__}, expected a JSON object")
        self.body = body

    def get(self, path: str) -> Any:
        """The value at a dotted path; None when any part is missing or not an object."""
        value: Any = self.body
        for key in path.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(key)
        return value

    def text(self, path: str, hint: str) -> str:
        value = self.get(path)
        if not isinstance(value, str) or not value:
            raise PayloadError(f"{self.where}: field '{path}' is missing or not a non-empty string ({hint})")
        return value

    def integer(self, path: str, hint: str) -> int:
        value = self.get(path)
        # bool is an int in Python; a JSON `true` is not a pull request number.
        if not isinstance(value, int) or isinstance(value, bool):
            raise PayloadError(f"{self.where}: field '{path}' is missing or not an integer ({hint})")
        return value

    def optional(self, *paths: str) -> str:
        """The first of `paths` that holds a non-empty string, else ""."""
        for path in paths:
            value = self.get(path)
            if isinstance(value, str) and value:
                return value
        return ""


def _no_commit(sha: str) -> bool:
    """The forges' "no commit" marker: 40 (or, for SHA-256 repositories, 64) zeros."""
    return set(sha) == {"0"}


def _previous(sha: str) -> str:
    return "" if _no_commit(sha) else sha


def _push(p: _Payload, *, repository: str, default_branch: str, after: str, sha: str, actor: str,
          deleted: bool, delivery: str) -> ParseResult:
    """The push event shared by the three forges, once each has read its own field names."""
    ref = p.text("ref", "the pushed ref, such as refs/heads/main")
    if deleted or _no_commit(after):
        return Ignored(f"{ref} was deleted; deletions start nothing")
    parts = split_ref(ref)
    if parts is None:
        return Ignored(f"push to {ref}, which is neither a branch nor a tag")
    before = p.get("before")
    if not isinstance(before, str):
        raise PayloadError(f"{p.where}: field 'before' is missing or not a string "
                           "(the previous tip, zeros for a new ref)")
    return TriggerEvent(event="push", repository=repository, ref=ref, branch=parts[0], tag=parts[1], sha=sha,
                        before=_previous(before), actor=actor, pr=None, delivery=delivery,
                        default_branch=default_branch)


def _fork_by_name(head: str, base: str) -> bool:
    return not head or head.casefold() != base.casefold()


# -- GitHub -------------------------------------------------------------------------------


def from_github(event_name: str, payload: object, delivery: str) -> ParseResult:
    """Parse a GitHub delivery: `event_name` is `X-GitHub-Event`, `delivery` is `X-GitHub-Delivery`.

    Handles `push` and `pull_request` (opened, synchronize, reopened); `ping` and every
    other event type are `Ignored`. Raises PayloadError when a needed field is missing.
    """
    if event_name == "ping":
        return Ignored("ping: the webhook is set up; nothing to run")
    if event_name == "push":
        p = _Payload("github", event_name, payload)
        after = p.text("after", "the pushed commit's SHA")
        return _push(p, repository=p.text("repository.full_name", "the repository's owner/name"),
                     default_branch=p.optional("repository.default_branch"),
                     after=after, sha=p.optional("head_commit.id") or after,
                     actor=p.optional("sender.login", "pusher.name"),
                     deleted=p.get("deleted") is True, delivery=delivery)
    if event_name == "pull_request":
        p = _Payload("github", event_name, payload)
        action = p.text("action", "what happened to the pull request, such as opened")
        if action not in GITHUB_PR_ACTIONS:
            return Ignored(f"pull_request action '{action}' starts nothing (only opened, synchronize, reopened)")
        number = p.integer("pull_request.number", "the pull request number")
        repository = p.text("repository.full_name", "the base repository's owner/name")
        head_repository = p.optional("pull_request.head.repo.full_name")
        before = p.get("before") if action == "synchronize" else None
        return TriggerEvent(
            event="pull_request", repository=repository, ref=f"refs/pull/{number}/head",
            branch=p.text("pull_request.head.ref", "the head branch name"), tag="",
            sha=p.text("pull_request.head.sha", "the head commit's SHA"),
            before=_previous(before) if isinstance(before, str) else "",
            actor=p.optional("sender.login"),
            pr=PullRequest(number=number, head_repository=head_repository,
                           fork=_fork_by_name(head_repository, repository),
                           base_branch=p.text("pull_request.base.ref", "the base branch name")),
            delivery=delivery, default_branch=p.optional("repository.default_branch"))
    return Ignored(f"github event '{event_name}' starts nothing (only push and pull_request)")


# -- GitLab -------------------------------------------------------------------------------


def from_gitlab(event_header: str, payload: object, delivery: str) -> ParseResult:
    """Parse a GitLab delivery: `event_header` is `X-Gitlab-Event`, `delivery` is `X-Gitlab-Event-UUID`.

    Handles `Push Hook`, `Tag Push Hook` and `Merge Request Hook` with action open,
    reopen, or update when the update brought new commits (GitLab sets
    `object_attributes.oldrev` exactly then); every other event is `Ignored`.
    """
    if event_header in ("Push Hook", "Tag Push Hook"):
        p = _Payload("gitlab", event_header, payload)
        after = p.text("after", "the pushed commit's SHA")
        return _push(p, repository=p.text("project.path_with_namespace", "the project's group/name"),
                     default_branch=p.optional("project.default_branch"),
                     after=after, sha=p.optional("checkout_sha") or after,
                     actor=p.optional("user_username", "user_name"), deleted=False, delivery=delivery)
    if event_header == "Merge Request Hook":
        p = _Payload("gitlab", event_header, payload)
        action = p.text("object_attributes.action", "what happened to the merge request, such as open")
        if action not in GITLAB_MR_ACTIONS:
            return Ignored(f"merge request action '{action}' starts nothing (only open, update, reopen)")
        oldrev = p.get("object_attributes.oldrev")
        if action == "update" and not (isinstance(oldrev, str) and oldrev):
            return Ignored("merge request update without new commits (title, labels, ...) starts nothing")
        iid = p.integer("object_attributes.iid", "the merge request's project-scoped number")
        source_id = p.integer("object_attributes.source_project_id", "the source project's id")
        target_id = p.integer("object_attributes.target_project_id", "the target project's id")
        head_repository = p.optional("object_attributes.source.path_with_namespace")
        return TriggerEvent(
            event="pull_request", repository=p.text("project.path_with_namespace", "the project's group/name"),
            ref=f"refs/merge-requests/{iid}/head",
            branch=p.text("object_attributes.source_branch", "the source branch name"), tag="",
            sha=p.text("object_attributes.last_commit.id", "the source branch's head commit"),
            before=_previous(oldrev) if isinstance(oldrev, str) else "",
            actor=p.optional("user.username"),
            pr=PullRequest(number=iid, head_repository=head_repository,
                           fork=not head_repository or source_id != target_id,
                           base_branch=p.text("object_attributes.target_branch", "the target branch name")),
            delivery=delivery, default_branch=p.optional("project.default_branch"))
    return Ignored(f"gitlab event '{event_header}' starts nothing (only Push Hook, Tag Push Hook, Merge Request Hook)")


# -- Gitea --------------------------------------------------------------------------------


def from_gitea(event_name: str, payload: object, delivery: str) -> ParseResult:
    """Parse a Gitea delivery: `event_name` is `X-Gitea-Event`, `delivery` is `X-Gitea-Delivery`.

    Handles `push` and `pull_request` (opened, synchronized, reopened — Gitea spells the
    new-commits action `synchronized`); `create`, `delete` and every other event are
    `Ignored` (a new branch or tag also arrives as a `push`).
    """
    if event_name == "push":
        p = _Payload("gitea", event_name, payload)
        after = p.text("after", "the pushed commit's SHA")
        return _push(p, repository=p.text("repository.full_name", "the repository's owner/name"),
                     default_branch=p.optional("repository.default_branch"),
                     after=after, sha=p.optional("head_commit.id") or after,
                     actor=p.optional("sender.login", "pusher.login", "pusher.username"),
                     deleted=False, delivery=delivery)
    if event_name == "pull_request":
        p = _Payload("gitea", event_name, payload)
        action = p.text("action", "what happened to the pull request, such as opened")
        if action not in GITEA_PR_ACTIONS:
            return Ignored(f"pull_request action '{action}' starts nothing (only opened, synchronized, reopened)")
        number = p.integer("number", "the pull request number")
        repository = p.text("repository.full_name", "the base repository's owner/name")
        head_repository = p.optional("pull_request.head.repo.full_name")
        return TriggerEvent(
            event="pull_request", repository=repository, ref=f"refs/pull/{number}/head",
            branch=p.text("pull_request.head.ref", "the head branch name"), tag="",
            sha=p.text("pull_request.head.sha", "the head commit's SHA"), before="",
            actor=p.optional("sender.login"),
            pr=PullRequest(number=number, head_repository=head_repository,
                           fork=_fork_by_name(head_repository, repository),
                           base_branch=p.text("pull_request.base.ref", "the base branch name")),
            delivery=delivery, default_branch=p.optional("repository.default_branch"))
    return Ignored(f"gitea event '{event_name}' starts nothing (only push and pull_request)")
