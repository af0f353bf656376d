"""What started the run, as the compiled plan sees it: the CONVEYOR_* trigger variables,
the `git` expression root, and their `""` values for a run no trigger started."""
from __future__ import annotations

import textwrap

import pytest

from coordinator.frontend import load_text
from coordinator.triggers.events import (
    PullRequest,
    TriggerEvent,
    api_event,
    schedule_event,
    system_variables,
)
from shared import expressions
from shared.plan import Plan

TRIGGER_VARIABLES = ("CONVEYOR_EVENT", "CONVEYOR_REPOSITORY", "CONVEYOR_REF", "CONVEYOR_BRANCH", "CONVEYOR_TAG",
                     "CONVEYOR_COMMIT_SHA", "CONVEYOR_PR_NUMBER")

PUSH = TriggerEvent(event="push", repository="acme/app", ref="refs/heads/main", branch="main", tag="",
                    sha="a" * 40, before="b" * 40, actor="alice", pr=None, delivery="d-1")
TAG = TriggerEvent(event="push", repository="acme/app", ref="refs/tags/v1.2", branch="", tag="v1.2",
                   sha="c" * 40, before="", actor="alice", pr=None, delivery="d-2")
PULL = TriggerEvent(event="pull_request", repository="acme/app", ref="refs/pull/7/head", branch="feature/x",
                    tag="", sha="d" * 40, before="", actor="bob", delivery="d-3",
                    pr=PullRequest(number=7, head_repository="bob/app", fork=True, base_branch="main"))
SCHEDULE = schedule_event("acme/app", "main", "e" * 40)
API = api_event("acme/app", "refs/tags/v2", "f" * 40, "deploy-bot")

PIPELINE = """
name: demo
global_env: {IMAGE_TAG: "${CONVEYOR_TAG:-${CONVEYOR_BRANCH}}"}
concurrency: {group: "${CONVEYOR_REPOSITORY}/${CONVEYOR_BRANCH}", cancel_in_progress: true}
jobs:
  build:
    environment: {WHERE: "${CONVEYOR_BRANCH}@${CONVEYOR_COMMIT_SHA}", NAME: "${{ git.actor }}"}
    steps: [{name: s, script: [make]}]
  deploy:
    depends_on: [build]
    conditional: "git.event == 'push' && git.branch == 'main'"
    steps: [{name: s, script: [make deploy]}]
  review:
    conditional: "${{ git.pr.number > 0 && !git.pr.fork }}"
    steps: [{name: s, script: [make review]}]
"""


def compile_plan(trigger: dict | None, text: str = PIPELINE) -> Plan:
    result = load_text(textwrap.dedent(text).lstrip("\n"), "p.yml", trigger=trigger)
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.plan


def condition(plan: Plan, job: str) -> bool:
    """The job's condition as a worker evaluates it, its dependencies having succeeded."""
    spec = plan.jobs[job]
    context = expressions.Context(env=spec.environment, vars=plan.parameters, pipeline={"name": plan.pipeline},
                                  git=plan.trigger,
                                  dependency_results={dep: ("success", False) for dep in spec.depends_on})
    return expressions.condition_met(spec.conditional, context)


@pytest.mark.parametrize("event", [PUSH, TAG, PULL, SCHEDULE, API], ids=lambda e: f"{e.event}-{e.ref}")
def test_every_job_and_step_gets_the_events_system_variables(event: TriggerEvent) -> None:
    plan = compile_plan(event.to_dict())
    expected = event.system_variables()
    assert set(expected) == set(TRIGGER_VARIABLES)
    for job in plan.jobs.values():
        assert {name: job.environment[name] for name in TRIGGER_VARIABLES} == expected
        for step in job.steps:
            assert {name: step.environment[name] for name in TRIGGER_VARIABLES} == expected


def test_trigger_variables_are_substituted_in_variables_and_the_concurrency_group() -> None:
    plan = compile_plan(PUSH.to_dict())
    build = plan.jobs["build"].environment
    assert build["WHERE"] == "main@" + "a" * 40
    assert build["IMAGE_TAG"] == "main"
    assert build["NAME"] == "alice"
    assert plan.concurrency == {"group": "acme/app/main", "cancel_in_progress": True}
    assert compile_plan(TAG.to_dict()).jobs["build"].environment["IMAGE_TAG"] == "v1.2"


