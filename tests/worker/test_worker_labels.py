"""Worker labels: which queue a job goes to, which queues a worker consumes, how workers
announce their labels, and how the reaper skips or fails (`no_worker`) the jobs no live
worker can take (shared/worker_labels.py, coordinator/canvas.py, worker/reaper.py)."""
from __future__ import annotations

import json
import textwrap
import time
import uuid
from typing import Iterator

import pytest
import redis
from click.testing import CliRunner

from coordinator.canvas import build_canvas, job_queue
from coordinator.frontend import load_text
from coordinator.status_view import status_json, status_text
from shared import worker_labels
from shared.celery_app import RUN_JOB_TASK, create_app
from shared.config import Settings
from shared.plan import Plan
from shared.state import Claim, JobMeta
from shared.state.base import FAILED, PENDING, RETRYING, SUCCESS, AttemptRecord, JobRecord
from shared.state.redis import RedisState
from shared.worker_labels import (
    WorkerPresence,
    consumed_queues,
    label_queue,
    label_queues,
    parse_labels,
    waiting_reason,
    waiting_since,
)
from worker.main import WorkerOptions, WorkerStartError, start_worker
from worker.reaper import NO_WORKER, BrokerKeys, Reaper, job_task

NOW = 1_800_000_000.0


def compile_plan(text: str) -> Plan:
    result = load_text(textwrap.dedent(text).lstrip("\n"), "p.yml")
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.plan


# -- routing: where a job goes, what a worker takes (no services) ------------------------------------


def test_a_label_set_has_one_queue_whatever_the_order_or_repeats() -> None:
    assert label_queue(["linux", "gpu"]) == label_queue(["gpu", "linux", "gpu"]) == "jobs.labels.gpu+linux"
    assert label_queue(["gpu"]) == "jobs.labels.gpu"
    assert label_queue([]) == "jobs"


def test_deploy_jobs_keep_the_deploy_queue_and_jobs_without_labels_the_jobs_queue() -> None:
    assert worker_labels.job_queue((), deploy=True) == "deploy"
    assert worker_labels.job_queue((), deploy=False) == "jobs"
    assert worker_labels.job_queue(("gpu",), deploy=False) == "jobs.labels.gpu"


def test_a_worker_consumes_the_queue_of_every_subset_of_its_labels() -> None:
    assert label_queues(["gpu", "linux"]) == ["jobs.labels.gpu", "jobs.labels.linux", "jobs.labels.gpu+linux"]
    assert consumed_queues(["jobs", "deploy"], ["linux", "gpu"]) == [
        "jobs", "deploy", "jobs.labels.gpu", "jobs.labels.linux", "jobs.labels.gpu+linux"]
    assert consumed_queues(["jobs", "deploy"], []) == ["jobs", "deploy"]
    eight = [f"l{i}" for i in range(8)]
    queues = label_queues(eight)
    assert len(queues) == len(set(queues)) == 255
    # every job a worker with these labels can take has its queue among them
    assert label_queue(["l7", "l0", "l3"]) in queues and label_queue(eight) in queues
    assert label_queue(["l0", "other"]) not in queues


def test_worker_labels_are_parsed_checked_and_bounded() -> None:
    assert parse_labels("linux, docker,gpu,,linux") == ("docker", "gpu", "linux")
    assert parse_labels("") == () and parse_labels(None) == ()
    with pytest.raises(ValueError, match=r"invalid worker label 'GPU': labels are lower case: did you mean 'gpu'\?"):
        parse_labels("linux,GPU")
    with pytest.raises(ValueError, match=r"invalid worker label 'a\+b'"):
        parse_labels("a+b")
    with pytest.raises(ValueError, match=r"at most 8 labels .*2\^8-1 = 255 queues\), got 9"):
        parse_labels(",".join(f"l{i}" for i in range(9)))


