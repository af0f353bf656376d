"""`on:` and `concurrency:` in the pipeline file: what loads, and what a user sees when it
does not (`file:line:col: error: message (hint)`)."""
from __future__ import annotations

import textwrap

import pytest

from coordinator.frontend import load_text, schema
from coordinator.frontend.fastcheck import conforms
from coordinator.triggers.cron import parse_cron
from coordinator.triggers.events import PullRequest, TriggerEvent
from coordinator.triggers.filters import (
    DEFAULT_ON,
    OnConfig,
    PullRequestFilter,
    PushFilter,
    Schedule,
    match,
    parse_on,
)
from shared.plan import Plan

JOBS = """
jobs:
  build:
    steps: [{name: s, script: [make]}]
"""


def load(top: str, **kwargs):
    """A one-job pipeline with `top` as its other top-level keys (line 2 onwards)."""
    text = "name: demo\n" + textwrap.dedent(top).lstrip("\n") + JOBS.lstrip("\n")
    return load_text(text, "p.yml", **kwargs)


def errors(top: str) -> list[str]:
    return [str(d) for d in load(top).diagnostics if d.severity == "error"]


def push(branch: str = "", tag: str = "") -> TriggerEvent:
    ref = f"refs/tags/{tag}" if tag else f"refs/heads/{branch}"
    return TriggerEvent(event="push", repository="acme/app", ref=ref, branch=branch, tag=tag, sha="a" * 40,
                        before="", actor="alice", pr=None, delivery="d")


# -- valid `on:` ---------------------------------------------------------------------


def test_the_spec_example_loads_and_is_parsed_as_parse_on_parses_it() -> None:
    result = load("""
        on:
          push: {branches: [main, "release/*"], tags: ["v*"], paths: ["src/**"], paths_ignore: ["docs/**"]}
          pull_request: {branches: [main], paths: ["src/**"]}
          schedule: [{cron: "0 3 * * 1-5", branch: main, timezone: UTC}]
          api: true
        concurrency: {group: "${CONVEYOR_BRANCH}", cancel_in_progress: true}
        """)
    assert result.ok, [str(d) for d in result.diagnostics]
    assert result.on == OnConfig(
        push=PushFilter(branches=("main", "release/*"), tags=("v*",), paths=("src/**",), paths_ignore=("docs/**",)),
        pull_request=PullRequestFilter(branches=("main",), paths=("src/**",)),
        schedule=(Schedule(cron=parse_cron("0 3 * * 1-5"), branch="main", timezone="UTC"),),
        api=True,
    )


@pytest.mark.parametrize("top", ["", "on:\n", "on: null\n"])
def test_no_on_means_the_default(top: str) -> None:
    result = load(top)
    assert result.ok and result.on == DEFAULT_ON


@pytest.mark.parametrize("top, expected", [
    ("on: {push: }\n", OnConfig(push=PushFilter())),
    ("on: {push: {}}\n", OnConfig(push=PushFilter())),
    ("on: {pull_request: {branches: [main]}}\n", OnConfig(pull_request=PullRequestFilter(branches=("main",)))),
    ("on: {api: true}\n", OnConfig(api=True)),
    ("on: {api: false, schedule: []}\n", OnConfig()),
    ("on:\n  schedule:\n    - cron: '@daily'\n      timezone: Europe/Berlin\n",
     OnConfig(schedule=(Schedule(cron=parse_cron("@daily"), timezone="Europe/Berlin"),))),
])
def test_valid_forms(top: str, expected: OnConfig) -> None:
    result = load(top)
    assert result.ok, [str(d) for d in result.diagnostics]
    assert result.on == expected


def test_on_is_a_text_key_as_in_yaml_1_2() -> None:
    # In YAML 1.1 `on` is the boolean true: the key would be lost or refused.
    result = load("on: {push: {branches: [main]}}\n")
    assert result.ok and result.on == parse_on({"push": {"branches": ["main"]}})
    assert match(result.on, push("main"), None).run
    assert not match(result.on, push("dev"), None).run
    assert not match(result.on, push(tag="v1"), None).run


