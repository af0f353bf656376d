"""A pipeline author's `runs_on:` and `concurrency:` cannot reach what is not theirs: no
label names the deploy queue or another queue, and a concurrency group never spans
repositories (one repository's run cannot cancel another's)."""
from __future__ import annotations

import pytest

from coordinator.frontend import load_text
from coordinator.server.repositories import parse_repositories
from coordinator.server.run_starter import _group_key
from shared.worker_labels import job_queue

BASE = "name: p\njobs:\n  j:\n    runs_on: {labels}\n    steps: [{{name: s, script: [x]}}]\n"


@pytest.mark.parametrize("labels", ['["deploy"]', '["jobs"]', '["gpu+linux"]', '["../deploy"]', '["jobs.labels.gpu"]',
                                    '["GPU"]', '["a b"]', '[""]', '["-x"]'])
def test_labels_that_could_name_another_queue_are_refused_or_stay_in_the_label_namespace(labels: str) -> None:
    result = load_text(BASE.format(labels=labels), "p.yml")
    if not result.ok:
        assert any("runs_on" in str(d) for d in result.diagnostics), result.diagnostics
        return
    queue = job_queue(result.plan.jobs["j"].runs_on, deploy=False)
    assert queue.startswith("jobs.labels.") and queue not in ("deploy", "jobs")


def test_a_deploy_job_cannot_be_sent_to_a_labelled_queue() -> None:
    text = ("name: p\nenvironments:\n  prod:\n    router: {type: haproxy, admin: \"unix:///x.sock\", backend: web}\n"
            "    provider: {type: command, start: \"true\"}\n    instances: [{name: w, address: \"127.0.0.1:1\"}]\n"
            "jobs:\n  release:\n    runs_on: [gpu]\n    deploy: {environment: prod, version: v2, strategy: rolling}\n")
    result = load_text(text, "p.yml")
    assert not result.ok and any("runs_on" in str(d) for d in result.diagnostics)


def test_the_same_group_name_in_two_repositories_is_two_groups() -> None:
    a, b = parse_repositories([{"name": n, "forge": "github", "url": "/x", "webhook_secret_env": "S"}
                               for n in ("acme/app", "mallory/app")])
    plan = load_text("name: p\nconcurrency: {group: main, cancel_in_progress: true}\n"
                     "jobs:\n  j: {steps: [{name: s, script: [x]}]}\n", "p.yml").plan
    assert _group_key(a, plan) != _group_key(b, plan)
    assert _group_key(a, plan).endswith(":main") and "acme/app" in _group_key(a, plan)