def test_start_worker_refuses_bad_labels_before_touching_the_broker() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    with pytest.raises(WorkerStartError, match=r"^--labels: a worker has at most 8 labels"):
        start_worker(settings, WorkerOptions(labels=",".join(f"l{i}" for i in range(9))), say=print)
    with pytest.raises(WorkerStartError, match=r"^--labels: invalid worker label 'x y'"):
        start_worker(settings, WorkerOptions(labels="x y"), say=print)
    with pytest.raises(WorkerStartError, match="the worker would take nothing"):
        start_worker(settings, WorkerOptions(queues=" , ", labels=""), say=print)


def test_the_worker_command_takes_labels_from_its_option_or_the_environment() -> None:
    from coordinator.cli import cli

    runner = CliRunner()
    env = {"CONVEYOR_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = runner.invoke(cli, ["worker", "--labels", "Gpu"], env=env)
    assert result.exit_code == 1 and "--labels: invalid worker label 'Gpu'" in result.output
    result = runner.invoke(cli, ["worker"], env={**env, "CONVEYOR_WORKER_LABELS": "ok,No Good"})
    assert result.exit_code == 1 and "invalid worker label 'No Good'" in result.output


PIPELINE = """
    name: routes
    jobs:
      build: {steps: [{name: s, script: [x]}]}
      train: {depends_on: [build], runs_on: [linux, gpu], steps: [{name: s, script: [x]}]}
      ship: {depends_on: [train], deploy: {environment: prod, version: 1, strategy: rolling}}
"""


def test_the_canvas_sends_each_job_to_its_queue() -> None:
    plan = compile_plan(PIPELINE)
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    assert [job_queue(app, plan, job) for job in ("build", "train", "ship")] == [
        "jobs", "jobs.labels.gpu+linux", "deploy"]
    canvas = build_canvas(app, plan, "r1")
    queues = [task.options["queue"] for task in canvas.tasks]
    assert queues == ["jobs", "jobs.labels.gpu+linux", "deploy"]


def test_conveyor_run_ignores_runs_on_its_one_worker_takes_everything() -> None:
    plan = compile_plan(PIPELINE)
    app = create_app(Settings())  # embedded: no broker
    assert [job_queue(app, plan, job) for job in ("build", "train", "ship")] == ["jobs", "jobs", "deploy"]


def test_a_rescheduled_job_task_stays_on_its_label_queue() -> None:
    """A job waiting for a dependency or a lease is retried through Celery: the copy must go
    back to the queue it came from, not to the task's default route (`jobs`)."""
    from celery.app.task import Context

    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))

    # The task as worker/tasks.py declares it, on this app only (shared=False: a shared task
    # would join every app the session creates later).
    @app.task(name=RUN_JOB_TASK, bind=True, max_retries=None, acks_late=True, shared=False)
    def task(self, run_id: str, job: str) -> None: ...

    request = Context(id="t1", args=[], kwargs={"run_id": "r", "job": "train"},
                      delivery_info={"exchange": "", "routing_key": "jobs.labels.gpu+linux", "priority": 0})
    again = task.signature_from_request(request, countdown=1)
    assert again.options["queue"] == "jobs.labels.gpu+linux"
    route = app.amqp.router.route(dict(again.options), RUN_JOB_TASK)
    assert route["queue"].name == "jobs.labels.gpu+linux"


# -- who can take a job, why it waits (no services) --------------------------------------------------


def presence(name: str, labels=(), queues=("jobs", "deploy"), seen: float = NOW, stopped: bool = False):
    return WorkerPresence(name, frozenset(labels), frozenset(queues), seen, stopped)


def test_a_worker_takes_a_job_when_it_has_all_its_labels() -> None:
    gpu = presence("g", ["gpu", "linux"])
    assert gpu.can_take(["gpu"], False) and gpu.can_take(["linux", "gpu"], False) and gpu.can_take([], False)
    assert not gpu.can_take(["gpu", "tpu"], False)
    only_labels = presence("l", ["gpu"], queues=["deploy"])
    assert only_labels.can_take(["gpu"], False) and only_labels.can_take([], True)
    assert not only_labels.can_take([], False)  # it does not consume `jobs`