def test_the_server_can_filter_with_on_even_when_a_job_is_invalid() -> None:
    text = "name: demo\non: {push: {branches: [main]}}\njobs:\n  build:\n    steps: [{name: s}]\n"
    result = load_text(text, "p.yml")
    assert not result.ok and result.plan is None
    assert result.on == OnConfig(push=PushFilter(branches=("main",)))


# -- invalid `on:` -------------------------------------------------------------------


ON_ERRORS = {
    "unknown event with did-you-mean": (
        """
        on:
          pushh: {branches: [main]}
        """,
        ["p.yml:3:3: error: unknown field 'pushh' in on (did you mean 'push'?)"],
    ),
    "unknown filter with did-you-mean": (
        """
        on:
          push: {branches: [main], tag: ["v*"]}
        """,
        ["p.yml:3:28: error: unknown field 'tag' in on.push (did you mean 'tags'?)"],
    ),
    "unknown key without a close match lists the allowed ones": (
        """
        on:
          schedule: [{cron: "0 3 * * *", xyz: 1}]
        """,
        ["p.yml:3:34: error: unknown field 'xyz' in on.schedule[0] (allowed here: cron, branch, timezone)"],
    ),
    "bad glob: absolute path": (
        """
        on:
          push:
            paths: ["src/**", "/docs/**"]
        """,
        ["p.yml:4:23: error: on.push.paths[1]: '/docs/**' starts with '/'; paths are relative to the "
         "repository root, write 'docs/**'"],
    ),
    "bad glob: full ref": (
        """
        on:
          pull_request: {branches: [refs/heads/main]}
        """,
        ["p.yml:3:29: error: on.pull_request.branches[0]: 'refs/heads/main' is a full ref; filters match the "
         "short name, write 'main'"],
    ),
    "bad glob: empty": (
        """
        on:
          push: {tags: [""]}
        """,
        ["p.yml:3:17: error: on.push.tags[0]: expected a non-empty string glob such as [main, \"release/*\"], "
         "got ''"],
    ),
    "bad cron": (
        """
        on:
          schedule:
            - cron: "61 * * * *"
        """,
        ["p.yml:4:13: error: on.schedule[0].cron: cron expression '61 * * * *': minute field '61': 61 is out "
         "of range 0-59 (five fields: minute hour day-of-month month day-of-week, such as \"0 3 * * 1-5\")"],
    ),
    "cron that never fires": (
        """
        on:
          schedule: [{cron: "0 0 30 2 *"}]
        """,
        None,  # checked below: it names the entry, whatever the words
    ),
    "cron that is not text": (
        """
        on:
          schedule: [{cron: 5}]
        """,
        ["p.yml:3:21: error: on.schedule[0].cron: cron expression must be a string such as '0 3 * * 1-5', "
         "got int (quote it: cron: \"0 3 * * 1-5\")"],
    ),
    "schedule without cron": (
        """
        on:
          schedule:
            - branch: main
        """,
        ["p.yml:4:7: error: on.schedule[0]: missing cron, such as cron: \"0 3 * * 1-5\""],
    ),
    "unknown time zone with did-you-mean": (
        """
        on:
          schedule: [{cron: "0 3 * * *", timezone: Europe/Berln}]
        """,
        ["p.yml:3:44: error: on.schedule[0].timezone: timezone 'Europe/Berln' is unknown; use an IANA name "
         "such as 'UTC' or 'Europe/Berlin' (did you mean 'Europe/Berlin'?)"],
    ),
    "api as text": (
        """
        on:
          api: "yes"
        """,
        ["p.yml:3:8: error: on.api: expected true or false, got 'yes' "
         "(use true or false: YAML 1.2 reads yes, no, on and off as text)"],
    ),
    "api: yes is text in YAML 1.2": (
        """
        on: {api: yes}
        """,
        ["p.yml:2:11: error: on.api: expected true or false, got 'yes' "
         "(use true or false: YAML 1.2 reads yes, no, on and off as text)"],
    ),
    "on as a list": (
        """
        on: [push, pull_request]
        """,
        ["p.yml:2:5: error: on: expected a mapping of events, such as {push: {branches: [main]}}, "
         "got ['push', 'pull_request']"],
    ),
    "filter as text, not a list": (
        """
        on:
          push:
            branches: main
        """,
        ["p.yml:4:15: error: on.push.branches: expected a list of globs such as [main, \"release/*\"], "
         "got 'main'"],
    ),
    "event as a list": (
        """
        on:
          push: [main]
        """,
        ["p.yml:3:9: error: on.push: expected a mapping with branches, tags, paths, paths_ignore (or nothing, "
         "for every event), got ['main']"],
    ),
}


