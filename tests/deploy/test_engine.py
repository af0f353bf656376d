"""The tick engine end to end without Celery: real HAProxy, real demo-app processes, the SQLite state store.

Ticks run synchronously from an in-test queue that honours their countdowns, so each test
exercises exactly the code a worker runs (deploy.engine.begin / tick) and nothing else.
"""
from __future__ import annotations

import heapq
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest

from coordinator.frontend import load_file
from deploy import engine
from deploy.config import load_config
from deploy.record import ABORTED, PAUSED, SUCCEEDED, TERMINAL, WAITING
from deploy.routers.base import RouterUnavailable, SetWeight
from deploy.routers.haproxy import HAProxyRouter
from deploy.store import deploy_store_for
from shared.state import JobMeta, open_state
from tests.deploy.services import CTL, Load, app_env

PY = sys.executable


class Driver:
    """Runs enqueued ticks in due order, sleeping until each is due (countdowns capped at 2 s).

    `virtual=True` skips the sleeps and moves a virtual clock instead (give the runtime
    `clock=driver.clock`): for tests where nothing real needs the time to pass.
    """

    def __init__(self, virtual: bool = False) -> None:
        self.queue: list[tuple[float, int, str, str, int]] = []
        self.outcomes: list[str] = []
        self.counter = 0
        self.virtual = virtual
        self.now = time.monotonic()

    def clock(self) -> int:
        return int(self.now * 1000)

    def _time(self) -> float:
        return self.now if self.virtual else time.monotonic()

    def enqueue(self, run_id: str, job: str, seq: int, countdown: float) -> None:
        self.counter += 1
        heapq.heappush(self.queue, (self._time() + min(countdown, 2.0), self.counter, run_id, job, seq))

    def run(self, rt: engine.DeployRuntime, until: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = self._time() + timeout
        while not until():
            assert self.queue, "no tick queued"
            assert self._time() < deadline, f"not done in {timeout}s; last outcomes {self.outcomes[-5:]}"
            due, _, run_id, job, seq = heapq.heappop(self.queue)
            if self.virtual:
                self.now = max(self.now, due)
            else:
                time.sleep(max(0.0, due - time.monotonic()))
            self.outcomes.append(engine.tick(rt, run_id, job, seq))


def pipeline(tmp: Path, admin: str, ports: dict[str, int], deploy: str, interval: float = 0.3) -> Path:
    text = textwrap.dedent(f"""\
        name: engine-test
        environments:
          prod:
            router: {{type: haproxy, admin: "{admin}", backend: web}}
            provider:
              type: command
              start: "{PY} {CTL} start ${{INSTANCE}} ${{VERSION}} ${{PORT}}"
              stop: "{PY} {CTL} stop ${{INSTANCE}}"
            instances:
              - {{name: web1, address: "127.0.0.1:{ports['web1']}"}}
              - {{name: web2, address: "127.0.0.1:{ports['web2']}"}}
            spare: ["127.0.0.1:{ports['spare1']}", "127.0.0.1:{ports['spare2']}"]
            health_check: {{type: http, path: /healthz, interval: {interval}, timeout: 1,
                            success_threshold: 1, failure_threshold: 2}}
        jobs:
          release:
            deploy:
        """) + textwrap.indent(textwrap.dedent(deploy), " " * 6)
    path = tmp / "pipeline.yml"
    path.write_text(text)
    return path


class Harness:
    """A state store with one run per deployment, a runtime and a driver."""

    def __init__(self, tmp: Path, haproxy, ports: dict[str, int], app_state: Path, monkeypatch) -> None:
        for key, value in app_env(app_state).items():
            if key == "DEMO_STATE_DIR":
                monkeypatch.setenv(key, value)
        self.tmp, self.haproxy, self.ports = tmp, haproxy, ports
        self.state = open_state(f"sqlite:///{tmp / 'state.db'}")
        self.deploys = deploy_store_for(self.state)
        self.driver = Driver()
        self.rt = engine.DeployRuntime(self.state, self.deploys, self.driver.enqueue, "test-worker")
        self.router = HAProxyRouter(haproxy.admin, "web")
        self.count = 0

    def deploy(self, spec: str, interval: float = 0.3) -> str:
        self.count += 1
        run_id = f"run-{self.count}"
        path = pipeline(self.tmp, self.haproxy.admin, self.ports, spec, interval)
        result = load_file(path, {}, run_id=run_id)
        assert result.ok, [str(d) for d in result.diagnostics]
        plan = result.plan
        self.state.create_run(run_id, plan.pipeline, {"release": JobMeta()}, plan.to_dict(), {"source": str(self.tmp)})
        claim = self.state.claim(run_id, "release", "test-worker", 30_000)
        config = load_config(plan.jobs["release"].deploy, plan.environments)
        engine.begin(self.rt, run_id, "release", claim.token, config, str(self.tmp), None)
        return run_id

    def record(self, run_id: str) -> dict:
        return self.deploys.load(run_id, "release")[0]

    def wait(self, run_id: str, states=TERMINAL, timeout: float = 60.0) -> dict:
        self.driver.run(self.rt, lambda: self.record(run_id)["state"] in states, timeout)
        return self.record(run_id)

    def job(self, run_id: str):
        return self.state.get_jobs(run_id, ["release"])["release"]

    def weights(self) -> dict[str, int]:
        return {n: s.effective_weight for n, s in self.router.servers().items() if s.effective_weight}

    def install(self, version: str = "v1") -> None:
        run_id = self.deploy(f"""\
            environment: prod
            version: {version}
            strategy: rolling
            rolling: {{max_surge: 0, max_unavailable: 2, batch_size: 2, drain_timeout: 2}}
            """)
        assert self.wait(run_id)["state"] == SUCCEEDED


@pytest.fixture
def harness(tmp_path, haproxy, ports, app_state, monkeypatch) -> Harness:
    return Harness(tmp_path, haproxy, ports, app_state, monkeypatch)


def test_rolling_update_under_load_fails_no_request(harness: Harness) -> None:
    harness.install("v1")
    assert harness.weights() == {"web1": 50, "web2": 50}
    with Load(harness.haproxy.url) as load:
        time.sleep(0.3)
        run_id = harness.deploy("""\
            environment: prod
            version: v2
            strategy: rolling
            rolling: {batch_size: 1, max_unavailable: 0, max_surge: 1, drain_timeout: 5, progress_deadline: 60}
            """)
        rec = harness.wait(run_id)
        time.sleep(0.3)
    assert rec["state"] == SUCCEEDED and harness.job(run_id).status == "success"
    assert load.failures() == [] and len(load.results) > 50
    assert set(load.bodies()) == {"v1", "v2"}
    assert {b for t, s, b in load.results[-10:]} == {"v2"}
    assert harness.weights() == {"web1": 50, "web2": 50}
    assert "spare1" not in harness.router.servers()
    logs = "".join(e.text for e in harness.state.read_logs(run_id, "release")[0])
    assert "updated server=web1" in logs and "finished status=success" in logs


def test_canary_with_errors_aborts_and_restores_stable(harness: Harness) -> None:
    harness.install("v1")
    with Load(harness.haproxy.url, interval=0.005):
        run_id = harness.deploy("""\
            environment: prod
            version: v2+errors=20
            strategy: canary
            canary:
              steps: [{set_weight: 30}, {pause: 60}]
              analysis: {interval: 0.5, min_requests: 5, max_error_rate: 0.05, failure_limit: 2}
            """)
        rec = harness.wait(run_id)
    assert rec["state"] == ABORTED and "canary analysis failed" in rec["abort"]["message"]
    job = harness.job(run_id)
    assert (job.status, job.reason) == ("failed", "script_failure")
    assert harness.weights() == {"web1": 50, "web2": 50}
    assert "spare1" not in harness.router.servers()


def test_drift_is_repaired_and_cancel_aborts(harness: Harness) -> None:
    harness.install("v1")
    run_id = harness.deploy("""\
        environment: prod
        version: v2
        strategy: canary
        canary: {steps: [{set_weight: 20}, {approval: {name: go, timeout: 600}}]}
        """)
    harness.wait(run_id, {WAITING})
    assert harness.weights() == {"web1": 40, "web2": 40, "spare1": 20}
    harness.router.apply([SetWeight("web1", 1)])  # an operator, behind the engine's back
    harness.driver.run(harness.rt, lambda: harness.weights().get("web1") == 40, timeout=10)
    assert any(e["type"] == "drift" for e in harness.record(run_id)["events"])
    harness.state.request_cancel(run_id)
    rec = harness.wait(run_id)
    assert rec["state"] == ABORTED and rec["abort"]["reason"] == "cancelled"
    assert harness.job(run_id).status == "cancelled"
    assert harness.weights() == {"web1": 50, "web2": 50}


def test_stale_and_locked_ticks_do_nothing(harness: Harness) -> None:
    harness.install("v1")
    run_id = harness.deploy("""\
        environment: prod
        version: v2
        strategy: canary
        canary: {steps: [{set_weight: 10}, {pause: 600}]}
        """)
    harness.wait(run_id, {PAUSED})
    rec = harness.record(run_id)
    assert engine.tick(harness.rt, run_id, "release", rec["seq"] - 1) == "stale"
    assert harness.deploys.lock(run_id, "release", "someone-else", 10_000)
    queued = len(harness.driver.queue)
    assert engine.tick(harness.rt, run_id, "release", rec["seq"]) == "locked"
    assert len(harness.driver.queue) == queued + 1  # retried shortly, same seq
    assert engine.tick(harness.rt, run_id, "release", engine.NUDGE) == "locked"
    assert len(harness.driver.queue) == queued + 1  # a nudge is not retried
    harness.deploys.unlock(run_id, "release", "someone-else")
    assert harness.record(run_id)["seq"] == rec["seq"]


# -- fast: transient errors, without HAProxy ---------------------------------------------------------


class DownRouter:
    def __init__(self, failures: int) -> None:
        self.failures = failures

    def servers(self):
        if self.failures:
            self.failures -= 1
            raise RouterUnavailable("connection refused")
        return {}

    def apply(self, actions):
        raise RouterUnavailable("connection refused")


def test_transient_errors_back_off_then_abort_for_infrastructure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "BACKOFF_MAX_S", 0)
    monkeypatch.setattr(engine, "MIN_BACKOFF_S", 0.01)
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    driver = Driver()
    router = DownRouter(failures=10**6)
    rt = engine.DeployRuntime(state, deploy_store_for(state), driver.enqueue, "w",
                              router_factory=lambda config: router)
    path = pipeline(tmp_path, "unix:///nonexistent", {"web1": 1, "web2": 2, "spare1": 3, "spare2": 4}, """\
        environment: prod
        version: v2
        strategy: rolling
        """)
    plan = load_file(path, {}, run_id="r1").plan
    state.create_run("r1", plan.pipeline, {"release": JobMeta()}, plan.to_dict(), {})
    claim = state.claim("r1", "release", "w", 30_000)
    engine.begin(rt, "r1", "release", claim.token, load_config(plan.jobs["release"].deploy, plan.environments),
                 None, None)
    deploys = deploy_store_for(state)
    driver.run(rt, lambda: deploys.load("r1", "release")[0]["state"] in TERMINAL, timeout=60)
    rec = deploys.load("r1", "release")[0]
    retries = [e for e in rec["events"] if e["type"] == "retry"]
    assert len(retries) == 2 * (engine.MAX_RETRIES + 1)  # the deployment's retries, then the abort's
    assert any(e["type"] == "restore_incomplete" for e in rec["events"])
    assert rec["result"]["reason"] == "infrastructure" and "may still route" in rec["result"]["message"]
    job = state.get_jobs("r1", ["release"])["release"]
    assert (job.status, job.reason) == ("failed", "infrastructure")


