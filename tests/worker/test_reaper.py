"""The lost-job reaper: which parked messages go back to their queue, how, and by whom."""
from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import redis

from shared.celery_app import RUN_JOB_TASK, create_app
from shared.config import Settings
from shared.state import JobMeta
from shared.state.base import FAILED, PENDING, RETRYING, RUNNING, SUCCESS, AttemptRecord, JobRecord
from shared.state.redis import RedisState, lease_key
from tests.cluster import ROOT
from tests.services import start_redis
from worker.reaper import BrokerKeys, Reaper, parse_entry, reaper_timing, restore_reason, start_reaper

NOW = 1_800_000_000.0


def entry(run_id: str = "r1", job: str = "build", *, task: str = RUN_JOB_TASK, eta: float | None = None,
          priority: int = 0) -> str:
    """An unacked hash value as kombu's Redis QoS stores it: [message, exchange, routing key]."""
    body = [[], {"run_id": run_id, "job": job}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    task_id = str(uuid.uuid4())
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0, "root_id": task_id,
                    "eta": datetime.fromtimestamp(eta, timezone.utc).isoformat() if eta else None,
                    "kwargsrepr": repr({"run_id": run_id, "job": job})},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": priority,
                       "delivery_info": {"exchange": "", "routing_key": "jobs"}, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    return json.dumps([message, "", "jobs"])


def record(status: str, finished_at: str | None = None) -> JobRecord:
    attempts = [] if status == PENDING else [
        AttemptRecord(1, "w1", "2027-01-15T08:00:00.000Z", finished_at, status, None, None, None)]
    return JobRecord("build", status, len(attempts), "w1", None, finished_at, None, None, False, attempts)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


# -- which messages go back (no services) ------------------------------------------------------------


def test_a_run_job_entry_is_read_back_with_its_run_job_and_eta() -> None:
    message = parse_entry("tag-1", entry("run-7", "test (py3.12)", eta=NOW + 5), NOW - 1)
    assert message is not None
    assert (message.tag, message.run_id, message.job, message.routing_key) == ("tag-1", "run-7", "test (py3.12)", "jobs")
    assert message.eta == pytest.approx(NOW + 5)
    assert message.due == pytest.approx(NOW + 5)


@pytest.mark.parametrize("raw", [entry(task="celery.chord_unlock"), "not json", "[1, 2]", json.dumps([{"headers": {
    "task": RUN_JOB_TASK}, "body": "!!", "properties": {"body_encoding": "base64"}}, "", "jobs"])],
    ids=["other-task", "not-json", "not-a-triple", "bad-body"])
def test_other_tasks_and_unreadable_entries_are_ignored(raw: str) -> None:
    assert parse_entry("tag", raw, NOW) is None


@pytest.mark.parametrize("status, lease_alive, delivered_ago, finished_ago, expected", [
    (RUNNING, True, 3600, None, None),                 # someone runs it: never touch
    (RUNNING, False, 60, None, "lease expired"),       # its worker is gone
    (RUNNING, False, 1, None, None),                   # a redelivered copy its holder is claiming
    (PENDING, False, 1, None, None),                   # just delivered: its holder is starting it
    (PENDING, False, 60, None, "pending"),             # delivered a minute ago and never started
    (RETRYING, False, 60, None, "retrying"),
    (SUCCESS, False, 60, 1, None),                     # finished a moment ago: the ack is on its way
    (SUCCESS, False, 60, 60, "success but never acknowledged"),
    (FAILED, False, 1, 60, None),                      # a fresh copy of a finished job: it returns at once
])
def test_restore_reason(status, lease_alive, delivered_ago, finished_ago, expected) -> None:
    message = parse_entry("t", entry(), NOW - delivered_ago)
    job = record(status, iso(NOW - finished_ago) if finished_ago is not None else None)
    why = restore_reason(message, job, lease_alive, NOW, grace=10)
    assert (why is None) if expected is None else (why is not None and why.startswith(expected))


def test_a_future_eta_is_left_to_its_holder_whatever_the_job_state() -> None:
    message = parse_entry("t", entry(eta=NOW + 30), NOW - 3600)
    for status in (RUNNING, PENDING, RETRYING, SUCCESS):
        assert restore_reason(message, record(status, iso(NOW - 3600)), False, NOW, grace=10) is None
    # once due, a retry nobody started is overdue after the grace
    assert restore_reason(message, record(RETRYING), False, NOW + 41, grace=10) is not None
    assert restore_reason(message, record(RETRYING), False, NOW + 39, grace=10) is None


