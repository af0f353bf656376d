"""Concurrency groups: what a new run cancels, whether it waits, and who starts when a run ends."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.triggers.concurrency import GroupRun, decide, next_to_start

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def run(run_id: str, minute: int, status: str) -> GroupRun:
    return GroupRun(id=run_id, created_at=T0 + timedelta(minutes=minute), status=status)


NEW = run("new", 10, "waiting")


def test_cancel_in_progress_cancels_older_running_and_waiting_runs() -> None:
    group = [run("a", 1, "running"), run("b", 2, "waiting"), run("c", 3, "success"), run("d", 4, "cancelled"), NEW]
    decision = decide(group, NEW, cancel_in_progress=True)
    assert (decision.cancel, decision.wait, decision.superseded) == (("a", "b"), False, False)
    assert "a, b" in decision.reason


def test_cancel_in_progress_with_an_empty_group_just_starts() -> None:
    decision = decide([], NEW, cancel_in_progress=True)
    assert (decision.cancel, decision.wait, decision.superseded) == ((), False, False)


def test_a_run_older_than_one_already_in_the_group_is_superseded() -> None:
    group = [run("a", 1, "running"), run("newer", 11, "running")]
    decision = decide(group, NEW, cancel_in_progress=True)
    assert (decision.cancel, decision.wait, decision.superseded) == (("a",), False, True)
    assert "newer" in decision.reason


def test_without_cancel_a_new_run_waits_for_a_running_one() -> None:
    decision = decide([run("a", 1, "running"), NEW], NEW, cancel_in_progress=False)
    assert (decision.cancel, decision.wait, decision.superseded) == ((), True, False)
    assert "a" in decision.reason


def test_without_cancel_a_new_run_waits_behind_older_waiting_runs_only() -> None:
    assert decide([run("a", 1, "waiting")], NEW, cancel_in_progress=False).wait
    assert not decide([run("later", 11, "waiting")], NEW, cancel_in_progress=False).wait
    assert decide([run("later", 11, "running")], NEW, cancel_in_progress=False).wait  # it holds the group
    assert not decide([run("a", 1, "failed"), run("b", 2, "success")], NEW, cancel_in_progress=False).wait


def test_equal_creation_times_are_ordered_by_id() -> None:
    same = [run("b", 5, "waiting"), run("a", 5, "waiting")]
    assert next_to_start(same) == "a"
    assert decide([run("a", 10, "waiting")], NEW, cancel_in_progress=False).wait  # "a" < "new"
    assert decide([run("z", 10, "waiting")], NEW, cancel_in_progress=True).superseded  # "z" > "new"


def test_next_to_start_waits_for_the_running_run() -> None:
    assert next_to_start([run("a", 1, "running"), run("b", 2, "waiting")]) is None
    assert next_to_start([run("a", 1, "success"), run("c", 3, "waiting"), run("b", 2, "waiting")]) == "b"
    assert next_to_start([run("a", 1, "cancelled")]) is None


def test_unknown_statuses_are_refused() -> None:
    with pytest.raises(ValueError, match="GroupRun.status"):
        run("a", 1, "pending")


@settings(max_examples=150, deadline=None)
@given(cancel_in_progress=st.booleans(),
       steps=st.lists(st.one_of(st.just("arrive"), st.integers(0, 20)), min_size=1, max_size=40))
def test_a_group_under_any_sequence_of_arrivals_and_endings(cancel_in_progress: bool, steps: list) -> None:
    """Drive a group the way the server will; check the invariants after every step."""
    runs: dict[str, GroupRun] = {}
    started: list[str] = []
    for number, step in enumerate(steps):
        if step == "arrive":
            new = run(f"r{number:02}", number, "waiting")
            decision = decide(list(runs.values()), new, cancel_in_progress)
            assert new.id not in decision.cancel and not decision.superseded  # arrivals come in order here
            for cancelled in decision.cancel:
                runs[cancelled] = GroupRun(cancelled, runs[cancelled].created_at, "cancelled")
            runs[new.id] = GroupRun(new.id, new.created_at, "waiting" if decision.wait else "running")
            if not decision.wait:
                started.append(new.id)
        else:  # the running run (if any) ends; the next one starts
            active = [r for r in runs.values() if r.status == "running"]
            if active:
                runs[active[0].id] = GroupRun(active[0].id, active[0].created_at, "success")
            following = next_to_start(list(runs.values()))
            if following is not None:
                runs[following] = GroupRun(following, runs[following].created_at, "running")
                started.append(following)
        statuses = [r.status for r in sorted(runs.values(), key=lambda r: r.id)]
        assert statuses.count("running") <= 1  # one run holds the group at a time
        if cancel_in_progress:
            assert statuses.count("waiting") == 0
            assert all(s != "running" for s in statuses[:-1])  # only the newest run can be active
        else:
            assert "cancelled" not in statuses
            if "waiting" in statuses:
                assert "running" in statuses  # nobody waits for nothing
    assert started == sorted(started)  # first come, first started