def test_pull_request_values() -> None:
    plan = compile_plan(PULL.to_dict())
    env = plan.jobs["build"].environment
    assert (env["CONVEYOR_EVENT"], env["CONVEYOR_BRANCH"], env["CONVEYOR_REF"], env["CONVEYOR_PR_NUMBER"]) == (
        "pull_request", "feature/x", "refs/pull/7/head", "7")
    assert plan.trigger["pr"] == {"number": 7, "head_repository": "bob/app", "fork": True}


def test_a_condition_on_git_branch_is_true_for_a_push_to_main_only() -> None:
    assert condition(compile_plan(PUSH.to_dict()), "deploy") is True
    dev = TriggerEvent(event="push", repository="acme/app", ref="refs/heads/dev", branch="dev", tag="",
                       sha="a" * 40, before="", actor="alice", pr=None, delivery="d")
    assert condition(compile_plan(dev.to_dict()), "deploy") is False
    assert condition(compile_plan(PULL.to_dict()), "deploy") is False


def test_a_condition_on_git_pr() -> None:
    assert condition(compile_plan(PULL.to_dict()), "review") is False  # from a fork
    own = {**PULL.to_dict(), "pr": {"number": 8, "head_repository": "acme/app", "fork": False}}
    assert condition(compile_plan(own), "review") is True
    assert condition(compile_plan(PUSH.to_dict()), "review") is False  # git.pr is null


def test_without_a_trigger_every_value_is_empty() -> None:
    plan = compile_plan(None)
    for job in plan.jobs.values():
        assert {name: job.environment[name] for name in TRIGGER_VARIABLES} == dict.fromkeys(TRIGGER_VARIABLES, "")
    assert plan.jobs["build"].environment["WHERE"] == "@"
    assert plan.jobs["build"].environment["NAME"] == ""
    assert plan.concurrency == {"group": "/", "cancel_in_progress": True}
    assert plan.trigger is None
    assert condition(plan, "deploy") is False
    assert condition(plan, "review") is False
    assert system_variables(None) == dict.fromkeys(TRIGGER_VARIABLES, "")


def test_git_fields_without_a_trigger_in_templates() -> None:
    plan = compile_plan(None, """
        name: demo
        jobs:
          build:
            environment: {E: "[${{ git.branch }}|${{ git.pr }}|${{ git.pr.number }}|${{ git.event == '' }}]"}
            steps: [{name: s, script: [make]}]
        """)
    assert plan.jobs["build"].environment["E"] == "[|||true]"


def test_a_partial_trigger_document_reads_as_a_full_one() -> None:
    plan = compile_plan({"event": "api", "branch": "main"})
    assert plan.trigger == {**expressions.NO_TRIGGER, "event": "api", "branch": "main"}
    env = plan.jobs["build"].environment
    assert (env["CONVEYOR_EVENT"], env["CONVEYOR_BRANCH"], env["CONVEYOR_TAG"]) == ("api", "main", "")


def test_dollars_in_trigger_values_are_taken_literally() -> None:
    odd = {**PUSH.to_dict(), "branch": "x-${HOME}-$$"}
    assert compile_plan(odd).jobs["build"].environment["CONVEYOR_BRANCH"] == "x-${HOME}-$$"


def test_a_pipeline_variable_overrides_a_trigger_variable() -> None:
    plan = compile_plan(PUSH.to_dict(), """
        name: demo
        global_env: {CONVEYOR_BRANCH: pinned}
        jobs:
          build:
            steps: [{name: s, script: [make]}]
        """)
    assert plan.jobs["build"].environment["CONVEYOR_BRANCH"] == "pinned"


def test_the_no_trigger_root_has_the_keys_of_a_trigger_document() -> None:
    for event in (PUSH, PULL, SCHEDULE, API):
        assert set(expressions.NO_TRIGGER) == set(event.to_dict())


def test_a_misspelt_git_root_in_a_condition_gets_a_suggestion() -> None:
    result = load_text("name: demo\njobs:\n  build:\n    conditional: \"gti.branch == 'main'\"\n"
                       "    steps: [{name: s, script: [make]}]\n", "p.yml")
    assert [str(d) for d in result.diagnostics] == [
        "p.yml:4:18: error: jobs.build.conditional: unknown name 'gti' (did you mean 'git'?) in expression "
        "'gti.branch == 'main''"]
