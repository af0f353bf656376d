"""`conveyor status` / `conveyor runs` views, read from a real SQLite state store."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.status_view import (
    duration_text,
    job_levels,
    runs_json,
    runs_text,
    status_json,
    status_text,
    text_table,
)
from shared.state import Claim, JobMeta, StateStore, UnknownRun, open_state

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# The spec's keys, plus what lets any client draw `conveyor status` from the JSON alone
# (cancel_requested, level, allow_failure) and the attempts.
RUN_KEYS = {"run_id", "pipeline", "status", "created_at", "finished_at", "cancel_requested", "jobs"}
JOB_KEYS = {"status", "attempts", "worker", "started_at", "finished_at", "exit_code", "reason", "artifacts",
            "attempt_history", "level", "allow_failure"}
ATTEMPT_KEYS = {"number", "worker", "started_at", "finished_at", "exit_code", "reason", "retry_delay"}

# Stored in this order on purpose: the views must follow the plan's levels instead.
PLAN = {
    "levels": [["build"], ["lint", "test"], ["deploy"]],
    "jobs": {
        "build": {"depends_on": []},
        "lint": {"depends_on": ["build"]},
        "test": {"depends_on": ["build"]},
        "deploy": {"depends_on": ["lint", "test"]},
    },
}
STORE_ORDER = ("deploy", "test", "lint", "build")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = open_state(f"sqlite:///{tmp_path}/state.db")
    yield state
    state.close()


def make_run(store: StateStore, run_id: str = "r1", pipeline: str = "demo") -> str:
    store.create_run(
        run_id, pipeline, {name: JobMeta(allow_failure=name == "lint") for name in STORE_ORDER}, PLAN, {}
    )
    return run_id


def run_job(store: StateStore, run_id: str, job: str, worker: str, status: str, **finish: object) -> None:
    claim = store.claim(run_id, job, worker, 60_000)
    assert isinstance(claim, Claim)
    assert store.finish(run_id, job, claim.token, status, **finish)


def test_unknown_run_is_none_in_json_and_an_error_in_text(store: StateStore) -> None:
    assert status_json(store, "nope") is None
    with pytest.raises(UnknownRun):
        status_text(store, "nope")


def test_status_json_has_exactly_the_spec_keys_in_plan_order(store: StateStore) -> None:
    run_id = make_run(store)
    run_job(store, run_id, "build", "celery@a", "success", exit_code=0)
    doc = status_json(store, run_id)
    assert doc is not None
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, nothing a dump would change
    assert set(doc) == RUN_KEYS
    assert (doc["run_id"], doc["pipeline"], doc["status"], doc["finished_at"]) == (run_id, "demo", "running", None)
    assert ISO_MS.fullmatch(doc["created_at"])
    assert list(doc["jobs"]) == ["build", "lint", "test", "deploy"]
    for job in doc["jobs"].values():
        assert set(job) == JOB_KEYS
        assert job["artifacts"] == []
    build = doc["jobs"]["build"]
    assert (build["status"], build["attempts"], build["worker"], build["exit_code"], build["reason"]) == (
        "success", 1, "celery@a", 0, None)
    assert ISO_MS.fullmatch(build["started_at"]) and ISO_MS.fullmatch(build["finished_at"])
    assert build["started_at"] <= build["finished_at"]
    pending = doc["jobs"]["deploy"]
    assert pending == {"status": "pending", "attempts": 0, "worker": None, "started_at": None,
                       "finished_at": None, "exit_code": None, "reason": None, "artifacts": [],
                       "attempt_history": [], "level": 2, "allow_failure": False}
    assert [job["level"] for job in doc["jobs"].values()] == [0, 1, 1, 2]
    assert [name for name, job in doc["jobs"].items() if job["allow_failure"]] == ["lint"]
    assert doc["cancel_requested"] is False


def test_status_json_attempt_history_records_each_retry(store: StateStore) -> None:
    run_id = make_run(store)
    run_job(store, run_id, "test", "celery@a", "retrying", exit_code=2, reason="script_failure", retry_delay=5.0)
    run_job(store, run_id, "test", "celery@b", "failed", exit_code=3, reason="script_failure")
    test = status_json(store, run_id)["jobs"]["test"]
    assert (test["status"], test["attempts"], test["worker"], test["exit_code"]) == ("failed", 2, "celery@b", 3)
    history = test["attempt_history"]
    assert [set(a) for a in history] == [ATTEMPT_KEYS, ATTEMPT_KEYS]
    assert [(a["number"], a["worker"], a["exit_code"], a["reason"], a["retry_delay"]) for a in history] == [
        (1, "celery@a", 2, "script_failure", 5.0),
        (2, "celery@b", 3, "script_failure", None),
    ]
    assert all(ISO_MS.fullmatch(a["started_at"]) and ISO_MS.fullmatch(a["finished_at"]) for a in history)


def test_status_json_of_a_finished_run(store: StateStore) -> None:
    run_id = make_run(store)
    run_job(store, run_id, "build", "w", "success", exit_code=0)
    run_job(store, run_id, "lint", "w", "failed", exit_code=1, reason="script_failure")
    run_job(store, run_id, "test", "w", "success", exit_code=0)
    assert store.skip(run_id, "deploy", "condition_false")
    doc = status_json(store, run_id)
    assert doc["status"] == "success"  # lint may fail
    assert ISO_MS.fullmatch(doc["finished_at"])
    assert doc["jobs"]["deploy"]["reason"] == "condition_false"


def test_runs_json_newest_first_and_limited(store: StateStore) -> None:
    for i in range(3):
        make_run(store, f"r{i}", pipeline=f"p{i}")
    runs = runs_json(store, 2)
    assert [r["run_id"] for r in runs] == ["r2", "r1"]
    assert {"run_id", "pipeline", "status", "created_at"} <= set(runs[0])
    assert (runs[0]["pipeline"], runs[0]["status"]) == ("p2", "running")
    assert ISO_MS.fullmatch(runs[0]["created_at"])
    assert runs_json(store, 10)[-1]["run_id"] == "r0"


def test_status_text_is_a_plain_table_by_level(store: StateStore) -> None:
    run_id = make_run(store)
    run_job(store, run_id, "build", "celery@a", "success", exit_code=0)
    run_job(store, run_id, "lint", "celery@a", "failed", exit_code=1, reason="script_failure")
    run_job(store, run_id, "test", "celery@b", "retrying", exit_code=1, reason="timeout", retry_delay=600.0)
    text = status_text(store, run_id)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "run r1 (pipeline demo): running"
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["LEVEL", "JOB", "STATUS", "REASON", "ATTEMPTS", "DURATION", "EXIT", "WORKER"]
    rows = {line.split()[1]: line for line in table[1:]}
    assert [line.split()[1] for line in table[1:]] == ["build", "lint", "test", "deploy"]
    assert rows["build"].split()[0:3] == ["0", "build", "success"]
    assert "failed (allowed)" in rows["lint"] and "script_failure" in rows["lint"]
    assert re.search(r"retrying \(in (9m 5\d|10m 00)s\)", rows["test"]), rows["test"]
    assert rows["test"].split()[-1] == "celery@b"
    assert rows["deploy"].split()[0:3] == ["2", "deploy", "pending"]
    # Columns line up: every row's STATUS cell starts where the header's does.
    column = table[0].index("STATUS")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in table[1:])


def test_runs_text(store: StateStore) -> None:
    assert runs_text(store, 5) == "no runs"
    make_run(store, "r1")
    make_run(store, "r2")
    lines = runs_text(store, 5).splitlines()
    assert lines[0].split() == ["RUN", "PIPELINE", "STATUS", "CREATED", "DURATION"]
    assert [line.split()[0] for line in lines[1:]] == ["r2", "r1"]


def test_jobs_the_plan_does_not_place_are_shown_last() -> None:
    plan = {"levels": [["b", "gone"], ["a"]]}
    assert job_levels(plan, ["c", "a", "b"]) == [["b"], ["a"], ["c"]]
    assert job_levels({}, ["x", "y"]) == [["x", "y"]]


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.text("abcdef", min_size=1, max_size=3), unique=True, max_size=8),
    levels=st.lists(st.lists(st.text("abcdef", min_size=1, max_size=3), unique=True, max_size=4), max_size=4),
)
def test_every_job_is_shown_exactly_once(names: list[str], levels: list[list[str]]) -> None:
    shown = [name for level in job_levels({"levels": levels}, names) for name in level]
    assert sorted(shown) == sorted(names)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0.0s"), (4.25, "4.2s"), (59.9, "59.9s"), (187, "3m 07s"), (3720, "1h 02m"), (-3, "0.0s")],
)
def test_duration_text(seconds: float | None, text: str) -> None:
    assert duration_text(seconds) == text


def test_text_table_aligns_columns() -> None:
    assert text_table(("A", "BB"), [["xxx", "y"], ["z", ""]]) == "A    BB\nxxx  y\nz"
