"""The pipeline's `on:` mapping, and whether a trigger event starts a run of it.

`parse_on(value)` turns the loaded `on:` value into an `OnConfig` (raising `OnError` with
the path of the bad entry); `match(on, event, changed_paths)` decides, and its
`Decision.reason` says in one line why an event was filtered out (the server answers
200 `{"runs": [], "ignored": reason}`).

The rules, where the spec (server.md, "`on:` in the pipeline file") leaves a choice:

| situation | runs? | why |
|---|---|---|
| no `on:` (or `on: null`) | every push, every pull request, the API; no schedule | spec |
| `on:` present | only the events it lists; `api` only with `api: true` | an explicit list is the whole list |
| `push: null` / `push: {}` | every push to any branch or tag | an entry with no filter filters nothing |
| branch push, `branches` set | the branch matches one of them | |
| branch push, only `tags` set | no | GitHub: a filter on one ref kind excludes the other |
| tag push, `tags` set | the tag matches one of them | |
| tag push, only `branches` set | no | GitHub, as above |
| tag push with `paths`/`paths_ignore` | paths are not checked | GitHub: a tag points at a commit, it changes no files |
| pull request, `branches` set | the BASE branch (the one merged into) matches | GitHub |
| `paths` and `paths_ignore` both set | some changed file matches `paths` and not `paths_ignore` | GitHub forbids both; this is the natural combination |
| only `paths_ignore` | some changed file does not match it | GitHub |
| path filters, changed files unknown (`changed_paths` None) | yes, filters not applied | the server could not diff (history too shallow, diff too large): run rather than silently skip |
| path filters, no file changed (`[]`) | no | nothing matched |
| schedule event | its branch is the `branch` of one `schedule` entry (the default branch when unset) | |
| a deleted ref | no | nothing to build |

Globs (`compile_glob`): `*` matches within one path segment (not `/`), `**` matches across
segments; every other character is literal (`?`, `[`, `{` included; git forbids them in
ref names anyway). Matching is case-sensitive and covers the whole name.

| pattern | matches | does not match |
|---|---|---|
| `main` | `main` | `main2`, `x/main` |
| `release/*` | `release/1.0` | `release/1.0/hotfix`, `release` |
| `v*` | `v1`, `v1.2.3` | `release-v1` |
| `*` | `main`, `.github` | `feature/x` |
| `docs/**` | `docs/a.md`, `docs/a/b.md` | `docs` (a file named docs), `src/docs/a.md` |
| `**/*.md` | `README.md`, `a/b/c.md` | `README.mdx` |
| `src/**/test_*.py` | `src/test_a.py`, `src/a/b/test_a.py` | `src/a/atest_a.py` |
| `a**b` | `ab`, `a/x/b` (not a whole segment: any characters) | `a/x/c` |
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

from coordinator.triggers.cron import CronError, CronExpr, parse_cron, zone
from coordinator.triggers.events import TriggerEvent

Path = tuple[str | int, ...]  # as coordinator/frontend/yaml_source.Path, to look up line:col


class OnError(ValueError):
    """An invalid `on:` entry. `path` is its place in the pipeline document, e.g. ("on", "push", "branches", 1).

    For an unknown key (the last part of `path`), `allowed` lists the keys allowed
    there, so the pipeline front end can suggest the one that was meant.
    """

    def __init__(self, path: Path, message: str, allowed: tuple[str, ...] = ()) -> None:
        self.path = path
        self.message = message
        self.allowed = allowed
        super().__init__(f"{dotted(path)}: {message}")


def dotted(path: Path) -> str:
    """("on", "push", "branches", 1) -> "on.push.branches[1]"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# -- globs --------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regular expression of a glob (see the module docstring); match it with `fullmatch`.

    A run of two or more `*` is `**`. `**/` at the start of a segment matches zero or more
    whole segments (so `**/*.md` matches `README.md`); any other `**` matches any
    characters, `/` included.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "*":
            j = pattern.find("*", i)
            j = n if j < 0 else j
            out.append(re.escape(pattern[i:j]))
            i = j
            continue
        j = i
        while j < n and pattern[j] == "*":
            j += 1
        if j - i == 1:
            out.append("[^/]*")
        elif (i == 0 or pattern[i - 1] == "/") and j < n and pattern[j] == "/":
            out.append("(?:.*/)?")
            j += 1  # the "/" is part of the optional group
        else:
            out.append(".*")
        i = j
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """Does the whole `name` (a branch, tag, or repository-relative path) match the glob?"""
    return compile_glob(pattern).fullmatch(name) is not None


def _any(patterns: Sequence[str], name: str) -> bool:
    return any(glob_match(p, name) for p in patterns)


# -- the configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class PushFilter:
    """`on.push`; None in a field means "not set" (which differs from an empty list)."""

    branches: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    paths_ignore: tuple[str, ...] | None = None


@dataclass(frozen=True)
class PullRequestFilter:
    """`on.pull_request`; `branches` filters the base branch."""

    branches: tuple[str, ...] | None = None
    paths: tuple[str, ...] | None = None
    paths_ignore: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Schedule:
    """One `on.schedule` entry. `branch` None means the repository's default branch."""

    cron: CronExpr
    branch: str | None = None
    timezone: str = "UTC"


