"""The state store contract, run against every backend (SQLite fast, Redis marked slow)."""
from __future__ import annotations

import multiprocessing
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.state import (
    Claim,
    JobMeta,
    Refusal,
    RunExists,
    StateStore,
    UnknownJob,
    UnknownRun,
    open_state,
)
from shared.state.base import JOB_STATUSES, can_transition
from tests.shared.state.runs import new_run

ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
LEASE = 5_000


def status(store: StateStore, run_id: str, job: str = "build") -> str:
    return store.get_jobs(run_id)[job].status


def put_in(store: StateStore, run_id: str, job: str, state: str) -> int:
    """Drive `job` into `state` through the public API; returns its current token (0 if none)."""
    if state == "pending":
        return 0
    if state == "skipped":
        assert store.skip(run_id, job, "condition_false")
        return 0
    claim = store.claim(run_id, job, "w1", LEASE)
    assert isinstance(claim, Claim)
    if state != "running":
        assert store.finish(run_id, job, claim.token, state, exit_code=1, retry_delay=1.5)
    return claim.token


# -- runs ---------------------------------------------------------------------------------


def test_create_run_stores_run_jobs_plan_and_meta(store: StateStore) -> None:
    run_id = new_run(store, "build", "test", allow_failure=("test",), meta={"source": "/src", "vars": {"A": "1"}})
    run = store.get_run(run_id)
    assert run is not None
    assert (run.run_id, run.pipeline, run.status) == (run_id, "demo", "running")
    assert ISO_MS.fullmatch(run.created_at)
    assert run.finished_at is None and run.cancel_requested is False
    assert run.meta == {"source": "/src", "vars": {"A": "1"}}
    assert store.get_plan(run_id) == {"levels": [["build", "test"]]}
    jobs = store.get_jobs(run_id)
    assert list(jobs) == ["build", "test"]
    assert [j.status for j in jobs.values()] == ["pending", "pending"]
    assert [j.allow_failure for j in jobs.values()] == [False, True]
    assert jobs["build"].attempts == [] and jobs["build"].attempt == 0


def test_create_run_refuses_an_existing_run_id(store: StateStore) -> None:
    run_id = new_run(store)
    with pytest.raises(RunExists):
        store.create_run(run_id, "other", {"x": JobMeta()}, {}, {})
    assert store.get_run(run_id).pipeline == "demo"
    assert list(store.get_jobs(run_id)) == ["build"]


def test_unknown_run_and_job(store: StateStore) -> None:
    assert store.get_run("nope") is None
    with pytest.raises(UnknownRun):
        store.get_jobs("nope")
    with pytest.raises(UnknownRun):
        store.get_plan("nope")
    with pytest.raises(UnknownRun):
        store.claim("nope", "build", "w1", LEASE)
    with pytest.raises(UnknownRun):
        store.skip("nope", "build", "condition_false")
    with pytest.raises(UnknownRun):
        store.request_cancel("nope")
    with pytest.raises(UnknownRun):
        store.append_logs("nope", "build", [("stdout", "x")])
    # A worker reporting into a run that expired is told "lost", not crashed.
    assert store.finish("nope", "build", 1, "success") is False
    assert store.heartbeat("nope", "build", 1, LEASE) == "lost"
    run_id = new_run(store)
    with pytest.raises(UnknownJob):
        store.claim(run_id, "nojob", "w1", LEASE)
    with pytest.raises(UnknownJob):
        store.append_logs(run_id, "nojob", [("stdout", "x")])