def test_a_message_of_a_vanished_run_goes_back_after_the_grace() -> None:
    message = parse_entry("t", entry(), NOW - 60)
    assert restore_reason(message, None, False, NOW, grace=10) == "run gone"
    assert restore_reason(message, None, False, NOW - 55, grace=10) is None


def test_queue_keys_follow_kombu_priorities_and_prefix() -> None:
    keys = BrokerKeys()
    assert [keys.queue_key("jobs", p) for p in (None, 0, 2, 3, 5, 9, 42)] == [
        "jobs", "jobs", "jobs", "jobs\x06\x163", "jobs\x06\x163", "jobs\x06\x169", "jobs\x06\x169"]
    prefixed = BrokerKeys.from_options({"global_keyprefix": "ci:", "visibility_timeout": 10})
    assert prefixed.key(prefixed.unacked) == "ci:unacked" and prefixed.queue_key("deploy", 0) == "ci:deploy"


def test_timing_follows_the_lease() -> None:
    assert reaper_timing(30) == (5.0, 30.0)
    assert reaper_timing(3) == (1.0, 3.0)
    assert reaper_timing(0.3) == (0.5, 2.0)


def test_embedded_mode_has_no_reaper(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert start_reaper(create_app(settings), settings) is None


# -- against a real broker -----------------------------------------------------------------------------

_TAKE_AND_HANG = textwrap.dedent("""
    import sys, time
    from shared.celery_app import create_app
    from shared.config import Settings
    url, count, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = create_app(Settings(broker_url=url))
    if prefix:
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": prefix}
    channel = app.connection_for_read().default_channel
    taken = 0
    while taken < count:
        if channel.basic_get("jobs", no_ack=False) is None:
            time.sleep(0.02)
        else:
            taken += 1
    print("taken", flush=True)
    time.sleep(600)
""")


def worker_dies_holding(url: str, count: int, prefix: str = "") -> None:
    """A consumer takes `count` messages from `jobs` the way a Celery worker does (kombu's
    QoS parks them as unacked) and is SIGKILLed before acking any."""
    proc = subprocess.Popen([sys.executable, "-c", _TAKE_AND_HANG, url, str(count), prefix], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "taken", f"consumer did not take {count} message(s)"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, port = start_redis(tmp_path_factory.mktemp("reaper-redis"))
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(broker_url: str, client) -> Iterator[RedisState]:
    state = RedisState(broker_url)
    yield state
    state.close()


def make_app(url: str, prefix: str = ""):
    app = create_app(Settings(broker_url=url))
    if prefix:
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": prefix}
    return app


def send(app, run_id: str, job: str, **options) -> str:
    return app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": job}, immutable=True,
                         queue="jobs").apply_async(**options).id


def new_run(store: RedisState, *jobs: str) -> str:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    store.create_run(run_id, "demo", {name: JobMeta() for name in jobs}, {"levels": [list(jobs)]}, {})
    return run_id


def reaper(url: str, store: RedisState, *, grace: float = 30.0, interval: float = 0.2, prefix: str = "",
           resend=None) -> Reaper:
    keys = BrokerKeys.from_options({"global_keyprefix": prefix} if prefix else {})
    return Reaper(redis.Redis.from_url(url), keys, store, interval=interval, grace=grace, resend=resend)


def queued(client: redis.Redis, key: str = "jobs") -> list[dict]:
    """The messages of a queue list, in the order BRPOP hands them out."""
    return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]


def wait_lease_gone(client: redis.Redis, run_id: str, job: str) -> None:
    deadline = time.monotonic() + 10
    while client.exists(lease_key(run_id, job)):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_dead_workers_job_goes_back_to_the_head_of_its_queue_once_its_lease_expires(broker_url, client, store) -> None:
    app = make_app(broker_url)
    run_id = new_run(store, "build")
    task_id = send(app, run_id, "build")
    worker_dies_holding(broker_url, 1)
    assert store.claim(run_id, "build", "dead-worker", 1500).__class__.__name__ == "Claim"
    assert client.hlen("unacked") == 1 and client.llen("jobs") == 0
    other = send(app, "run-other", "x")  # waiting in the queue already
    sweeper = reaper(broker_url, store, grace=1.5)
    assert sweeper.reap_once() == []  # the lease is alive: the job may still be running
    wait_lease_gone(client, run_id, "build")
    time.sleep(0.25)  # the lock spaces passes by one interval
    restored = sweeper.reap_once()
    assert [(a.job, a.action, a.why) for a in restored] == [("build", "restored", "lease expired")]
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    first, second = queued(client)
    assert first["headers"]["id"] == task_id and second["headers"]["id"] == other
    assert first["headers"]["redelivered"] is True
    assert first["properties"]["delivery_info"]["redelivered"] is True