def test_the_waiting_reason_names_what_is_missing_and_only_when_no_live_worker_has_it() -> None:
    workers = [presence("g", ["gpu"]), presence("old-tpu", ["tpu"], seen=NOW - 60), presence("s", ["tpu"], stopped=True)]
    assert waiting_reason(["gpu"], False, workers, NOW) is None
    assert waiting_reason(["tpu"], False, workers, NOW) == "waiting for a worker with labels tpu"
    assert waiting_reason(["tpu", "gpu", "tpu"], False, workers, NOW) == "waiting for a worker with labels gpu, tpu"
    assert waiting_reason([], False, [], NOW) == "waiting for a worker of the jobs queue"
    assert waiting_reason([], True, [presence("j", queues=["jobs"])], NOW) == "waiting for a worker of the deploy queue"
    assert worker_labels.last_seen_able(["tpu"], False, workers) == NOW
    assert worker_labels.last_seen_able(["fpga"], False, workers) is None


def iso(epoch: float) -> str:
    from shared.state.base import iso_ms

    return iso_ms(epoch * 1000)


def record(status: str, finished: float | None = None, retry_delay: float | None = None) -> JobRecord:
    attempts = [] if status == PENDING else [
        AttemptRecord(1, "w", iso(NOW - 100), iso(finished) if finished else None, status, None, None, retry_delay)]
    return JobRecord("j", status, len(attempts), None, None, iso(finished) if finished else None, None, None, False,
                     attempts)


def test_a_job_waits_for_a_worker_from_when_it_could_start() -> None:
    created = iso(NOW - 500)
    assert waiting_since(record(PENDING), [], created) == pytest.approx(NOW - 500)
    assert waiting_since(record(PENDING), [record(SUCCESS, NOW - 20), record(FAILED, NOW - 10)], created) == \
        pytest.approx(NOW - 10)
    assert waiting_since(record(PENDING), [record(SUCCESS, NOW - 20), record(PENDING)], created) is None
    assert waiting_since(record(RETRYING, NOW - 30, retry_delay=5.0), [], created) == pytest.approx(NOW - 25)
    assert waiting_since(record(SUCCESS, NOW - 30), [], created) is None


# -- presence, status and the reaper on real Redis ---------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def store(redis_url: str, client) -> Iterator[RedisState]:
    state = RedisState(redis_url)
    yield state
    state.close()


def test_workers_announce_their_labels_and_old_entries_are_forgotten(client) -> None:
    worker_labels.announce(client, "w1", ["linux", "gpu"], ["jobs", "deploy"])
    client.hset(worker_labels.WORKERS_KEY, "ancient", json.dumps(
        {"labels": [], "queues": ["jobs"], "seen": time.time() - worker_labels.FORGET_S - 10}))
    client.hset(worker_labels.WORKERS_KEY, "garbage", "not json")
    worker_labels.announce(client, "w2", [], ["jobs"])
    workers, now = worker_labels.presences(client)
    assert now == pytest.approx(time.time(), abs=5)
    assert [(w.name, sorted(w.labels), sorted(w.queues), w.live(now)) for w in workers] == [
        ("w1", ["gpu", "linux"], ["deploy", "jobs"], True), ("w2", [], ["jobs"], True)]
    assert not client.hexists(worker_labels.WORKERS_KEY, "ancient")
    worker_labels.announce(client, "w1", ["linux", "gpu"], ["jobs", "deploy"], stopped=True)
    workers, now = worker_labels.presences(client)
    assert [w.name for w in workers if w.live(now)] == ["w2"]
    assert worker_labels.last_seen_able(["gpu"], False, workers) == pytest.approx(now, abs=5)


def new_run(store: RedisState, text: str) -> tuple[str, Plan]:
    plan = compile_plan(text)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    store.create_run(run_id, plan.pipeline, {name: JobMeta() for name in plan.jobs}, plan.to_dict(), {})
    return run_id, plan