class MemoryRouter:
    """An in-memory backend: servers are UP whenever they are not in maintenance."""

    def __init__(self, servers: dict[str, str]) -> None:
        from deploy.routers.base import ServerState

        self.servers_ = {n: ServerState(n, a, 1, "ready", "UP") for n, a in servers.items()}

    def servers(self):
        return dict(self.servers_)

    def apply(self, actions):
        import dataclasses

        from deploy.routers.base import AddServer, DelServer, Outcome, ServerState, SetState, SetWeight

        for a in actions:
            s = self.servers_.get(a.name)
            if isinstance(a, AddServer):
                self.servers_[a.name] = ServerState(a.name, a.address, a.weight, "maint", "MAINT")
            elif isinstance(a, DelServer):
                del self.servers_[a.name]
            elif isinstance(a, SetWeight):
                self.servers_[a.name] = dataclasses.replace(s, weight=a.weight)
            elif isinstance(a, SetState):
                self.servers_[a.name] = dataclasses.replace(s, admin=a.state,
                                                            status="MAINT" if a.state == "maint" else "UP")
        return [Outcome(a) for a in actions]


class NoopProvider:
    def start(self, instance, version):
        return ""

    def stop(self, instance):
        return ""


def test_one_deployment_per_environment_and_the_next_starts_from_what_it_left(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine, "probe", lambda config, instance, workdir=None, provider=None: engine.Probe(True, "ok"))
    state = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    ports = {"web1": 1, "web2": 2, "spare1": 3, "spare2": 4}
    router = MemoryRouter({"web1": "127.0.0.1:1", "web2": "127.0.0.1:2"})
    driver = Driver(virtual=True)
    rt = engine.DeployRuntime(state, deploy_store_for(state), driver.enqueue, "w", router_factory=lambda c: router,
                              provider_factory=lambda c, w: NoopProvider(), clock=driver.clock)
    deploys = deploy_store_for(state)

    def start(run_id: str, spec: str) -> None:
        plan = load_file(pipeline(tmp_path, "unix:///x.sock", ports, spec, 0.2), {}, run_id=run_id).plan
        state.create_run(run_id, plan.pipeline, {"release": JobMeta()}, plan.to_dict(), {})
        claim = state.claim(run_id, "release", "w", 30_000)
        engine.begin(rt, run_id, "release", claim.token,
                     load_config(plan.jobs["release"].deploy, plan.environments), None, None)

    def state_of(run_id: str) -> str:
        return deploys.load(run_id, "release")[0]["state"]

    start("a", "environment: prod\nversion: v2\nstrategy: canary\n"
               "canary: {steps: [{set_weight: 10}, {approval: {name: go}}]}\n")
    driver.run(rt, lambda: state_of("a") == WAITING, timeout=20)
    start("b", "environment: prod\nversion: v3\nstrategy: rolling\nrolling: {max_surge: 0, max_unavailable: 1}\n")
    driver.run(rt, lambda: any(e["type"] == "queued" for e in deploys.load("b", "release")[0]["events"]), timeout=20)
    assert state_of("b") == "queued"
    deploys.answer_gate("a", "go", {"decision": "approve", "by": "t", "at": "now"})
    driver.run(rt, lambda: state_of("b") in TERMINAL, timeout=30)
    assert state_of("a") == SUCCEEDED and state_of("b") == SUCCEEDED
    b = deploys.load("b", "release")[0]
    assert b["stable_version"] == "v2"  # what `a` left live
    started = [e for e in b["events"] if e["type"] == "started"][0]
    assert started["waited_for"] == "a\nrelease"
    assert state.get_jobs("b", ["release"])["release"].status == "success"