def test_live_leases_future_etas_and_fresh_deliveries_stay_with_their_holder(broker_url, client, store) -> None:
    app = make_app(broker_url)
    run_id = new_run(store, "running", "later", "fresh")
    store.claim(run_id, "running", "w1", 60_000)
    send(app, run_id, "running")
    send(app, run_id, "later", countdown=60)
    send(app, run_id, "fresh")
    worker_dies_holding(broker_url, 3)
    assert reaper(broker_url, store, grace=30).reap_once() == []
    assert client.hlen("unacked") == 3 and client.llen("jobs") == 0


def test_overdue_pending_retrying_finished_and_orphaned_messages_go_back(broker_url, client, store) -> None:
    app = make_app(broker_url)
    run_id = new_run(store, "pending", "retrying", "done")
    claim = store.claim(run_id, "retrying", "w1", 60_000)
    store.finish(run_id, "retrying", claim.token, RETRYING, exit_code=1, reason="script_failure", retry_delay=0.1)
    claim = store.claim(run_id, "done", "w1", 60_000)
    store.finish(run_id, "done", claim.token, SUCCESS, exit_code=0)
    for job in ("pending", "retrying", "done"):
        send(app, run_id, job)
    send(app, "run-expired-long-ago", "build")
    worker_dies_holding(broker_url, 4)
    time.sleep(0.6)
    restored = reaper(broker_url, store, grace=0.5).reap_once()
    reasons = {(a.run_id, a.job): a.why for a in restored}
    assert set(reasons) == {(run_id, "pending"), (run_id, "retrying"), (run_id, "done"),
                            ("run-expired-long-ago", "build")}
    assert reasons[("run-expired-long-ago", "build")] == "run gone"
    assert reasons[(run_id, "done")] == "success but never acknowledged"
    assert client.hlen("unacked") == 0 and client.llen("jobs") == 4


def test_messages_of_other_tasks_are_left_to_kombu(broker_url, client, store) -> None:
    app = make_app(broker_url)
    app.signature("conveyor.deploy_tick", kwargs={"run_id": "r", "job": "j"}, queue="jobs").apply_async()
    worker_dies_holding(broker_url, 1)
    time.sleep(0.3)
    assert reaper(broker_url, store, grace=0.1).reap_once() == []
    assert client.hlen("unacked") == 1


def test_one_reaper_acts_at_a_time(broker_url, client, store) -> None:
    first, second = reaper(broker_url, store, interval=1.0), reaper(broker_url, store, interval=1.0)
    assert first.reap_once() == []
    assert second.reap_once() is None  # the cluster makes one pass per interval
    time.sleep(1.1)
    assert second.reap_once() == []
    client.set("conveyor:reaper:lock", "someone-mid-pass", px=5000)
    time.sleep(1.1)
    assert first.reap_once() is None and second.reap_once() is None


def test_concurrent_restores_of_one_message_push_it_once(broker_url, client, store) -> None:
    app = make_app(broker_url)
    run_id = new_run(store, "build")
    send(app, run_id, "build")
    worker_dies_holding(broker_url, 1)
    sweepers = [reaper(broker_url, store) for _ in range(8)]
    message = next(sweepers[0]._parked())
    results: list[bool] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.restore(message))) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert client.llen("jobs") == 1 and client.hlen("unacked") == 0


def test_an_entry_that_changed_since_it_was_read_is_not_restored(broker_url, client, store) -> None:
    app = make_app(broker_url)
    send(app, new_run(store, "build"), "build")
    worker_dies_holding(broker_url, 1)
    sweeper = reaper(broker_url, store)
    message = next(sweeper._parked())
    client.hset("unacked", message.tag, entry())  # kombu restored and redelivered it meanwhile
    assert sweeper.restore(message) is False
    assert client.llen("jobs") == 0 and client.hlen("unacked") == 1


def test_global_keyprefix_and_priority_queues(broker_url, client, store) -> None:
    app = make_app(broker_url, prefix="ci:")
    run_id = new_run(store, "build")
    task_id = send(app, run_id, "build", priority=5)
    worker_dies_holding(broker_url, 1, prefix="ci:")
    assert client.hlen("ci:unacked") == 1 and not client.exists("unacked")
    store.claim(run_id, "build", "dead", 100)
    wait_lease_gone(client, run_id, "build")
    time.sleep(0.2)
    restored = reaper(broker_url, store, grace=0.3, prefix="ci:").reap_once()
    assert len(restored) == 1
    assert [m["headers"]["id"] for m in queued(client, "ci:jobs\x06\x163")] == [task_id]
    assert client.hlen("ci:unacked") == 0 and client.zcard("ci:unacked_index") == 0


