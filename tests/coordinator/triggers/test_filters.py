"""`on:` parsing, globs, and the decision whether an event starts a run."""
from __future__ import annotations

import re
from typing import Any, Sequence

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.triggers.cron import parse_cron
from coordinator.triggers.events import PullRequest, TriggerEvent
from coordinator.triggers.filters import (
    DEFAULT_ON,
    OnConfig,
    OnError,
    PullRequestFilter,
    PushFilter,
    Schedule,
    compile_glob,
    dotted,
    glob_match,
    match,
    parse_on,
)

# -- globs --------------------------------------------------------------------------------

GLOBS = [
    ("main", "main", True), ("main", "main2", False), ("main", "x/main", False), ("main", "Main", False),
    ("release/*", "release/1.0", True), ("release/*", "release/", True), ("release/*", "release/1.0/hotfix", False),
    ("release/*", "release", False), ("release/**", "release/1.0/hotfix", True),
    ("v*", "v1", True), ("v*", "v1.2.3", True), ("v*", "release-v1", False), ("v*", "v1/rc", False),
    ("*", "main", True), ("*", ".github", True), ("*", "feature/x", False),
    ("**", "feature/x", True), ("**", "a", True),
    ("docs/**", "docs/a.md", True), ("docs/**", "docs/a/b.md", True), ("docs/**", "docs", False),
    ("docs/**", "src/docs/a.md", False),
    ("**/*.md", "README.md", True), ("**/*.md", "a/b/c.md", True), ("**/*.md", "README.mdx", False),
    ("**/*.md", "a.md/b", False),
    ("src/**/test_*.py", "src/test_a.py", True), ("src/**/test_*.py", "src/a/b/test_a.py", True),
    ("src/**/test_*.py", "src/a/atest_a.py", False), ("src/**/test_*.py", "srcx/test_a.py", False),
    ("a/**/b", "a/b", True), ("a/**/b", "a/x/y/b", True), ("a/**/b", "ab", False), ("a/**/b", "a/xb", False),
    ("a**b", "ab", True), ("a**b", "a/x/b", True), ("a**b", "a/x/c", False),
    ("***/x", "x", True), ("***/x", "a/b/x", True),  # three stars are two
    # everything but * is literal, regex metacharacters included
    ("a.b", "a.b", True), ("a.b", "axb", False), ("c++/*", "c++/x", True), ("(x)|y", "(x)|y", True),
    ("f?o", "f?o", True), ("f?o", "foo", False), ("[ab]", "a", False), ("[ab]", "[ab]", True),
    ("*.md", "a\nb.md", True),  # newlines in file names are rare but legal
]


