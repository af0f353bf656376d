"""`runs_on:` and `queue_timeout:` (docs/pipeline-format.md, "Worker labels"): what compiles,
and the exact `file:line:col` diagnostics of every mistake."""
from __future__ import annotations

import textwrap

import pytest

from coordinator.frontend import load_text
from shared.plan import Plan
from shared.worker_labels import DEFAULT_QUEUE_TIMEOUT


def load(text: str, **kwargs):
    return load_text(textwrap.dedent(text).lstrip("\n"), "p.yml", **kwargs)


def compile_ok(text: str, **kwargs) -> Plan:
    result = load(text, **kwargs)
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.plan


def diagnostics(text: str, severity: str = "error") -> list[str]:
    return [str(d) for d in load(text).diagnostics if d.severity == severity]


def test_runs_on_compiles_to_sorted_unique_labels_and_queue_timeout_to_seconds() -> None:
    plan = compile_ok("""
        name: demo
        jobs:
          train:
            runs_on: [linux, gpu]
            queue_timeout: 90m
            steps: [{name: s, script: [x]}]
          one: {runs_on: gpu, queue_timeout: 45, steps: [{name: s, script: [x]}]}
          any: {steps: [{name: s, script: [x]}]}
    """)
    assert (plan.jobs["train"].runs_on, plan.jobs["train"].queue_timeout) == (("gpu", "linux"), 5400)
    assert (plan.jobs["one"].runs_on, plan.jobs["one"].queue_timeout) == (("gpu",), 45)
    assert (plan.jobs["any"].runs_on, plan.jobs["any"].queue_timeout) == ((), DEFAULT_QUEUE_TIMEOUT)
    # The plan round-trips through the state store's JSON.
    again = Plan.from_dict(plan.to_dict())
    assert again.jobs["train"].runs_on == ("gpu", "linux") and again.jobs["train"].queue_timeout == 5400


def test_a_plan_written_before_runs_on_existed_still_loads() -> None:
    data = compile_ok("name: d\njobs: {a: {steps: [{name: s, script: [x]}]}}").to_dict()
    for job in data["jobs"].values():
        del job["runs_on"], job["queue_timeout"]
    old = Plan.from_dict(data).jobs["a"]
    assert (old.runs_on, old.queue_timeout) == ((), DEFAULT_QUEUE_TIMEOUT)


def test_defaults_apply_to_jobs_of_steps_and_never_to_deploy_jobs() -> None:
    plan = compile_ok("""
        name: demo
        defaults: {runs_on: [docker], queue_timeout: 2h}
        jobs:
          build: {steps: [{name: s, script: [x]}]}
          gpu: {runs_on: [gpu], queue_timeout: 10s, steps: [{name: s, script: [x]}]}
          ship: {deploy: {environment: prod, version: 1, strategy: rolling}}
    """)
    assert (plan.jobs["build"].runs_on, plan.jobs["build"].queue_timeout) == (("docker",), 7200)
    assert (plan.jobs["gpu"].runs_on, plan.jobs["gpu"].queue_timeout) == (("gpu",), 10)
    assert plan.jobs["ship"].runs_on == ()


def test_labels_take_variables_and_matrix_values() -> None:
    plan = compile_ok("""
        name: demo
        global_env: {ARCH: arm64}
        jobs:
          test:
            matrix: {OS: [linux, macos]}
            runs_on: ["${OS}", "${{ env.ARCH }}"]
            steps: [{name: s, script: [x]}]
    """)
    assert plan.jobs["test[OS=linux]"].runs_on == ("arm64", "linux")
    assert plan.jobs["test[OS=macos]"].runs_on == ("arm64", "macos")