def compiled_run(store: RedisState, text: str) -> str:
    """A run created from a real compiled plan (the stall check reads its dependencies)."""
    from coordinator.frontend import load_text

    plan = load_text(textwrap.dedent(text), "p.yml").plan
    assert plan is not None
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    store.create_run(run_id, plan.pipeline, {name: JobMeta() for name in plan.jobs}, plan.to_dict(), {})
    return run_id


STALLABLE = """
    name: stall
    jobs:
      a: {steps: [{name: s, script: ["true"]}]}
      b: {depends_on: [a], steps: [{name: s, script: ["true"]}]}
      c: {depends_on: [b], steps: [{name: s, script: ["true"]}]}
      lone: {steps: [{name: s, script: ["true"]}]}
      crashed: {steps: [{name: s, script: ["true"]}]}
      retried: {steps: [{name: s, script: ["true"]}]}
"""


def test_a_stalled_job_without_any_message_is_sent_again_after_the_grace(broker_url, client, store) -> None:
    """A chord whose body was never sent (its result backend failed), a message lost with
    Redis's last second: nothing would ever move these jobs again."""
    app = make_app(broker_url)
    run_id = compiled_run(store, STALLABLE)
    claim = store.claim(run_id, "a", "w1", 60_000)
    store.finish(run_id, "a", claim.token, SUCCESS, exit_code=0)
    store.claim(run_id, "crashed", "w1", 300)  # its worker and its message are gone
    claim = store.claim(run_id, "retried", "w1", 60_000)
    store.finish(run_id, "retried", claim.token, RETRYING, exit_code=1, reason="script_failure", retry_delay=0.1)
    send(app, run_id, "lone")  # waiting for a free worker: not stalled
    sent: list[tuple[str, str, str]] = []
    sweeper = reaper(broker_url, store, grace=0.6, interval=0.05, resend=lambda *a: sent.append(a))
    time.sleep(0.7)  # the lease expired, the retry is overdue
    assert sweeper.reap_once() == [] and sent == []  # first sighting: maybe a hop in progress
    time.sleep(0.7)
    actions = sweeper.reap_once()
    assert sorted(sent) == [(run_id, "b", "jobs"), (run_id, "crashed", "jobs"), (run_id, "retried", "jobs")]
    assert {a.job: a.action for a in actions} == {"b": "resent", "crashed": "resent", "retried": "resent"}
    time.sleep(0.1)
    assert sweeper.reap_once() == []  # a further copy only after another grace
    assert len(sent) == 3


def test_a_resent_job_is_an_ordinary_run_job_message(broker_url, client, store) -> None:
    app = make_app(broker_url)
    run_id = compiled_run(store, STALLABLE)
    for job in ("lone", "crashed", "retried"):
        store.skip(run_id, job, "condition_false")
    claim = store.claim(run_id, "a", "w1", 60_000)
    store.finish(run_id, "a", claim.token, SUCCESS, exit_code=0)
    thread = start_reaper(app, Settings(broker_url=broker_url, lease_seconds=0.3))
    try:
        deadline = time.monotonic() + 15
        while not client.llen("jobs"):
            assert time.monotonic() < deadline, "the stalled job was never sent again"
            time.sleep(0.1)
    finally:
        thread.stop()
        thread.join(timeout=5)
    (message,) = queued(client)
    assert message["headers"]["task"] == RUN_JOB_TASK
    parsed = parse_entry("t", json.dumps([message, "", "jobs"]), 0.0)
    assert (parsed.run_id, parsed.job) == (run_id, "b")


def test_start_reaper_starts_one_thread_per_process(broker_url, client, tmp_path: Path) -> None:
    settings = Settings(broker_url=broker_url, data_dir=tmp_path, lease_seconds=1.5)
    thread = start_reaper(create_app(settings), settings)
    try:
        assert thread is not None and thread.is_alive() and thread.daemon
        assert start_reaper(create_app(settings), settings) is thread
        assert (thread.interval, thread.grace) == (0.5, 2.0)
    finally:
        thread.stop()
        thread.join(timeout=5)


# -- with real workers ---------------------------------------------------------------------------------