@pytest.mark.parametrize("pattern, name, expected", GLOBS)
def test_glob(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def reference(pattern: str, path: str) -> bool:
    """A segment-by-segment matcher written independently of the regex compiler.

    Only for patterns whose `**` are whole segments: such a segment matches zero or more
    segments, except last, where it matches one or more (`docs/**` is what is in docs).
    """
    def seg(p: str, s: str) -> bool:  # `*` within one segment, by recursion
        if not p:
            return not s
        if p[0] == "*":
            return any(seg(p[1:], s[i:]) for i in range(len(s) + 1))
        return bool(s) and s[0] == p[0] and seg(p[1:], s[1:])

    def walk(ps: list[str], ss: list[str]) -> bool:
        if not ps:
            return not ss
        if ps[0] == "**":
            least = 1 if len(ps) == 1 else 0
            return any(walk(ps[1:], ss[i:]) for i in range(least, len(ss) + 1))
        return bool(ss) and seg(ps[0], ss[0]) and walk(ps[1:], ss[1:])

    return walk(pattern.split("/"), path.split("/"))


SEGMENT = st.text(alphabet="ab.", min_size=1, max_size=3)
PATTERN_SEGMENT = st.one_of(st.just("**"),
                            st.text(alphabet="ab.*", min_size=1, max_size=4).filter(lambda s: "**" not in s))


@settings(max_examples=300, deadline=None)
@given(pattern=st.lists(PATTERN_SEGMENT, min_size=1, max_size=4), path=st.lists(SEGMENT, min_size=1, max_size=5))
def test_glob_agrees_with_a_segment_matcher(pattern: list[str], path: list[str]) -> None:
    text, name = "/".join(pattern), "/".join(path)
    assert glob_match(text, name) is reference(text, name), (text, name)


@given(name=st.text(min_size=1, max_size=20).filter(lambda s: "*" not in s), other=st.text(max_size=20))
def test_a_pattern_without_stars_matches_only_itself(name: str, other: str) -> None:
    assert glob_match(name, name)
    assert glob_match(name, other) is (other == name)


@given(segments=st.lists(st.text(alphabet="abc-_.", min_size=1, max_size=5), min_size=2, max_size=4))
def test_one_star_never_crosses_a_slash(segments: list[str]) -> None:
    name = "/".join(segments)
    assert not glob_match("*", name)
    assert glob_match("*/" * (len(segments) - 1) + "*", name)
    assert glob_match("**", name)


def test_compiled_globs_are_cached_and_anchored_by_fullmatch() -> None:
    assert compile_glob("v*") is compile_glob("v*")
    assert compile_glob("v*").fullmatch("xv1") is None


# -- parsing on: --------------------------------------------------------------------------


def test_no_on_means_every_push_every_pull_request_and_the_api() -> None:
    assert parse_on(None) == DEFAULT_ON == OnConfig(push=PushFilter(), pull_request=PullRequestFilter(),
                                                    schedule=(), api=True)


def test_the_spec_example() -> None:
    on = parse_on({
        "push": {"branches": ["main", "release/*"], "tags": ["v*"], "paths": ["src/**"], "paths_ignore": ["docs/**"]},
        "pull_request": {"branches": ["main"], "paths": ["src/**"]},
        "schedule": [{"cron": "0 3 * * 1-5", "branch": "main", "timezone": "UTC"}],
        "api": True,
    })
    assert on == OnConfig(
        push=PushFilter(branches=("main", "release/*"), tags=("v*",), paths=("src/**",), paths_ignore=("docs/**",)),
        pull_request=PullRequestFilter(branches=("main",), paths=("src/**",)),
        schedule=(Schedule(cron=parse_cron("0 3 * * 1-5"), branch="main", timezone="UTC"),),
        api=True)


def test_listed_events_only_and_empty_entries_filter_nothing() -> None:
    on = parse_on({"push": None, "pull_request": {}, "schedule": [{"cron": "@daily"}]})
    assert on == OnConfig(push=PushFilter(), pull_request=PullRequestFilter(),
                          schedule=(Schedule(cron=parse_cron("@daily"), branch=None, timezone="UTC"),), api=False)


@pytest.mark.parametrize("value, path, words", [
    (["push"], ("on",), ["mapping"]),
    ("push", ("on",), ["mapping"]),
    ({"pushes": {}}, ("on", "pushes"), ["unknown key", "push, pull_request, schedule, api"]),
    ({"push": {"branch": ["main"]}}, ("on", "push", "branch"), ["unknown key", "branches"]),
    ({"pull_request": {"tags": ["v*"]}}, ("on", "pull_request", "tags"), ["unknown key", "branches, paths"]),
    ({"push": []}, ("on", "push"), ["mapping"]),
    ({"push": {"branches": "main"}}, ("on", "push", "branches"), ["list", "[main"]),
    ({"push": {"branches": ["main", 3]}}, ("on", "push", "branches", 1), ["string", "3"]),
    ({"push": {"tags": [""]}}, ("on", "push", "tags", 0), ["non-empty"]),
    ({"push": {"paths": ["/src/**"]}}, ("on", "push", "paths", 0), ["starts with '/'", "'src/**'"]),
    ({"push": {"branches": ["refs/heads/main"]}}, ("on", "push", "branches", 0), ["full ref", "'main'"]),
    ({"schedule": {"cron": "@daily"}}, ("on", "schedule"), ["list"]),
    ({"schedule": [{"branch": "main"}]}, ("on", "schedule", 0), ["missing cron"]),
    ({"schedule": [{"cron": "0 25 * * *"}]}, ("on", "schedule", 0, "cron"), ["hour"]),
    ({"schedule": [{"cron": "@daily", "timezone": "Mars/Olympus"}]}, ("on", "schedule", 0, "timezone"),
     ["Mars/Olympus", "IANA"]),
    ({"schedule": [{"cron": "@daily", "timezone": 1}]}, ("on", "schedule", 0, "timezone"), ["IANA"]),
    ({"schedule": [{"cron": "@daily", "branch": ""}]}, ("on", "schedule", 0, "branch"), ["branch name"]),
    ({"schedule": [{"cron": "@daily", "when": "now"}]}, ("on", "schedule", 0, "when"), ["cron, branch, timezone"]),
    ({"api": "yes"}, ("on", "api"), ["true or false"]),
])
def test_invalid_on_names_the_entry_and_a_fix(value: object, path: tuple, words: list[str]) -> None:
    with pytest.raises(OnError) as caught:
        parse_on(value)
    error = caught.value
    assert error.path == path
    assert str(error).startswith(dotted(path) + ": ") and "\n" not in str(error)
    for word in words:
        assert word in str(error)


def test_dotted_paths() -> None:
    assert dotted(("on", "push", "branches", 1)) == "on.push.branches[1]"
    assert dotted(("on", "schedule", 0, "cron")) == "on.schedule[0].cron"


# -- deciding -----------------------------------------------------------------------------


def push(branch: str = "", tag: str = "", deleted: bool = False) -> TriggerEvent:
    ref = f"refs/tags/{tag}" if tag else f"refs/heads/{branch}"
    return TriggerEvent(event="push", repository="acme/app", ref=ref, branch=branch, tag=tag, sha="a" * 40,
                        before="b" * 40, actor="alice", pr=None, delivery="d", deleted=deleted, default_branch="main")


def pull_request(head: str, base: str) -> TriggerEvent:
    return TriggerEvent(event="pull_request", repository="acme/app", ref="refs/pull/9/head", branch=head, tag="",
                        sha="a" * 40, before="", actor="bob", pr=PullRequest(9, "bob/app", True, base_branch=base),
                        delivery="d", default_branch="main")


def other(event: str, branch: str = "main") -> TriggerEvent:
    return TriggerEvent(event=event, repository="acme/app", ref=f"refs/heads/{branch}",  # type: ignore[arg-type]
                        branch=branch, tag="", sha="a" * 40, before="", actor="", pr=None, delivery="",
                        default_branch="main")


def on(**entries: Any) -> OnConfig:
    return parse_on(entries)


def decide(config: OnConfig, event: TriggerEvent, changed: Sequence[str] | None = None) -> tuple[bool, str]:
    decision = match(config, event, changed)
    assert "\n" not in decision.reason and decision.reason
    return decision.run, decision.reason


def test_default_on_runs_pushes_pull_requests_and_api_but_no_schedule() -> None:
    assert decide(DEFAULT_ON, push("anything/at-all"))[0]
    assert decide(DEFAULT_ON, push(tag="v1"))[0]
    assert decide(DEFAULT_ON, pull_request("feature", "dev"))[0]
    assert decide(DEFAULT_ON, other("api"))[0]
    run, reason = decide(DEFAULT_ON, other("schedule"))
    assert not run and "schedule" in reason


def test_branch_filter_reason_names_the_branch_and_the_list() -> None:
    config = on(push={"branches": ["main", "release/*"]})
    assert decide(config, push("dev")) == (False, "branch 'dev' is not in on.push.branches [main, release/*]")
    assert decide(config, push("release/2.0"))[0]
    assert decide(config, push("main"))[0]


def test_tag_pushes_are_filtered_by_tags_only() -> None:
    both = on(push={"branches": ["main"], "tags": ["v*"]})
    assert decide(both, push(tag="v1.0"))[0]
    run, reason = decide(both, push(tag="nightly"))
    assert not run and reason == "tag 'nightly' is not in on.push.tags [v*]"
    branches_only = on(push={"branches": ["main", "v*"]})
    run, reason = decide(branches_only, push(tag="v1.0"))  # "v*" among branches does not admit tag v1.0
    assert not run and "sets branches but not tags" in reason
    tags_only = on(push={"tags": ["v*"]})
    run, reason = decide(tags_only, push("main"))
    assert not run and "sets tags but not branches" in reason
    assert decide(on(push={"paths": ["src/**"]}), push(tag="v1"), ["docs/x.md"])[0]  # no ref filter at all


def test_tag_pushes_ignore_path_filters() -> None:
    config = on(push={"tags": ["v*"], "paths": ["src/**"]})
    assert decide(config, push(tag="v1"), ["docs/readme.md"])[0]
    assert decide(config, push(tag="v1"), [])[0]


def test_pull_requests_filter_the_base_branch() -> None:
    config = on(pull_request={"branches": ["main"]})
    assert decide(config, pull_request(head="feature", base="main"))[0]
    run, reason = decide(config, pull_request(head="main", base="dev"))
    assert (run, reason) == (False, "base branch 'dev' is not in on.pull_request.branches [main]")


def test_events_not_listed_do_not_run() -> None:
    config = on(push={"branches": ["main"]})
    for event, word in ((pull_request("f", "main"), "pull_request"), (other("api"), "api"),
                        (other("schedule"), "schedule")):
        run, reason = decide(config, event)
        assert not run and word in reason
    run, reason = decide(on(pull_request=None), push("main"))
    assert not run and "push" in reason


PATHS = [
    # (push filter, changed files, runs?, words in the reason)
    ({"paths": ["src/**"]}, ["src/app.py", "README.md"], True, []),
    ({"paths": ["src/**"]}, ["README.md", "docs/a.md"], False,
     ["none of the 2 changed files", "on.push.paths [src/**]"]),
    ({"paths_ignore": ["docs/**", "**/*.md"]}, ["docs/a.md", "README.md"], False,
     ["all 2 changed files match on.push.paths_ignore [docs/**, **/*.md]"]),
    ({"paths_ignore": ["docs/**"]}, ["docs/a.md", "src/app.py"], True, []),
    # both: some changed file must be in paths and outside paths_ignore
    ({"paths": ["src/**"], "paths_ignore": ["src/**/*.md"]}, ["src/notes.md"], False, ["paths_ignore"]),
    ({"paths": ["src/**"], "paths_ignore": ["src/**/*.md"]}, ["src/notes.md", "docs/x.py"], False,
     ["none of the 1 changed files outside paths_ignore", "on.push.paths [src/**]"]),
    ({"paths": ["src/**"], "paths_ignore": ["src/**/*.md"]}, ["src/notes.md", "src/app.py"], True, []),
    ({"paths": ["src/**"]}, [], False, ["no file changed"]),
    ({"paths_ignore": ["docs/**"]}, [], False, ["no file changed"]),
    ({"paths": ["src/**"]}, None, True, ["unknown"]),
    ({}, [], True, []),  # no path filter: files do not matter
]


@pytest.mark.parametrize("entry, changed, runs, words", PATHS)
def test_path_filters(entry: dict, changed: list[str] | None, runs: bool, words: list[str]) -> None:
    run, reason = decide(on(push=entry), push("main"), changed)
    assert run is runs, reason
    for word in words:
        assert word in reason


def test_pull_request_path_filters_name_their_section() -> None:
    run, reason = decide(on(pull_request={"paths": ["src/**"]}), pull_request("f", "main"), ["docs/a.md"])
    assert not run and "on.pull_request.paths [src/**]" in reason and "#9" in reason


def test_schedules_run_on_their_branch_the_default_one_when_unset() -> None:
    config = on(schedule=[{"cron": "@daily"}, {"cron": "@hourly", "branch": "release/1.x"}])
    assert decide(config, other("schedule", "main"))[0]  # the entry without branch: default branch main
    assert decide(config, other("schedule", "release/1.x"))[0]
    run, reason = decide(config, other("schedule", "dev"))
    assert not run and "release/1.x" in reason


def test_api_needs_api_true_once_on_is_present() -> None:
    assert decide(on(api=True), other("api"))[0]
    run, reason = decide(on(api=False), other("api"))
    assert not run and "api" in reason


def test_a_deleted_ref_never_runs() -> None:
    run, reason = decide(DEFAULT_ON, push("main", deleted=True))
    assert not run and "deleted" in reason


@settings(max_examples=100, deadline=None)
@given(branches=st.none() | st.lists(st.sampled_from(["main", "release/*", "v*", "**"]), max_size=3),
       tags=st.none() | st.lists(st.sampled_from(["v*", "*", "release/*"]), max_size=2),
       name=st.sampled_from(["main", "v1", "release/1", "release/1/x", "dev"]), is_tag=st.booleans())
def test_push_decision_follows_the_rules_table(branches, tags, name, is_tag) -> None:
    config = on(push={k: v for k, v in (("branches", branches), ("tags", tags)) if v is not None})
    event = push(tag=name) if is_tag else push(branch=name)
    mine, theirs = (tags, branches) if is_tag else (branches, tags)
    if mine is None:
        expected = theirs is None
    else:
        expected = any(re.fullmatch(compile_glob(p), name) for p in mine)
    assert match(config, event, None).run is expected