CASES = {
    "label in capitals": (
        """
        name: demo
        jobs:
          train:
            runs_on: [linux, GPU]
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:22: error: jobs.train.runs_on[1]: 'GPU' is not a worker label "
         "(labels are lower case: did you mean 'gpu'?)"],
    ),
    "label with a space, as one string": (
        """
        name: demo
        jobs:
          train:
            runs_on: "big gpu"
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:14: error: jobs.train.runs_on: 'big gpu' is not a worker label (a label is 1 to 63 of "
         "a-z, 0-9, '_', '.', '-', starting with a letter or digit)"],
    ),
    "label joined with the queue separator": (
        """
        name: demo
        jobs:
          train:
            runs_on: [gpu+linux]
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:15: error: jobs.train.runs_on[0]: 'gpu+linux' is not a worker label (a label is 1 to 63 of "
         "a-z, 0-9, '_', '.', '-', starting with a letter or digit)"],
    ),
    "a number as a label": (
        """
        name: demo
        jobs:
          train:
            runs_on: [gpu, 3]
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.runs_on[1]: must be a string, got 3 (quote it to make it text: '3')"],
    ),
    "no labels at all": (
        """
        name: demo
        jobs:
          train:
            runs_on: []
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:14: error: jobs.train.runs_on: must not be empty"],
    ),
    "a mapping": (
        """
        name: demo
        jobs:
          train:
            runs_on: {gpu: true}
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:14: error: jobs.train.runs_on: must be a string or a list, got a mapping"],
    ),
    "more labels than a worker has": (
        """
        name: demo
        jobs:
          train:
            runs_on: [a, b, c, d, e, f, g, h, i]
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:14: error: jobs.train.runs_on: 9 labels, but a worker has at most 8 "
         "(no worker could take this job)"],
    ),
    "GitHub's spelling": (
        """
        name: demo
        jobs:
          train:
            runs-on: gpu
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:5: error: unknown field 'runs-on' in jobs.train (did you mean 'runs_on'?)"],
    ),
    "misspelt queue_timeout": (
        """
        name: demo
        jobs:
          train:
            queue_timout: 5m
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:5: error: unknown field 'queue_timout' in jobs.train (did you mean 'queue_timeout'?)"],
    ),
    "runs_on on a deploy job": (
        """
        name: demo
        jobs:
          ship:
            runs_on: [prod]
            deploy: {environment: prod, version: 1, strategy: rolling}
        """,
        ["p.yml:4:5: error: job 'ship': runs_on does not apply to a deploy job "
         "(deploy jobs run on the workers of the deploy queue; remove runs_on)"],
    ),
    "queue_timeout too long as text": (
        """
        name: demo
        jobs:
          train:
            queue_timeout: 2d
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.queue_timeout: must be at most 24h (86400 seconds), got '2d'"],
    ),
    "queue_timeout too long in seconds": (
        """
        name: demo
        jobs:
          train:
            queue_timeout: 90000
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.queue_timeout: must be at most 86400, got 90000"],
    ),
    "queue_timeout zero": (
        """
        name: demo
        jobs:
          train:
            queue_timeout: 0
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.queue_timeout: must be at least 1, got 0"],
    ),
    "queue_timeout not a duration": (
        """
        name: demo
        jobs:
          train:
            queue_timeout: soon
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.queue_timeout: 'soon' does not match [1-9][0-9]*[smhd]"],
    ),
    "queue_timeout a boolean": (
        """
        name: demo
        jobs:
          train:
            queue_timeout: true
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:4:20: error: jobs.train.queue_timeout: must be a string or an integer, got true "
         "(quote it to make it text: 'true')"],
    ),
    "bad label in defaults": (
        """
        name: demo
        defaults: {runs_on: [Linux], queue_timeout: 3d}
        jobs:
          train: {steps: [{name: s, script: [x]}]}
        """,
        ["p.yml:2:22: error: defaults.runs_on[0]: 'Linux' is not a worker label "
         "(labels are lower case: did you mean 'linux'?)",
         "p.yml:2:45: error: defaults.queue_timeout: must be at most 24h (86400 seconds), got '3d'"],
    ),
    "a label that substitutes to a bad one": (
        """
        name: demo
        global_env: {POOL: "Big Pool"}
        jobs:
          train:
            runs_on: [gpu, "${POOL}"]
            steps: [{name: s, script: [x]}]
        """,
        ["p.yml:5:20: error: jobs.train.runs_on[1] (after substitution): 'Big Pool' is not a worker label "
         "(a label is 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit)"],
    ),
    "a label naming an unknown variable": (
        """
        name: demo
        jobs:
          train:
            runs_on: "${POOL}"
            steps: [{name: s, script: [x]}]
        """,
        None,  # the variables' own message, once, at the field (checked below)
    ),
}


@pytest.mark.parametrize("name", [n for n, (_, want) in CASES.items() if want is not None])
def test_error_class_exact(name: str) -> None:
    text, expected = CASES[name]
    assert diagnostics(text) == expected


def test_an_unknown_variable_in_a_label_is_reported_once_at_the_label() -> None:
    found = diagnostics(CASES["a label naming an unknown variable"][0])
    assert len(found) == 1 and found[0].startswith("p.yml:4:14: error: jobs.train.runs_on: ") and "POOL" in found[0]


def test_a_label_listed_twice_is_a_warning_and_counted_once() -> None:
    text = """
        name: demo
        jobs:
          train:
            runs_on: [gpu, linux, gpu]
            steps: [{name: s, script: [x]}]
    """
    assert diagnostics(text, "warning") == ["p.yml:4:27: warning: job 'train' lists label 'gpu' in runs_on twice"]
    assert compile_ok(text).jobs["train"].runs_on == ("gpu", "linux")


def test_every_label_error_in_one_pass() -> None:
    found = diagnostics("""
        name: demo
        jobs:
          a: {runs_on: [A], steps: [{name: s, script: [x]}]}
          b: {runs_on: "-x", queue_timeout: 9d, steps: [{name: s, script: [x]}]}
          c: {runs_on: [gpu], deploy: {environment: e, version: 1, strategy: rolling}}
    """)
    assert [line.split(": error: ")[0] for line in found] == ["p.yml:3:17", "p.yml:4:16", "p.yml:4:37", "p.yml:5:7"]
