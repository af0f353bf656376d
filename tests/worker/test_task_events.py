"""How a finished job task reports itself in Celery events (what Flower shows)."""
from __future__ import annotations

import itertools
import threading
import time

import pytest
from celery.events.state import State
from celery.utils.saferepr import saferepr

from worker.job_runner import task_result
from worker.task_events import SKIPPED_EVENT, _last_outcome, job_event, outcome_of, reported_event

RUN = "20261127-033302-447b0a"


@pytest.mark.parametrize("status, reason, exit_code, event, named, says", [
    ("failed", "script_failure", 3, "task-failed", "JobFailed", ["script_failure", "exit code 3"]),
    ("failed", "timeout", None, "task-failed", "JobFailed", ["timeout"]),
    ("lost", None, None, "task-failed", "JobLost", ["newer attempt"]),
    ("unknown", None, None, "task-failed", "JobDropped", ["unknown"]),
    ("cancelled", "cancelled", 143, "task-revoked", "JobCancelled", ["cancelled", "exit code 143"]),
    ("skipped", "upstream_failed", None, SKIPPED_EVENT, "JobSkipped", ["upstream_failed"]),
    ("skipped", "condition_false", None, SKIPPED_EVENT, "JobSkipped", ["condition_false"]),
])
def test_a_job_that_did_not_succeed_gets_its_own_event_and_reason(status, reason, exit_code, event, named,
                                                                  says) -> None:
    kind, fields = job_event(task_result(RUN, "build", status, reason, exit_code))
    assert kind == event
    assert fields["exception"].startswith(f"{named}: ")
    for text in says:
        assert text in fields["exception"]


def test_a_revoked_event_carries_the_fields_celery_sends_with_it() -> None:
    _, fields = job_event(task_result(RUN, "build", "cancelled", "cancelled"))
    assert (fields["terminated"], fields["signum"], fields["expired"]) == (False, None, False)


@pytest.mark.parametrize("status", ["success", "running", "pending", "retrying", "something-new"])
def test_success_and_unfinished_statuses_stay_succeeded(status) -> None:
    assert job_event(task_result(RUN, "build", status)) == ("task-succeeded", {})


def test_the_outcome_is_read_back_from_celerys_repr_of_the_return_value() -> None:
    outcome = task_result(RUN, "test[PY=3.11]", "failed", "script_failure", 2)
    assert outcome_of(saferepr(outcome, 1024)) == outcome
    assert outcome_of(outcome) == outcome


@pytest.mark.parametrize("text", [
    None, 42, "", "not a literal", "['a', 'list']",
    "__import__('os').system('touch /tmp/conveyor-pwned')",  # never evaluated
])
def test_anything_else_is_no_outcome(text) -> None:
    assert outcome_of(text) is None


def test_a_repr_cut_at_the_size_limit_is_no_outcome_rather_than_a_wrong_one() -> None:
    cut = saferepr(task_result(RUN, "x" * 2000, "failed", "script_failure"), 1024)
    assert outcome_of(cut) is None
    assert reported_event("t-cut", "task-succeeded", {"result": cut}) == ("task-succeeded", {"result": cut})


def test_the_outcome_returned_in_this_thread_wins_over_a_cut_repr() -> None:
    outcome = task_result(RUN, "x" * 2000, "failed", "oom", 137)
    cut = saferepr(outcome, 1024)
    _last_outcome.remember("t-1", outcome)
    kind, fields = reported_event("t-1", "task-succeeded", {"result": cut, "runtime": 1.5})
    assert kind == "task-failed" and "oom" in fields["exception"]
    assert fields["result"] == cut and fields["runtime"] == 1.5
    # Taken once: the next task's event of this thread does not see it.
    assert reported_event("t-1", "task-succeeded", {"result": cut})[0] == "task-succeeded"


def test_an_outcome_remembered_for_another_task_or_thread_is_not_used() -> None:
    _last_outcome.remember("t-other", task_result(RUN, "a", "failed", "oom"))
    ok = saferepr(task_result(RUN, "b", "success"), 1024)
    assert reported_event("t-mine", "task-succeeded", {"result": ok})[0] == "task-succeeded"

    seen = []
    thread = threading.Thread(target=lambda: seen.append(_last_outcome.take("t-x")))
    _last_outcome.remember("t-x", task_result(RUN, "a", "failed", "oom"))
    thread.start()
    thread.join()
    assert seen == [None]
    _last_outcome.take("t-x")


def test_other_events_pass_unchanged() -> None:
    fields = {"exception": "Retry(...)", "traceback": ""}
    assert reported_event("t-2", "task-retried", dict(fields)) == ("task-retried", fields)
    assert reported_event("t-2", "task-started", {}) == ("task-started", {})


# -- what Flower makes of them: Celery's event state machine, which Flower runs ----------

_clock = itertools.count(1)


def feed(state: State, uuid: str, kind: str, **fields: object) -> None:
    state.event({"type": kind, "uuid": uuid, "hostname": "conveyor@w1", "timestamp": time.time(),
                 "local_received": time.time(), "clock": next(_clock), **fields})


def finished(state: State, uuid: str, outcome: dict, waited: bool = False) -> None:
    """The events of one job task: received, started (retried while waiting), the outcome."""
    feed(state, uuid, "task-received", name="conveyor.run_job", args="()",
         kwargs=repr({"run_id": RUN, "job": outcome["job"]}))
    feed(state, uuid, "task-started")
    if waited:  # a job waiting for its dependencies is retried under the same task id
        feed(state, uuid, "task-retried", exception="Retry('waiting')")
        feed(state, uuid, "task-received", name="conveyor.run_job", args="()", kwargs="{}")
        feed(state, uuid, "task-started")
    kind, fields = reported_event(uuid, "task-succeeded", {"result": saferepr(outcome, 1024), "runtime": 0.2})
    feed(state, uuid, kind, **fields)


@pytest.mark.parametrize("waited", [False, True])
def test_flower_ends_in_the_state_each_outcome_is_sent_as(waited) -> None:
    state = State()
    cases = {
        "ok": (task_result(RUN, "ok", "success"), "SUCCESS"),
        "bad": (task_result(RUN, "bad", "failed", "script_failure", 1), "FAILURE"),
        "skip": (task_result(RUN, "skip", "skipped", "upstream_failed"), "SKIPPED"),
        "stop": (task_result(RUN, "stop", "cancelled", "cancelled"), "REVOKED"),
    }
    for uuid, (outcome, _) in cases.items():
        finished(state, uuid, outcome, waited)
    for uuid, (outcome, expected) in cases.items():
        task = state.tasks[uuid]
        assert task.state == expected, uuid
        assert task.name == "conveyor.run_job"
        if expected != "SUCCESS":
            assert outcome["reason"] in task.exception
    # A late duplicate "started" (events can be reordered) does not undo the outcome.
    feed(state, "bad", "task-started")
    assert state.tasks["bad"].state == "FAILURE"


def test_a_lost_attempt_reporting_late_does_not_hide_its_successors_success() -> None:
    # A redelivered message runs under the same task id: the newer attempt succeeds, the
    # old one (its lease lost) reports afterwards. Flower keeps SUCCESS.
    state = State()
    finished(state, "dup", task_result(RUN, "dup", "success"))
    kind, fields = reported_event("dup", "task-succeeded", {"result": saferepr(task_result(RUN, "dup", "lost"))})
    feed(state, "dup", kind, **fields)
    assert kind == "task-failed" and state.tasks["dup"].state == "SUCCESS"