@dataclass(frozen=True)
class OnConfig:
    """Which events start the pipeline: None for push/pull_request means "not listed"."""

    push: PushFilter | None = None
    pull_request: PullRequestFilter | None = None
    schedule: tuple[Schedule, ...] = ()
    api: bool = False


DEFAULT_ON = OnConfig(push=PushFilter(), pull_request=PullRequestFilter(), schedule=(), api=True)

_EVENT_KEYS = ("push", "pull_request", "schedule", "api")
_PUSH_KEYS = ("branches", "tags", "paths", "paths_ignore")
_PR_KEYS = ("branches", "paths", "paths_ignore")
_SCHEDULE_KEYS = ("cron", "branch", "timezone")
_PATH_KEYS = ("paths", "paths_ignore")


def parse_on(value: object) -> OnConfig:
    """The `OnConfig` of a pipeline's loaded `on:` value (None when the key is absent or null).

    Raises OnError (with `.path` for the source map) for a wrong type, an unknown key, an
    empty or absolute glob, a bad cron expression or an unknown time zone.
    """
    if value is None:
        return DEFAULT_ON
    root: Path = ("on",)
    mapping = _mapping(root, value, "a mapping of events, such as {push: {branches: [main]}}")
    _known_keys(root, mapping, _EVENT_KEYS)
    push = pull_request = None
    if "push" in mapping:
        fields = _filter_fields(root + ("push",), mapping["push"], _PUSH_KEYS)
        push = PushFilter(**fields)
    if "pull_request" in mapping:
        fields = _filter_fields(root + ("pull_request",), mapping["pull_request"], _PR_KEYS)
        pull_request = PullRequestFilter(**fields)
    schedule: tuple[Schedule, ...] = ()
    if "schedule" in mapping:
        schedule = _schedules(root + ("schedule",), mapping["schedule"])
    api = mapping.get("api", False)
    if not isinstance(api, bool):
        raise OnError(root + ("api",), f"expected true or false, got {_shown(api)}")
    return OnConfig(push=push, pull_request=pull_request, schedule=schedule, api=api)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mapping(path: Path, value: object, hint: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise OnError(path, f"expected {hint}, got {_shown(value)}")
    return value


def _known_keys(path: Path, mapping: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for key in mapping:
        if key not in allowed:
            raise OnError(path + (str(key),), f"unknown key; allowed here: {', '.join(allowed)}", tuple(allowed))


def _filter_fields(path: Path, value: object, allowed: Sequence[str]) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    mapping = _mapping(path, value, f"a mapping with {', '.join(allowed)} (or nothing, for every event)")
    _known_keys(path, mapping, allowed)
    return {key: _globs(path + (key,), mapping[key], key in _PATH_KEYS) for key in allowed if key in mapping}


def _globs(path: Path, value: object, is_path: bool) -> tuple[str, ...]:
    example = '["src/**"]' if is_path else '[main, "release/*"]'
    if not isinstance(value, list):
        raise OnError(path, f"expected a list of globs such as {example}, got {_shown(value)}")
    out = []
    for index, item in enumerate(value):
        where = path + (index,)
        if not isinstance(item, str) or not item:
            raise OnError(where, f"expected a non-empty string glob such as {example}, got {_shown(item)}")
        if is_path and item.startswith("/"):
            raise OnError(where, f"'{item}' starts with '/'; paths are relative to the repository root, "
                                 f"write '{item.lstrip('/')}'")
        if not is_path and item.startswith("refs/"):
            raise OnError(where, f"'{item}' is a full ref; filters match the short name, write "
                                 f"'{item.split('/', 2)[-1]}'")
        out.append(item)
    return tuple(out)


def _schedules(path: Path, value: object) -> tuple[Schedule, ...]:
    if not isinstance(value, list):
        raise OnError(path, f"expected a list of {{cron, branch, timezone}} entries, got {_shown(value)}")
    out = []
    for index, item in enumerate(value):
        where = path + (index,)
        entry = _mapping(where, item, "a mapping such as {cron: \"0 3 * * 1-5\", branch: main, timezone: UTC}")
        _known_keys(where, entry, _SCHEDULE_KEYS)
        if "cron" not in entry:
            raise OnError(where, "missing cron, such as cron: \"0 3 * * 1-5\"")
        try:
            cron = parse_cron(entry["cron"])
        except CronError as exc:
            raise OnError(where + ("cron",), str(exc)) from None
        branch = entry.get("branch")
        if branch is not None and (not isinstance(branch, str) or not branch):
            raise OnError(where + ("branch",), f"expected a branch name such as main, got {_shown(branch)}")
        tz = entry.get("timezone", "UTC")
        if not isinstance(tz, str):
            raise OnError(where + ("timezone",), f"expected an IANA time zone name such as UTC, got {_shown(tz)}")
        try:
            zone(tz)
        except CronError as exc:
            raise OnError(where + ("timezone",), str(exc)) from None
        out.append(Schedule(cron=cron, branch=branch, timezone=tz))
    return tuple(out)


# -- deciding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """Whether the event starts a run; `reason` explains it in one line (mostly for `run=False`)."""

    run: bool
    reason: str


@dataclass(frozen=True)
class _Paths:
    """The path filters of one `on:` entry, named for messages."""

    section: str
    paths: tuple[str, ...] | None
    paths_ignore: tuple[str, ...] | None


def _listed(patterns: Sequence[str]) -> str:
    return "[" + ", ".join(patterns) + "]"


def match(on: OnConfig, event: TriggerEvent, changed_paths: Sequence[str] | None) -> Decision:
    """Does `event` start a run of a pipeline whose `on:` is `on`?

    `changed_paths` are the repository-relative files changed by the event (push: between
    `before` and `sha`, or since the merge base with the default branch for a new
    branch; pull request: the whole pull request, merge base of the base branch to its
    head), or None when unknown — then path filters do not stop the run. They are only
    looked at when a path filter applies.
    """
    if event.deleted:
        return Decision(False, f"{event.ref} was deleted; there is nothing to build")
    if event.event == "push":
        return _match_push(on.push, event, changed_paths)
    if event.event == "pull_request":
        return _match_pull_request(on.pull_request, event, changed_paths)
    if event.event == "schedule":
        return _match_schedule(on.schedule, event)
    if on.api:
        return Decision(True, "on.api is true")
    return Decision(False, "on: does not set api: true, so API calls do not start this pipeline")


def _match_push(push: PushFilter | None, event: TriggerEvent, changed: Sequence[str] | None) -> Decision:
    if push is None:
        return Decision(False, "on: has no push entry, so pushes do not start this pipeline")
    if event.tag:
        if push.tags is None:
            if push.branches is not None:
                return Decision(False, f"tag '{event.tag}': on.push sets branches but not tags, "
                                       "so tag pushes do not run")
            return Decision(True, f"tag '{event.tag}': on.push has no ref filter")
        if not _any(push.tags, event.tag):
            return Decision(False, f"tag '{event.tag}' is not in on.push.tags {_listed(push.tags)}")
        return Decision(True, f"tag '{event.tag}' matches on.push.tags")
    if push.branches is None:
        if push.tags is not None:
            return Decision(False, f"branch '{event.branch}': on.push sets tags but not branches, "
                                   "so branch pushes do not run")
    elif not _any(push.branches, event.branch):
        return Decision(False, f"branch '{event.branch}' is not in on.push.branches {_listed(push.branches)}")
    return _match_paths(_Paths("on.push", push.paths, push.paths_ignore), changed,
                        f"push to branch '{event.branch}'")


def _match_pull_request(pr_filter: PullRequestFilter | None, event: TriggerEvent,
                        changed: Sequence[str] | None) -> Decision:
    if pr_filter is None:
        return Decision(False, "on: has no pull_request entry, so pull requests do not start this pipeline")
    assert event.pr is not None  # TriggerEvent guarantees it for pull_request events
    base = event.pr.base_branch
    if pr_filter.branches is not None and not _any(pr_filter.branches, base):
        return Decision(False, f"base branch '{base}' is not in on.pull_request.branches "
                               f"{_listed(pr_filter.branches)}")
    return _match_paths(_Paths("on.pull_request", pr_filter.paths, pr_filter.paths_ignore), changed,
                        f"pull request #{event.pr.number} into '{base}'")


def _match_paths(filters: _Paths, changed: Sequence[str] | None, what: str) -> Decision:
    if filters.paths is None and filters.paths_ignore is None:
        return Decision(True, f"{what} matches {filters.section}")
    if changed is None:
        return Decision(True, f"{what}: changed files unknown, so path filters are not applied")
    if not changed:
        return Decision(False, f"{what}: no file changed, so {filters.section} path filters match nothing")
    relevant = [p for p in changed if filters.paths_ignore is None or not _any(filters.paths_ignore, p)]
    if filters.paths_ignore is not None and not relevant:
        return Decision(False, f"{what}: all {len(changed)} changed files match {filters.section}.paths_ignore "
                               f"{_listed(filters.paths_ignore)}")
    if filters.paths is not None and not any(_any(filters.paths, p) for p in relevant):
        outside = " outside paths_ignore" if filters.paths_ignore is not None else ""
        return Decision(False, f"{what}: none of the {len(relevant)} changed files{outside} matches "
                               f"{filters.section}.paths {_listed(filters.paths)}")
    return Decision(True, f"{what} matches {filters.section} and its path filters")


def _match_schedule(schedules: tuple[Schedule, ...], event: TriggerEvent) -> Decision:
    if not schedules:
        return Decision(False, "on: has no schedule entry, so schedules do not start this pipeline")
    branches = [s.branch or event.default_branch for s in schedules]
    if event.branch in branches:
        return Decision(True, f"branch '{event.branch}' has an on.schedule entry")
    return Decision(False, f"branch '{event.branch}' has no on.schedule entry (schedules run on "
                           f"{_listed([b or '<default branch>' for b in branches])})")