def finish(store: RedisState, run_id: str, job: str, status: str = SUCCESS, **kwargs) -> None:
    claim = store.claim(run_id, job, "w1", 60_000)
    assert isinstance(claim, Claim)
    store.finish(run_id, job, claim.token, status, **kwargs)


def reaper(redis_url: str, store: RedisState) -> Reaper:
    return Reaper(redis.Redis.from_url(redis_url), BrokerKeys(), store, interval=0.05, grace=30.0)


def reap(sweeper: Reaper) -> list[tuple[str, str, str]]:
    time.sleep(0.06)  # passes are one interval apart
    return sorted((a.job, a.action, a.why) for a in sweeper.reap_once() or [])


UNSERVED = """
    name: unserved
    jobs:
      build: {steps: [{name: s, script: [x]}]}
      infer: {depends_on: [build], runs_on: [tpu], queue_timeout: 1s, steps: [{name: s, script: [x]}]}
      gpu: {depends_on: [build], runs_on: [gpu], queue_timeout: 1s, steps: [{name: s, script: [x]}]}
      cleanup: {depends_on: [infer], runs_on: [tpu], queue_timeout: 1s, conditional: "success()",
                steps: [{name: s, script: [x]}]}
"""


def test_a_job_no_live_worker_can_take_shows_why_then_fails_no_worker_and_moves_on(redis_url, client, store) -> None:
    app = create_app(Settings(broker_url=redis_url))
    run_id, plan = new_run(store, UNSERVED)
    worker_labels.announce(client, "w1", ["gpu"], ["jobs", "deploy"])
    sweeper = reaper(redis_url, store)
    # nothing waits while `build` has not finished
    assert "waiting" not in status_json(store, run_id)["jobs"]["infer"]
    finish(store, run_id, "build")
    app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": "infer"}, immutable=True,
                  queue=job_queue(app, plan, "infer")).apply_async()
    jobs = status_json(store, run_id)["jobs"]
    assert jobs["infer"]["waiting"] == "waiting for a worker with labels tpu"
    assert "waiting" not in jobs["gpu"]  # w1 has the label: it is queued, not unserved
    assert "waiting" not in jobs["cleanup"]  # `infer` has not finished
    assert "waiting for a worker with labels tpu" in status_text(store, run_id)
    assert reap(sweeper) == []  # within its queue_timeout
    time.sleep(1.0)
    worker_labels.announce(client, "w1", ["gpu"], ["jobs", "deploy"])  # still alive
    assert reap(sweeper) == [("infer", "failed", "no_worker: a worker with labels tpu")]
    infer = status_json(store, run_id)["jobs"]["infer"]
    assert (infer["status"], infer["reason"], infer["worker"]) == (FAILED, "no_worker", NO_WORKER)
    assert "waiting" not in infer
    (entry,) = store.read_logs(run_id, "infer")[0]
    assert entry.stream == "system" and "queue_timeout of 1s" in entry.text and "w1 [gpu]" in entry.text
    # its message left the queue nobody consumes, for `jobs`, where a worker sends the rest of the chain
    assert client.llen("jobs.labels.tpu") == 0
    assert [job_task(json.loads(raw))[:2] for raw in client.lrange("jobs", 0, -1)] == [(run_id, "infer")]
    # the job after it would not run: skipped at once, not after its own queue_timeout
    assert reap(sweeper) == [("cleanup", "skipped", "upstream_failed; no live worker can take it")]
    assert status_json(store, run_id)["jobs"]["cleanup"]["reason"] == "upstream_failed"
    assert status_json(store, run_id)["jobs"]["gpu"]["status"] == PENDING  # a live worker has its label


