"""Strategies as pure state machines, driven through a simulated router and instances (tests/deploy/sim.py)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from deploy.config import BlueGreenConfig, CanaryStep, HealthConfig, RollingConfig
from deploy.record import (
    ABORTED, PAUSED, PROMOTED, ROLLED_BACK, SUCCEEDED, TERMINAL, WAITING,
)
from deploy.routers.base import DRAIN, READY, SetState, SetWeight
from tests.deploy.sim import Behaviour, World, canary_config, events_of, gate, make_config


def ready_up(world: World) -> int:
    return sum(1 for s in world.servers.values() if s.admin == READY and s.up)


# -- rolling ----------------------------------------------------------------------------------------


def test_rolling_replaces_every_instance_without_losing_capacity() -> None:
    world = World(make_config("rolling", instances=3))
    capacity = []
    while world.rec["state"] not in TERMINAL:
        world.tick()
        capacity.append(ready_up(world))
        assert len(world.history) < 400
    rec = world.rec
    assert rec["state"] == SUCCEEDED and rec["result"]["status"] == "success"
    assert {world.instances[n] for n in ("web1", "web2", "web3")} == {"v2"}
    assert world.instances["spare1"] is None and "spare1" not in world.servers  # surge removed
    assert {n: world.servers[n].weight for n in ("web1", "web2", "web3")} == {"web1": 34, "web2": 33, "web3": 33}
    assert min(capacity) >= 3  # max_unavailable 0: never below the pool size
    assert [e["server"] for e in events_of(rec, "updated")] == ["web1", "web2", "web3"]


def test_rolling_without_surge_takes_one_down_at_a_time() -> None:
    world = World(make_config("rolling", instances=3, spare=0,
                              rolling=RollingConfig(max_surge=0, max_unavailable=1, drain_timeout=5)))
    capacity = []
    while world.rec["state"] not in TERMINAL:
        world.tick()
        capacity.append(ready_up(world))
    assert world.rec["state"] == SUCCEEDED
    assert min(capacity) >= 2 and {world.instances[n] for n in ("web1", "web2", "web3")} == {"v2"}


def test_rolling_rolls_back_when_an_updated_instance_fails_health() -> None:
    world = World(make_config("rolling"), behaviours={"v2": Behaviour(healthy_on={"web1", "spare1"})})
    while world.rec["state"] not in TERMINAL:
        world.tick()
        assert ready_up(world) >= 1  # the rollback never leaves nothing serving
    rec = world.rec
    assert rec["state"] == ABORTED
    assert rec["result"] == {"status": "failed", "reason": "script_failure", "message": rec["abort"]["message"]}
    assert "web2 failed its health checks" in rec["abort"]["message"]
    assert world.stable_restored()
    assert world.instances["web1"] == "v1" and world.instances["web2"] == "v1"


def test_rolling_aborts_at_the_progress_deadline() -> None:
    flappy = HealthConfig(type="http", interval=1, success_threshold=2, failure_threshold=2)
    world = World(make_config("rolling", rolling=RollingConfig(progress_deadline=5, drain_timeout=1), health=flappy),
                  behaviours={"v2": Behaviour(flapping=True)})
    rec = world.run()
    assert rec["state"] == ABORTED and "progress_deadline" in rec["abort"]["message"]
    assert world.stable_restored()


def test_first_deployment_installs_on_instances_that_do_not_run() -> None:
    world = World(make_config("rolling"), stable=None)
    for name in ("web1", "web2"):
        world.instances[name] = None
    world.refresh()
    rec = world.run()
    assert rec["state"] == SUCCEEDED
    assert world.instances["web1"] == world.instances["web2"] == "v2"


# -- blue-green ----------------------------------------------------------------------------------------


def switch_batches(world: World) -> list[list]:
    """Batches that move traffic to green (a green server raised to its share)."""
    return [b for b in world.batches if any(isinstance(a, SetWeight) and a.name.startswith("spare") and a.weight > 0
                                            for a in b)]


def test_blue_green_switches_in_one_batch_and_keeps_blue_for_rollback() -> None:
    world = World(make_config("blue_green"))
    world.run(until={"switching"})
    assert world.served.get("spare1", 0) == 0  # no traffic to green before the switch
    rec = world.run(until={PROMOTED})
    assert rec["result"]["status"] == "success"
    [batch] = switch_batches(world)
    assert {(a.name, a.weight) for a in batch if isinstance(a, SetWeight)} >= {("spare1", 50), ("spare2", 50)}
    assert {a.name for a in batch if isinstance(a, SetState) and a.state == DRAIN} == {"web1", "web2"}
    assert world.effective() == {"spare1": 50, "spare2": 50}
    assert world.instances["web1"] == "v1"  # kept, drained
    rec = world.run()
    assert rec["state"] == SUCCEEDED
    assert world.instances["web1"] is None and world.servers["web1"].admin == "maint"


def test_blue_green_rollback_while_old_is_kept_is_one_batch_back() -> None:
    world = World(make_config("blue_green", blue_green=BlueGreenConfig(keep_old_for=60)))
    world.run(until={PROMOTED})
    world.commands.append({"type": "rollback", "by": "ops", "at": world.now})
    world.tick()
    assert world.effective() == {"web1": 50, "web2": 50}  # back after one tick
    rec = world.run()
    assert rec["state"] == ROLLED_BACK and rec["result"]["status"] == "success"  # the job had succeeded
    assert world.stable_restored()


def test_blue_green_with_unhealthy_green_never_touches_blue() -> None:
    world = World(make_config("blue_green"), behaviours={"v2": Behaviour(healthy=False)})
    rec = world.run()
    assert rec["state"] == ABORTED and "green instance" in rec["abort"]["message"]
    assert all(h["servers"]["web1"].admin == READY for h in world.history)
    assert world.stable_restored()


def test_blue_green_manual_promotion_waits_for_the_gate() -> None:
    world = World(make_config("blue_green", blue_green=BlueGreenConfig(auto_promote=False, keep_old_for=5)))
    world.run(until={WAITING})
    for _ in range(10):
        world.tick()
    assert world.rec["state"] == WAITING and world.effective() == {"web1": 50, "web2": 50}
    world.answer("promote", "approve", by="alice")
    assert world.run(until={PROMOTED})["result"]["status"] == "success"
    assert [e for e in events_of(world.rec, "gate") if e["status"] == "approve"][0]["by"] == "alice"


def test_blue_green_pre_promotion_analysis_failure_aborts() -> None:
    world = World(make_config("blue_green", blue_green=BlueGreenConfig(pre_promotion_analysis=True)),
                  behaviours={"v2": Behaviour(error_rate=0.3)})
    rec = world.run()
    assert rec["state"] == ABORTED and "pre-promotion analysis" in rec["abort"]["message"]
    assert world.stable_restored()


# -- canary ----------------------------------------------------------------------------------------


def test_canary_of_a_good_version_is_promoted() -> None:
    world = World(canary_config())
    weights = []
    while world.rec["state"] not in TERMINAL:
        world.tick()
        weights.append(world.effective().get("spare1", 0))
        assert len(weights) < 400
    rec = world.run()
    assert rec["state"] == SUCCEEDED
    assert world.instances == {"web1": "v2", "web2": "v2", "spare1": None, "spare2": None}
    assert world.effective() == {"web1": 50, "web2": 50}
    assert 20 in weights and 50 in weights
    assert [e["weights"]["spare1"] for e in events_of(rec, "weight")][:2] == [20, 50]
    assert all(e["verdict"] == "pass" for e in events_of(rec, "analysis"))


def test_canary_with_errors_is_aborted_by_analysis_and_stable_restored() -> None:
    world = World(canary_config(), behaviours={"v2": Behaviour(error_rate=0.2)})
    rec = world.run()
    assert rec["state"] == ABORTED and "canary analysis failed 2 window(s)" in rec["abort"]["message"]
    verdicts = [e["verdict"] for e in events_of(rec, "analysis")]
    assert verdicts[-2:] == ["fail", "fail"]
    assert world.stable_restored() and world.effective() == {"web1": 50, "web2": 50}


def test_no_data_is_not_success() -> None:
    world = World(canary_config(), requests_per_tick=1)  # under min_requests per window
    rec = world.run()
    assert rec["state"] == ABORTED and "inconclusive" in rec["abort"]["message"]
    assert {e["verdict"] for e in events_of(rec, "analysis")} == {"inconclusive"}
    assert world.stable_restored()


def test_approval_gate_waits_with_analysis_running_then_continues() -> None:
    steps = [CanaryStep("set_weight", weight=10), gate("go-live", timeout=100), CanaryStep("set_weight", weight=100)]
    world = World(canary_config(steps))
    world.run(until={WAITING})
    for _ in range(10):
        world.tick()
    assert world.rec["state"] == WAITING and world.effective()["spare1"] == 10
    assert events_of(world.rec, "analysis")  # analysis keeps running at the gate
    world.answer("go-live", "approve", by="bob")
    assert world.run()["state"] == SUCCEEDED


def test_rejected_or_expired_gates_abort() -> None:
    steps = [CanaryStep("set_weight", weight=10), gate("go-live", timeout=100)]
    rejected = World(canary_config(steps))
    rejected.run(until={WAITING})
    rejected.answer("go-live", "reject", by="carol")
    rec = rejected.run()
    assert rec["state"] == ABORTED and rec["abort"]["message"] == "gate go-live rejected by carol"
    assert rejected.stable_restored()

    expiring = World(canary_config([CanaryStep("set_weight", weight=10), gate("go-live", timeout=3)]))
    rec = expiring.run()
    assert rec["state"] == ABORTED and "expired" in rec["abort"]["message"]
    assert expiring.stable_restored()

    promoting = World(canary_config([CanaryStep("set_weight", weight=10), gate("go-live", 3, "promote")]),
                      requests_per_tick=60)
    assert promoting.run()["state"] == SUCCEEDED


def test_indefinite_pause_is_a_gate_named_by_position() -> None:
    steps = [CanaryStep("set_weight", weight=10), gate("pause-2")]
    world = World(canary_config(steps), requests_per_tick=60)
    world.run(until={WAITING})
    assert world.rec["data"]["gate"]["name"] == "pause-2" and world.rec["data"]["gate"]["deadline"] is None
    world.answer("pause-2", "approve")
    assert world.run()["state"] == SUCCEEDED


def test_canary_pauses_for_the_configured_time() -> None:
    world = World(canary_config([CanaryStep("set_weight", weight=30), CanaryStep("pause", seconds=5)]))
    world.run(until={PAUSED})
    paused_at = world.now
    world.run(until={"promoting"})
    assert world.now - paused_at >= 5000


def test_abort_while_waiting_restores_at_once() -> None:
    world = World(canary_config([CanaryStep("set_weight", weight=40), gate("go-live")]))
    world.run(until={WAITING})
    world.abort()
    world.tick()
    assert world.effective() == {"web1": 50, "web2": 50}  # one tick: traffic back on stable
    rec = world.run()
    assert rec["state"] == ABORTED and rec["abort"]["by"] == "tester" and world.stable_restored()


def test_rollback_on_failure_false_keeps_the_failed_instance_running_out_of_traffic() -> None:
    world = World(canary_config(rollback_on_failure=False), behaviours={"v2": Behaviour(error_rate=0.2)})
    rec = world.run()
    assert rec["state"] == ABORTED
    assert world.instances["spare1"] == "v2" and "spare1" not in world.servers
    assert world.effective() == {"web1": 50, "web2": 50}


# -- abort always wins --------------------------------------------------------------------------------

CONFIGS = {
    "rolling": lambda: make_config("rolling", instances=3),
    "rolling-no-surge": lambda: make_config("rolling", rolling=RollingConfig(max_surge=0, max_unavailable=1)),
    "blue_green": lambda: make_config("blue_green", blue_green=BlueGreenConfig(keep_old_for=30)),
    "canary": lambda: canary_config([CanaryStep("set_weight", weight=25), CanaryStep("pause", seconds=2),
                                     gate("go", timeout=20), CanaryStep("set_weight", weight=100)]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(CONFIGS)), ticks=st.integers(0, 80), healthy=st.booleans(),
       error_rate=st.sampled_from([0.0, 0.0, 0.3]), approve_at=st.one_of(st.none(), st.integers(0, 60)))
def test_abort_from_any_reachable_state_restores_stable(kind, ticks, healthy, error_rate, approve_at) -> None:
    world = World(CONFIGS[kind](), behaviours={"v2": Behaviour(healthy=healthy, error_rate=error_rate)})
    for i in range(ticks):
        if approve_at == i:
            world.answer("go", "approve")
        world.tick()
    state_at_abort = world.rec["state"]
    serving_at_abort = ready_up(world) > 0
    world.abort()
    while world.rec["state"] not in TERMINAL:
        world.tick()
        # restoring never takes the last serving instance away
        assert ready_up(world) > 0 or not serving_at_abort, world.rec["events"][-4:]
        assert len(world.history) < 600
    rec = world.rec
    if state_at_abort == SUCCEEDED:
        return  # finished before the abort: the new version is the stable one now
    assert world.stable_restored(), (state_at_abort, rec["events"][-6:])
    if state_at_abort == PROMOTED or rec["state"] == ROLLED_BACK:
        assert rec["state"] == ROLLED_BACK
    else:
        assert rec["state"] == ABORTED and rec["result"]["status"] == "failed"


@settings(max_examples=30, deadline=None)
@given(instances=st.integers(1, 4), spare=st.integers(0, 2), batch=st.integers(1, 3), surge=st.integers(0, 2),
       unavailable=st.integers(0, 2))
def test_rolling_never_drops_below_the_allowed_capacity(instances, spare, batch, surge, unavailable) -> None:
    if surge == 0 and unavailable == 0:
        surge = 1
    if surge > spare and unavailable == 0:
        unavailable = 1  # without enough spares surge is reduced; keep the config able to progress
    config = make_config("rolling", instances=instances, spare=spare,
                         rolling=RollingConfig(batch_size=batch, max_surge=surge, max_unavailable=unavailable,
                                               drain_timeout=2))
    world = World(config)
    while world.rec["state"] not in TERMINAL:
        world.tick()
        assert ready_up(world) >= instances - unavailable
        assert len(world.history) < 500
    assert world.rec["state"] == SUCCEEDED
    assert {world.instances[f"web{i + 1}"] for i in range(instances)} == {"v2"}