def wait_running(url: str, run_id: str, job: str, timeout: float = 30) -> None:
    """Until `job` runs (read from the store directly: the CLI takes a second under load)."""
    state = RedisState(url)
    try:
        deadline = time.monotonic() + timeout
        while state.get_jobs(run_id, [job])[job].status != RUNNING:
            assert time.monotonic() < deadline, f"{job} never started"
            time.sleep(0.05)
    finally:
        state.close()


@pytest.fixture
def reaping_cluster(tmp_path: Path):
    from tests.cluster import running_cluster
    from tests.faults.cluster import ReapingCluster

    with running_cluster(tmp_path, "local", ReapingCluster) as cluster:
        yield cluster


@pytest.mark.slow
def test_a_killed_workers_job_reruns_within_seconds_not_after_the_visibility_timeout(reaping_cluster) -> None:
    cluster = reaping_cluster
    victim = cluster.worker("victim", concurrency=1)  # visibility timeout: the 2 h default
    pipeline = cluster.pipeline("""
        name: survivor
        jobs:
          work: {steps: [{name: s, script: ["echo begin", "sleep 6", "echo end"]}]}
          next: {depends_on: [work], steps: [{name: s, script: ["echo next"]}]}
    """)
    run_id = cluster.submit(pipeline)
    wait_running(cluster.redis_url, run_id, "work")
    victim.kill(signal.SIGKILL)
    killed = time.monotonic()
    rescuer = cluster.worker("rescuer", concurrency=1)
    status = cluster.wait(run_id, timeout=90)
    # lease (3 s) + a reaper pass (1 s) + the 6 s job + the next job, plus the rescuer's
    # start-up, which a loaded CI machine has stretched past 30 s; without the reaper the
    # re-run would wait for the 2 h visibility timeout, so a minute still tells them apart
    assert time.monotonic() - killed < 60
    assert status["status"] == "success"
    work = status["jobs"]["work"]
    assert [(a["worker"], a["reason"]) for a in work["attempt_history"]] == [("victim", "worker_lost"), ("rescuer", None)]
    assert status["jobs"]["next"]["attempts"] == 1
    assert "restored job work" in rescuer.log()


@pytest.mark.slow
def test_duplicated_chain_and_chord_messages_run_each_job_once(reaping_cluster) -> None:
    """run_job trusts only the state store: a second and third copy of the whole canvas (every
    chain step and chord body delivered three times) changes nothing."""
    from coordinator.canvas import build_canvas
    from shared.plan import Plan

    cluster = reaping_cluster
    cluster.worker("w1", concurrency=3)
    cluster.worker("w2", concurrency=3)
    pipeline = cluster.pipeline("""
        name: duplicated
        jobs:
          a: {steps: [{name: s, script: ["sleep 0.5"]}]}
          b1: {depends_on: [a], steps: [{name: s, script: ["sleep 1"]}]}
          b2: {depends_on: [a], steps: [{name: s, script: ["sleep 0.5"]}]}
          b3: {depends_on: [a], steps: [{name: s, script: ["sleep 0.2"]}]}
          c: {depends_on: [b1, b2, b3], steps: [{name: s, script: ["echo c"]}]}
          d: {depends_on: [c], steps: [{name: s, script: ["echo d"]}]}
    """)
    run_id = cluster.submit(pipeline)
    app = make_app(cluster.redis_url)
    state = RedisState(cluster.redis_url)
    try:
        canvas = build_canvas(app, Plan.from_dict(state.get_plan(run_id)), run_id)
        canvas.apply_async()
        canvas.apply_async()
        status = cluster.wait(run_id, timeout=60)
        # let every copy drain: nothing queued, nothing held
        client = redis.Redis.from_url(cluster.redis_url)
        deadline = time.monotonic() + 30
        while client.llen("jobs") or client.hlen("unacked"):
            assert time.monotonic() < deadline, "duplicates never drained"
            time.sleep(0.2)
        after = cluster.status(run_id)
    finally:
        state.close()
    assert status["status"] == "success"
    assert after == status
    jobs = status["jobs"]
    assert {name: job["attempts"] for name, job in jobs.items()} == dict.fromkeys(jobs, 1)
    for job, deps in {"b1": ["a"], "b2": ["a"], "b3": ["a"], "c": ["b1", "b2", "b3"], "d": ["c"]}.items():
        started = datetime.fromisoformat(jobs[job]["started_at"].replace("Z", "+00:00"))
        assert all(started >= datetime.fromisoformat(jobs[d]["finished_at"].replace("Z", "+00:00")) for d in deps)
    assert cluster.logs(run_id, "d").count("$ echo d") == 1