@pytest.mark.slow
def test_a_worker_seen_lately_is_waited_for_a_whole_queue_timeout(redis_url, client, store) -> None:
    """A worker restarting (or a network blip) is not a reason to fail the jobs waiting for it."""
    run_id, _ = new_run(store, """
        name: restart
        jobs:
          train: {runs_on: [gpu], queue_timeout: 2s, steps: [{name: s, script: [x]}]}
    """)
    time.sleep(1.5)
    # the only gpu worker stopped a moment ago: the job waits for it, visibly
    worker_labels.announce(client, "gpu-box", ["gpu"], ["jobs"], stopped=True)
    sweeper = reaper(redis_url, store)
    assert status_json(store, run_id)["jobs"]["train"]["waiting"] == "waiting for a worker with labels gpu"
    assert reap(sweeper) == []  # 1.5 s since the run started, 0 since the worker was seen
    time.sleep(1.0)
    assert reap(sweeper) == []  # 2.5 s since the run started, 1 since the worker was seen
    time.sleep(1.1)
    assert reap(sweeper) == [("train", "failed", "no_worker: a worker with labels gpu")]


def test_a_job_a_live_worker_can_take_is_never_failed_however_long_it_waits(redis_url, client, store) -> None:
    run_id, _ = new_run(store, """
        name: busy
        jobs:
          train: {runs_on: [gpu], queue_timeout: 1s, steps: [{name: s, script: [x]}]}
          plain: {queue_timeout: 1s, steps: [{name: s, script: [x]}]}
    """)
    worker_labels.announce(client, "gpu-box", ["gpu", "linux"], ["jobs"])
    time.sleep(1.2)
    assert reap(reaper(redis_url, store)) == []
    jobs = status_json(store, run_id)["jobs"]
    assert [jobs[name]["status"] for name in ("train", "plain")] == [PENDING, PENDING]
    assert not any("waiting" in job for job in jobs.values())


def test_a_labelled_job_waiting_in_its_queue_is_not_sent_again_as_stalled(redis_url, client, store) -> None:
    """The stall check looks for a job's message in its own queue, label queues included."""
    app = create_app(Settings(broker_url=redis_url))
    run_id, plan = new_run(store, """
        name: stall
        jobs:
          train: {runs_on: [gpu], steps: [{name: s, script: [x]}]}
    """)
    worker_labels.announce(client, "gpu-box", ["gpu"], ["jobs"])  # busy elsewhere, but alive
    app.signature(RUN_JOB_TASK, kwargs={"run_id": run_id, "job": "train"}, immutable=True,
                  queue=job_queue(app, plan, "train")).apply_async()
    assert client.llen("jobs.labels.gpu") == 1
    sent: list[tuple[str, str, str]] = []
    sweeper = Reaper(redis.Redis.from_url(redis_url), BrokerKeys(), store, interval=0.05, grace=0.3,
                     resend=lambda *a: sent.append(a))
    for _ in range(3):
        reap(sweeper)
        time.sleep(0.3)
    assert sent == []
    client.delete("jobs.labels.gpu")  # its message is lost: then it is sent again, to its own queue
    for _ in range(3):
        reap(sweeper)
        time.sleep(0.3)
    assert sent and set(sent) == {(run_id, "train", "jobs.labels.gpu")}


def test_the_live_view_shows_why_a_job_waits_on_its_row(redis_url, client, store) -> None:
    from rich.console import Console

    from coordinator.follow import DagView, _waiting_lines

    run_id, _ = new_run(store, """
        name: live
        jobs:
          build: {steps: [{name: s, script: [x]}]}
          infer: {runs_on: [tpu, arm], steps: [{name: s, script: [x]}]}
          after: {depends_on: [build], runs_on: [tpu], steps: [{name: s, script: [x]}]}
    """)
    worker_labels.announce(client, "w1", ["gpu"], ["jobs"])
    run, plan = store.get_run(run_id), store.get_plan(run_id)
    view = DagView(run_id, "live", run.created_at, plan, waiting=_waiting_lines(store, run_id, plan, run.created_at))
    view.update("running", store.get_jobs(run_id))
    console = Console(record=True, width=200, color_system=None)
    console.print(view)
    rows = {name: line for line in console.export_text().splitlines() for name in ("build", "infer", "after")
            if f" {name} " in line}
    assert "waiting for a worker with labels arm, tpu" in rows["infer"]
    assert "waiting" not in rows["build"] and "after build" in rows["after"]