@pytest.mark.parametrize("case", ON_ERRORS, ids=list(ON_ERRORS))
def test_invalid_on(case: str) -> None:
    top, expected = ON_ERRORS[case]
    result = load(top)
    assert result.plan is None and result.on is None
    if expected is not None:
        assert [str(d) for d in result.diagnostics if d.severity == "error"] == expected


def test_a_misspelt_on_key_is_an_unknown_field() -> None:
    assert errors("onn: {push: }\n") == ["p.yml:2:1: error: unknown field 'onn' in <document> (did you mean 'on'?)"]


def test_a_cron_that_never_fires_is_refused_at_its_entry() -> None:
    [error] = load(ON_ERRORS["cron that never fires"][0]).diagnostics
    assert (error.position.line, error.position.col) == (3, 21)
    assert error.message.startswith("on.schedule[0].cron: ") and "0 0 30 2 *" in error.message


def test_every_problem_of_on_is_reported_in_one_pass() -> None:
    found = errors("""
        on:
          push: {branches: [main], tag: ["v*"]}
          pull_request: {paths: ["/src/**"]}
          schedule:
            - {cron: "61 * * * *"}
            - {cron: "0 3 * * *"}
            - {cron: "0 3 * * *", timezone: Mars/Olympus}
          api: "no"
          pul_request: {}
        """)
    assert [line.split(": error: ")[0] for line in found] == [
        "p.yml:3:28", "p.yml:4:26", "p.yml:6:14", "p.yml:8:37", "p.yml:9:8", "p.yml:10:3"]
    assert found[-1] == "p.yml:10:3: error: unknown field 'pul_request' in on (did you mean 'pull_request'?)"
    assert found[3].startswith("p.yml:8:37: error: on.schedule[2].timezone: timezone 'Mars/Olympus' is unknown")


def test_a_non_text_key_is_reported_once_and_the_rest_still_checked() -> None:
    assert errors("""
        on:
          true: {}
          api: 1
        """) == [
        "p.yml:3:3: error: on: mapping key true must be text (quote it)",
        "p.yml:4:8: error: on.api: expected true or false, got 1",
    ]


# -- concurrency ---------------------------------------------------------------------


def test_concurrency_mapping_string_and_default() -> None:
    full = load('concurrency: {group: "deploy-${CONVEYOR_PIPELINE}", cancel_in_progress: true}\n')
    assert full.ok and full.plan.concurrency == {"group": "deploy-demo", "cancel_in_progress": True}
    short = load("concurrency: deploy\n")
    assert short.ok and short.plan.concurrency == {"group": "deploy", "cancel_in_progress": False}
    default = load("concurrency: {group: deploy}\n")
    assert default.ok and default.plan.concurrency == {"group": "deploy", "cancel_in_progress": False}
    assert load("").plan.concurrency is None


def test_concurrency_group_sees_parameters_global_env_and_expressions() -> None:
    result = load("""
        global_env: {STAGE: prod}
        concurrency: {group: "${STAGE}-${REGION}-${{ pipeline.name }}"}
        """, parameters={"REGION": "eu"})
    assert result.ok and result.plan.concurrency["group"] == "prod-eu-demo"