def test_bad_arguments_are_rejected(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.create_run("{evil}", "p", {"a": JobMeta()}, {}, {})
    with pytest.raises(ValueError):
        store.create_run("empty", "p", {}, {}, {})
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", LEASE).token
    with pytest.raises(ValueError):
        store.finish(run_id, "build", token, "running")
    with pytest.raises(ValueError):
        store.finish(run_id, "build", token, "failed", reason="exploded")
    with pytest.raises(ValueError):
        store.skip(run_id, "build", "script_failure")
    assert status(store, run_id) == "running"


def test_list_runs_newest_first_with_limit(store: StateStore) -> None:
    ids = []
    for _ in range(4):
        ids.append(new_run(store))
        time.sleep(0.002)  # distinct creation milliseconds
    # The store may hold older runs of other tests; ours are the newest.
    assert [r.run_id for r in store.list_runs(4)] == ids[::-1]
    assert [r.run_id for r in store.list_runs(2)] == ids[::-1][:2]
    assert [r.run_id for r in store.list_runs(1000) if r.run_id in ids] == ids[::-1]


def test_ended_runs_expire_after_the_retention(store_url: str) -> None:
    short = open_state(store_url, retention_s=0.2)
    keep = new_run(short)
    gone = new_run(short, "a", "b")
    assert short.request_cancel(gone) == []
    assert short.get_run(gone).status == "cancelled"
    time.sleep(0.4)
    new_run(short)  # creating runs is when SQLite sweeps expired ones
    assert short.get_run(gone) is None
    assert short.get_run(keep) is not None
    assert gone not in [r.run_id for r in short.list_runs(1000)]
    with pytest.raises(UnknownRun):
        short.get_jobs(gone)
    assert short.read_logs(gone, "a")[0] == [] and short.events(gone)[0] == []
    short.close()


# -- job state machine ----------------------------------------------------------------------

OPERATIONS = ["claim", "finish:success", "finish:failed", "finish:retrying", "finish:cancelled", "skip"]


@pytest.mark.parametrize("source", sorted(JOB_STATUSES))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_state_machine_applies_valid_and_refuses_invalid_transitions(
    store: StateStore, source: str, operation: str
) -> None:
    # "other" stays pending so the run never ends under the job being tested.
    run_id = new_run(store, "build", "other")
    token = put_in(store, run_id, "build", source)
    before = store.get_jobs(run_id)["build"]
    events_before, _ = store.events(run_id)

    if operation == "claim":
        target = "running"
        applied = isinstance(store.claim(run_id, "build", "w2", LEASE), Claim)
    elif operation == "skip":
        target = "skipped"
        applied = store.skip(run_id, "build", "upstream_failed")
    else:
        target = operation.split(":")[1]
        applied = store.finish(run_id, "build", token, target, exit_code=3)
        # finish is the claimed attempt's operation: it needs a token, pending jobs have none.
    expected = can_transition(source, target) and (
        not operation.startswith("finish") or source in ("running", "retrying")
    ) and not (operation == "claim" and source == "running")  # a live lease blocks the claim
    assert applied is expected
    after = store.get_jobs(run_id)["build"]
    events_after, _ = store.events(run_id)
    if expected:
        assert after.status == target
        assert events_after[-1].job == "build"
        assert (events_after[-1].from_status, events_after[-1].to_status) == (source, target)
    else:
        assert after == before
        assert events_after == events_before


def test_request_cancel_moves_only_pending_and_retrying_jobs(store: StateStore) -> None:
    states = sorted(JOB_STATUSES)
    run_id = new_run(store, *states)
    for job in states:
        put_in(store, run_id, job, job)
    assert store.request_cancel(run_id) == ["running"]
    jobs = store.get_jobs(run_id)
    expected = {job: ("cancelled" if job in ("pending", "retrying") else job) for job in states}
    assert {name: j.status for name, j in jobs.items()} == expected
    assert jobs["pending"].reason == "cancelled"
    assert store.get_run(run_id).cancel_requested


# -- run status ---------------------------------------------------------------------------


def run_jobs(store: StateStore, run_id: str, outcomes: dict[str, str]) -> None:
    for job, outcome in outcomes.items():
        if outcome == "skipped":
            assert store.skip(run_id, job, "condition_false")
            continue
        token = store.claim(run_id, job, "w1", LEASE).token
        reason = None if outcome == "success" else "script_failure" if outcome == "failed" else None
        assert store.finish(run_id, job, token, outcome, exit_code=0 if outcome == "success" else 1, reason=reason)


@pytest.mark.parametrize(
    "outcomes, allowed, expected",
    [
        ({"a": "success", "b": "success"}, (), "success"),
        ({"a": "success", "b": "failed"}, (), "failed"),
        ({"a": "success", "b": "failed"}, ("b",), "success"),
        ({"a": "failed", "b": "failed"}, ("b",), "failed"),
        ({"a": "success", "b": "skipped"}, (), "success"),
        ({"a": "skipped", "b": "skipped"}, (), "success"),
        ({"a": "success", "b": "cancelled"}, (), "failed"),  # cancelled without a cancel request
    ],
)
def test_run_status_when_last_job_ends(
    store: StateStore, outcomes: dict[str, str], allowed: tuple[str, ...], expected: str
) -> None:
    run_id = new_run(store, *outcomes, allow_failure=allowed)
    jobs = list(outcomes.items())
    run_jobs(store, run_id, dict(jobs[:-1]))
    assert store.get_run(run_id).status == "running"
    assert store.get_run(run_id).finished_at is None
    run_jobs(store, run_id, dict(jobs[-1:]))
    run = store.get_run(run_id)
    assert run.status == expected
    assert ISO_MS.fullmatch(run.finished_at) and run.finished_at >= run.created_at
    events, _ = store.events(run_id)
    assert (events[-1].job, events[-1].to_status) == (None, expected)


def test_retrying_job_keeps_the_run_running(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", LEASE).token
    assert store.finish(run_id, "build", token, "retrying", exit_code=1, reason="script_failure", retry_delay=2.5)
    assert store.get_run(run_id).status == "running"
    job = store.get_jobs(run_id)["build"]
    assert (job.status, job.finished_at, job.attempts[0].retry_delay) == ("retrying", None, 2.5)
    claim = store.claim(run_id, "build", "w2", LEASE)
    assert claim.attempt == 2 and claim.token > token
    assert store.finish(run_id, "build", claim.token, "success", exit_code=0)
    job = store.get_jobs(run_id)["build"]
    assert [a.status for a in job.attempts] == ["retrying", "success"]
    assert (job.attempt, job.worker, job.exit_code, job.reason) == (2, "w2", 0, None)
    assert job.started_at == job.attempts[0].started_at
    assert store.get_run(run_id).status == "success"


def test_giving_up_a_retry_fails_the_job_keeping_its_exit_code(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", LEASE).token
    store.finish(run_id, "build", token, "retrying", exit_code=7, reason="script_failure", retry_delay=1)
    assert store.finish(run_id, "build", token, "failed")
    job = store.get_jobs(run_id)["build"]
    assert (job.status, job.exit_code, job.reason) == ("failed", 7, "script_failure")
    assert store.get_run(run_id).status == "failed"


# -- claims, leases, fencing ------------------------------------------------------------------


def test_claim_is_exclusive_across_eight_threads(store: StateStore) -> None:
    run_id = new_run(store, "a", "b", "c")
    for job in ("a", "b", "c"):
        barrier = threading.Barrier(8)
        results: list[Claim | Refusal] = []

        def contend(worker: int) -> None:
            barrier.wait()
            results.append(store.claim(run_id, job, f"w{worker}", LEASE))

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [r for r in results if isinstance(r, Claim)]
        assert len(wins) == 1
        assert sorted(r.reason for r in results if isinstance(r, Refusal)) == ["leased"] * 7
        assert len(store.get_jobs(run_id)[job].attempts) == 1


def test_concurrent_workers_run_each_job_once_and_end_the_run_once(store: StateStore) -> None:
    jobs = [f"job{i}" for i in range(30)]
    run_id = new_run(store, *jobs)
    barrier = threading.Barrier(8)
    ran: list[str] = []

    def worker(n: int) -> None:
        barrier.wait()
        for job in jobs[n:] + jobs[:n]:
            claim = store.claim(run_id, job, f"w{n}", LEASE)
            if isinstance(claim, Claim):
                ran.append(job)
                store.append_logs(run_id, job, [("stdout", f"w{n}")])
                assert store.finish(run_id, job, claim.token, "success", exit_code=0)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ran) == sorted(jobs)
    assert all(len(j.attempts) == 1 for j in store.get_jobs(run_id).values())
    events, _ = store.events(run_id)
    assert [e for e in events if e.job is None] == [events[-1]]
    assert events[-1].to_status == "success" and store.get_run(run_id).status == "success"
    assert len(events) == 2 * len(jobs) + 1


def _claim_in_child(url: str, run_id: str, worker: str, start: float, out: multiprocessing.Queue) -> None:
    state = open_state(url)
    time.sleep(max(0.0, start - time.time()))
    result = state.claim(run_id, "build", worker, LEASE)
    out.put("won" if isinstance(result, Claim) else result.reason)
    state.close()


def test_claim_is_exclusive_across_processes(store: StateStore, store_url: str) -> None:
    run_id = new_run(store)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.2
    procs = [ctx.Process(target=_claim_in_child, args=(store_url, run_id, f"p{i}", start, out)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=20)
    assert sorted(out.get(timeout=5) for _ in procs) == ["leased", "leased", "leased", "won"]


def test_redelivered_finished_job_is_refused(store: StateStore) -> None:
    run_id = new_run(store, "build", "other")
    token = store.claim(run_id, "build", "w1", LEASE).token
    assert store.finish(run_id, "build", token, "success", exit_code=0)
    assert store.claim(run_id, "build", "w2", LEASE) == Refusal("finished")
    job = store.get_jobs(run_id)["build"]
    assert (job.status, len(job.attempts), job.worker) == ("success", 1, "w1")


def test_expired_lease_is_reclaimed_and_the_dead_attempt_recorded(store: StateStore) -> None:
    run_id = new_run(store)
    first = store.claim(run_id, "build", "w1", 50)
    assert store.claim(run_id, "build", "w2", 50) == Refusal("leased")
    time.sleep(0.15)
    second = store.claim(run_id, "build", "w2", LEASE)
    assert isinstance(second, Claim) and second.attempt == 2 and second.token > first.token
    job = store.get_jobs(run_id)["build"]
    assert (job.status, job.worker, job.attempt) == ("running", "w2", 2)
    dead, live = job.attempts
    assert (dead.worker, dead.status, dead.reason) == ("w1", "failed", "worker_lost")
    assert dead.finished_at is not None and dead.finished_at <= live.started_at
    assert (live.worker, live.status, live.finished_at) == ("w2", "running", None)
    events, _ = store.events(run_id)
    assert (events[-1].from_status, events[-1].to_status, events[-1].reason) == ("running", "running", "worker_lost")


@pytest.mark.parametrize("max_lost", [0, 1, 2])
def test_job_fails_with_worker_lost_once_max_lost_is_exceeded(store: StateStore, max_lost: int) -> None:
    run_id = new_run(store)
    assert isinstance(store.claim(run_id, "build", "w0", 30, max_lost=max_lost), Claim)
    for loss in range(1, max_lost + 1):
        time.sleep(0.08)
        claim = store.claim(run_id, "build", f"w{loss}", 30, max_lost=max_lost)
        assert isinstance(claim, Claim) and claim.attempt == loss + 1
    time.sleep(0.08)
    assert store.claim(run_id, "build", "late", 30, max_lost=max_lost) == Refusal("worker_lost")
    job = store.get_jobs(run_id)["build"]
    assert (job.status, job.reason) == ("failed", "worker_lost")
    assert [a.reason for a in job.attempts] == ["worker_lost"] * (max_lost + 1)
    assert store.get_run(run_id).status == "failed"
    assert store.claim(run_id, "build", "later", 30, max_lost=max_lost) == Refusal("finished")


def test_stale_token_cannot_write(store: StateStore) -> None:
    run_id = new_run(store)
    old = store.claim(run_id, "build", "w1", 50).token
    time.sleep(0.12)
    new = store.claim(run_id, "build", "w2", LEASE).token
    before = store.get_jobs(run_id)
    events_before, _ = store.events(run_id)
    for outcome in ("success", "failed", "retrying", "cancelled"):
        assert store.finish(run_id, "build", old, outcome, exit_code=0) is False
    assert store.heartbeat(run_id, "build", old, LEASE) == "lost"
    assert store.get_jobs(run_id) == before
    assert store.events(run_id)[0] == events_before
    assert store.finish(run_id, "build", new, "success", exit_code=0)
    assert store.finish(run_id, "build", new, "failed", exit_code=1) is False  # already terminal
    assert status(store, run_id) == "success"


def test_heartbeat_ok_extends_the_lease(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", 150).token
    for _ in range(3):
        time.sleep(0.08)
        assert store.heartbeat(run_id, "build", token, 150) == "ok"
    # 240 ms after the claim: without the heartbeats the 150 ms lease would be gone.
    assert store.claim(run_id, "build", "w2", LEASE) == Refusal("leased")


def test_heartbeat_lost_and_cancel(store: StateStore) -> None:
    run_id = new_run(store, "build", "other")
    token = store.claim(run_id, "build", "w1", LEASE).token
    assert store.heartbeat(run_id, "build", token + 1000, LEASE) == "lost"
    assert store.heartbeat(run_id, "other", token, LEASE) == "lost"
    assert store.heartbeat("nope", "build", token, LEASE) == "lost"
    assert store.request_cancel(run_id) == ["build"]
    assert store.heartbeat(run_id, "build", token, LEASE) == "cancel"
    assert store.finish(run_id, "build", token, "cancelled")
    assert store.heartbeat(run_id, "build", token, LEASE) == "lost"


def test_heartbeat_after_lease_expiry_keeps_an_unclaimed_attempt(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", 30).token
    time.sleep(0.08)
    assert store.heartbeat(run_id, "build", token, LEASE) == "ok"
    assert store.claim(run_id, "build", "w2", LEASE) == Refusal("leased")


# -- cancel -------------------------------------------------------------------------------


def test_cancel_flow(store: StateStore) -> None:
    run_id = new_run(store, "build", "test", "deploy")
    build = store.claim(run_id, "build", "w1", LEASE).token
    test = store.claim(run_id, "test", "w2", LEASE).token
    assert store.request_cancel(run_id) == ["build", "test"]
    assert store.request_cancel(run_id) == ["build", "test"]  # idempotent
    run = store.get_run(run_id)
    assert (run.status, run.cancel_requested) == ("running", True)
    assert status(store, run_id, "deploy") == "cancelled"
    assert store.claim(run_id, "deploy", "w3", LEASE) == Refusal("finished")
    assert store.heartbeat(run_id, "build", build, LEASE) == "cancel"
    assert store.finish(run_id, "build", build, "cancelled", exit_code=137)
    # A job that finished anyway keeps its result; the run is still cancelled.
    assert store.finish(run_id, "test", test, "success", exit_code=0)
    jobs = store.get_jobs(run_id)
    assert {n: (j.status, j.reason) for n, j in jobs.items()} == {
        "build": ("cancelled", "cancelled"),
        "test": ("success", None),
        "deploy": ("cancelled", "cancelled"),
    }
    assert store.get_run(run_id).status == "cancelled"
    assert store.request_cancel(run_id) == []


def test_cancel_with_nothing_running_ends_the_run_at_once(store: StateStore) -> None:
    run_id = new_run(store, "a", "b")
    assert store.request_cancel(run_id) == []
    run = store.get_run(run_id)
    assert run.status == "cancelled" and run.finished_at is not None


def test_cancel_arriving_after_every_job_succeeded_anyway_is_success(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", LEASE).token
    assert store.request_cancel(run_id) == ["build"]
    assert store.finish(run_id, "build", token, "success", exit_code=0)
    assert store.get_run(run_id).status == "success"


def test_claim_during_cancel_is_refused_and_cancels_the_job(store: StateStore) -> None:
    run_id = new_run(store)
    store.claim(run_id, "build", "w1", 30)
    store.request_cancel(run_id)
    time.sleep(0.08)  # the worker died before it saw the cancel
    assert store.claim(run_id, "build", "w2", LEASE) == Refusal("cancelled")
    job = store.get_jobs(run_id)["build"]
    assert (job.status, job.reason, job.attempts[0].reason) == ("cancelled", "cancelled", "worker_lost")
    assert store.get_run(run_id).status == "cancelled"


# -- logs ---------------------------------------------------------------------------------


def test_logs_keep_order_and_streams_per_job(store: StateStore) -> None:
    run_id = new_run(store, "build", "test")
    store.append_logs(run_id, "build", [("stdout", "line 1\n"), ("stderr", "warn ünïcode\n")])
    store.append_logs(run_id, "test", [("stdout", "other job\n")])
    store.append_logs(run_id, "build", [("stdout", "line 3\n")])
    entries, cursor = store.read_logs(run_id, "build")
    assert [(e.stream, e.text) for e in entries] == [
        ("stdout", "line 1\n"),
        ("stderr", "warn ünïcode\n"),
        ("stdout", "line 3\n"),
    ]
    assert all(ISO_MS.fullmatch(e.timestamp) for e in entries)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    assert store.read_logs(run_id, "build", after=cursor) == ([], cursor)
    assert [e.text for e in store.read_logs(run_id, "test")[0]] == ["other job\n"]


def test_logs_of_a_big_batch_arrive_whole(store: StateStore) -> None:
    run_id = new_run(store)
    lines = [("stdout", f"{i}\n") for i in range(1234)]
    store.append_logs(run_id, "build", lines)
    entries, cursor = store.read_logs(run_id, "build", count=5000)
    assert [e.text for e in entries] == [t for _, t in lines]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.text(max_size=20), min_size=1, max_size=6), min_size=1, max_size=5),
       page=st.integers(min_value=1, max_value=7))
def test_paging_with_the_cursor_reads_every_entry_once_in_order(
    store: StateStore, batches: list[list[str]], page: int
) -> None:
    run_id = new_run(store)
    for batch in batches:
        store.append_logs(run_id, "build", [("stdout", text) for text in batch])
    seen: list[str] = []
    cursor = None
    while True:
        entries, cursor = store.read_logs(run_id, "build", after=cursor, count=page)
        assert len(entries) <= page
        if not entries:
            break
        seen += [e.text for e in entries]
    assert seen == [text for batch in batches for text in batch]


def test_blocking_read_returns_when_logs_arrive(store: StateStore) -> None:
    run_id = new_run(store)
    _, cursor = store.read_logs(run_id, "build")
    timer = threading.Timer(0.2, store.append_logs, args=(run_id, "build", [("stdout", "late\n")]))
    timer.start()
    started = time.monotonic()
    entries, _ = store.read_logs(run_id, "build", after=cursor, block_ms=5000)
    waited = time.monotonic() - started
    timer.join()
    assert [e.text for e in entries] == ["late\n"]
    assert 0.15 < waited < 3


def test_blocking_read_times_out_empty(store: StateStore) -> None:
    run_id = new_run(store)
    started = time.monotonic()
    assert store.read_logs(run_id, "build", block_ms=150)[0] == []
    assert 0.1 < time.monotonic() - started < 2
    started = time.monotonic()
    assert store.read_logs(run_id, "build")[0] == []
    assert time.monotonic() - started < 0.15


# -- events -------------------------------------------------------------------------------


def test_events_record_every_transition_with_a_cursor(store: StateStore) -> None:
    run_id = new_run(store, "build", "test", "lint")
    token = store.claim(run_id, "build", "w1", LEASE).token
    store.finish(run_id, "build", token, "retrying", exit_code=1, reason="script_failure", retry_delay=1)
    first, cursor = store.events(run_id)
    token = store.claim(run_id, "build", "w1", LEASE).token
    store.finish(run_id, "build", token, "success", exit_code=0)
    store.skip(run_id, "lint", "condition_false")
    token = store.claim(run_id, "test", "w2", LEASE).token
    store.finish(run_id, "test", token, "failed", exit_code=2, reason="script_failure")
    rest, cursor = store.events(run_id, after=cursor)
    assert [(e.job, e.from_status, e.to_status) for e in first + rest] == [
        ("build", "pending", "running"),
        ("build", "running", "retrying"),
        ("build", "retrying", "running"),
        ("build", "running", "success"),
        ("lint", "pending", "skipped"),
        ("test", "pending", "running"),
        ("test", "running", "failed"),
        (None, "running", "failed"),
    ]
    assert [e.attempt for e in first] == [1, 1]
    assert rest[-2].reason == "script_failure" and rest[2].reason == "condition_false"
    ats = [e.at for e in first + rest]
    assert all(ISO_MS.fullmatch(at) for at in ats) and ats == sorted(ats)
    assert store.events(run_id, after=cursor) == ([], cursor)


def test_blocking_events_wake_on_a_transition(store: StateStore) -> None:
    run_id = new_run(store)
    _, cursor = store.events(run_id)
    timer = threading.Timer(0.2, store.claim, args=(run_id, "build", "w1", LEASE))
    timer.start()
    started = time.monotonic()
    events, _ = store.events(run_id, after=cursor, block_ms=5000)
    timer.join()
    assert [(e.job, e.to_status) for e in events] == [("build", "running")]
    assert 0.15 < time.monotonic() - started < 3


def test_timestamps_follow_the_job(store: StateStore) -> None:
    run_id = new_run(store)
    token = store.claim(run_id, "build", "w1", LEASE).token
    time.sleep(0.01)
    store.finish(run_id, "build", token, "success", exit_code=0)
    job = store.get_jobs(run_id)["build"]
    run = store.get_run(run_id)
    assert run.created_at <= job.started_at < job.finished_at <= run.finished_at
    assert (job.worker, job.exit_code, job.attempt) == ("w1", 0, 1)


# -- open_state ---------------------------------------------------------------------------


def test_open_state_refuses_unknown_schemes() -> None:
    for url in ("postgres://x/y", "sqlite://", "sqlite:///", "memory:"):
        with pytest.raises(ValueError):
            open_state(url)


def test_sqlite_url_with_three_slashes_is_relative(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = open_state("sqlite:///rel.db")
    new_run(state)
    state.close()
    assert (tmp_path / "rel.db").exists()
    again = open_state(f"sqlite:///{tmp_path}/rel.db")
    assert len(again.list_runs()) == 1
    again.close()


def test_get_jobs_for_some_names_only(store: StateStore) -> None:
    run_id = new_run(store, "a", "b", "c")
    claim = store.claim(run_id, "b", "w", 10_000)
    assert store.finish(run_id, "b", claim.token, "success", exit_code=0)
    some = store.get_jobs(run_id, ["c", "b"])
    assert list(some) == ["b", "c"]  # plan order, whatever the order asked
    assert some["b"].status == "success" and some["c"].status == "pending"
    assert store.get_jobs(run_id, []) == {}
    with pytest.raises(LookupError):
        store.get_jobs(run_id, ["nope"])
    with pytest.raises(LookupError):
        store.get_jobs("no-such-run", ["a"])