CONCURRENCY_ERRORS = {
    "unknown field": (
        "concurrency: {group: x, cancel_in_progres: true}\n",
        ["p.yml:2:25: error: unknown field 'cancel_in_progres' in concurrency (did you mean 'cancel_in_progress'?)"],
    ),
    "missing group": (
        "concurrency: {cancel_in_progress: true}\n",
        ["p.yml:2:14: error: concurrency: missing required field 'group'"],
    ),
    "empty group": (
        'concurrency: {group: ""}\n',
        ["p.yml:2:22: error: concurrency.group: must not be empty"],
    ),
    "cancel_in_progress as text": (
        'concurrency: {group: x, cancel_in_progress: "yes"}\n',
        ["p.yml:2:45: error: concurrency.cancel_in_progress: must be true or false, got 'yes'"],
    ),
    "wrong type": (
        "concurrency: 3\n",
        ["p.yml:2:14: error: concurrency: must be a string or a mapping, got 3 (quote it to make it text: '3')"],
    ),
    "undefined variable in the short form": (
        'concurrency: "${BRANCH}"\n',
        ["p.yml:2:14: error: concurrency: undefined variable 'BRANCH'"],
    ),
    "undefined variable in the group": (
        "concurrency:\n  group: ${CONVEYOR_BRANH}\n",
        ["p.yml:3:10: error: concurrency.group: undefined variable 'CONVEYOR_BRANH' (did you mean "
         "'CONVEYOR_BRANCH'?)"],
    ),
    "misspelt top-level key": (
        "concurency: x\n",
        ["p.yml:2:1: error: unknown field 'concurency' in <document> (did you mean 'concurrency'?)"],
    ),
}


@pytest.mark.parametrize("case", CONCURRENCY_ERRORS, ids=list(CONCURRENCY_ERRORS))
def test_invalid_concurrency(case: str) -> None:
    top, expected = CONCURRENCY_ERRORS[case]
    assert errors(top) == expected


# -- the plan --------------------------------------------------------------------------


def test_concurrency_and_trigger_round_trip_through_plan_dicts() -> None:
    pr = TriggerEvent(event="pull_request", repository="acme/app", ref="refs/pull/7/head", branch="feature",
                      tag="", sha="c" * 40, before="", actor="bob", delivery="d",
                      pr=PullRequest(number=7, head_repository="bob/app", fork=True, base_branch="main"))
    plan = load('concurrency: {group: "pr-${CONVEYOR_PR_NUMBER}", cancel_in_progress: true}\n',
                trigger=pr.to_dict()).plan
    again = Plan.from_dict(plan.to_dict())
    assert again.concurrency == {"group": "pr-7", "cancel_in_progress": True}
    assert again.trigger == pr.to_dict()
    assert again == plan


def test_plan_dicts_written_before_concurrency_existed_still_load() -> None:
    data = load("").plan.to_dict()
    del data["concurrency"], data["trigger"]
    plan = Plan.from_dict(data)
    assert plan.concurrency is None and plan.trigger is None
    assert plan.jobs["build"].steps[0].script == ("make",)


@pytest.mark.parametrize("top", [
    {"on": None}, {"on": {"push": None}}, {"on": ["push"]}, {"on": "push"},
    {"concurrency": "x"}, {"concurrency": ""}, {"concurrency": None}, {"concurrency": 3}, {"concurrency": {}},
    {"concurrency": {"group": "x"}}, {"concurrency": {"group": "x", "cancel_in_progress": False}},
    {"concurrency": {"group": ""}}, {"concurrency": {"group": 1}}, {"concurrency": {"group": "x", "y": 1}},
    {"concurrency": {"cancel_in_progress": True}}, {"concurrency": ["x"]},
])
def test_the_fast_path_agrees_with_cerberus_on_the_new_keys(top: dict) -> None:
    document = {"name": "demo", "jobs": {"build": {}}, **top}
    assert conforms(schema.PIPELINE, document) == schema._pipeline_validator.validate(document, normalize=False)
