"""A simulated world for the pure strategy code: a router, instances and traffic in memory.

`World.tick()` does what a real tick does, minus the I/O: probe what is due (instances
answer by their version's behaviour), advance the record, compute the router batch and
provider operations, and apply both to the simulated router and instances. Traffic is
split by effective weight like weighted round robin, and counted per server.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deploy import reconcile
from deploy.config import (
    AnalysisConfig, BlueGreenConfig, CanaryConfig, CanaryStep, DeployConfig, Gate, HealthConfig, ProviderConfig,
    RollingConfig, RouterConfig, Slot,
)
from deploy.health import Probe
from deploy.analysis import judge
from deploy.record import ANALYZING, PROGRESSING, Record, event, initialise, new_record, set_state
from deploy.routers.base import (
    MAINT, READY, AddServer, Counters, DelServer, ServerState, SetAddress, SetState, SetWeight,
)
from deploy.strategies import Observation, advance


def make_config(strategy: str = "rolling", instances: int = 2, spare: int = 2, **kw: Any) -> DeployConfig:
    return DeployConfig(
        environment="prod", version=kw.pop("version", "v2"), strategy=strategy,
        router=RouterConfig("haproxy", "unix:///x.sock", "web"),
        provider=ProviderConfig("command", start="start"),
        instances=tuple(Slot(f"web{i + 1}", f"127.0.0.1:{8081 + i}", "instance") for i in range(instances)),
        spare=tuple(Slot(f"spare{i + 1}", f"127.0.0.1:{8091 + i}", "spare") for i in range(spare)),
        health=kw.pop("health", HealthConfig(type="http", interval=1, success_threshold=1, failure_threshold=2)),
        rolling=kw.pop("rolling", RollingConfig(drain_timeout=5, progress_deadline=60)),
        blue_green=kw.pop("blue_green", BlueGreenConfig(keep_old_for=10)),
        canary=kw.pop("canary", CanaryConfig()),
        rollback_on_failure=kw.pop("rollback_on_failure", True),
    )


def canary_config(steps: list[CanaryStep] | None = None, analysis: AnalysisConfig | None = None, **kw: Any):
    steps = steps if steps is not None else [CanaryStep("set_weight", weight=20), CanaryStep("pause", seconds=3),
                                             CanaryStep("set_weight", weight=50), CanaryStep("pause", seconds=3)]
    analysis = analysis or AnalysisConfig(interval=1, min_requests=5, max_error_rate=0.05, failure_limit=2)
    return make_config("canary", canary=CanaryConfig(tuple(steps), analysis), **kw)


def gate(name: str, timeout: float | None = None, on_timeout: str = "abort") -> CanaryStep:
    return CanaryStep("gate", gate=Gate(name, timeout, on_timeout))


@dataclass
class Behaviour:
    healthy: bool = True
    error_rate: float = 0.0
    healthy_on: set[str] | None = None  # only these instances are healthy (None: all)
    flapping: bool = False  # alternates pass/fail: never reaches a threshold either way


@dataclass
class World:
    config: DeployConfig
    stable: str | None = "v1"
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    requests_per_tick: int = 20
    tick_ms: int = 500
    now: int = 1_000_000
    history: list[dict[str, Any]] = field(default_factory=list)
    batches: list[list[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = self.config
        self.servers: dict[str, ServerState] = {
            s.name: ServerState(s.name, s.address, 1, READY, "UP") for s in cfg.instances
        }
        self.instances: dict[str, str | None] = {s.name: self.stable for s in cfg.instances}
        self.instances.update({s.name: None for s in cfg.spare})
        rec = new_record("run-1", "release", cfg, 1, self.now)
        rec = initialise(rec, cfg, None, self.stable, self.now)
        set_state(rec, PROGRESSING, self.now)
        self.rec: Record = rec
        self.gates: dict[str, dict] = {}
        self.commands: list[dict] = []
        self.served: dict[str, int] = {}
        self.flips: dict[str, bool] = {}
        self._carry: dict[str, float] = {}
        self.refresh()

    # -- the simulated world ------------------------------------------------------------------

    def behaviour(self, version: str | None) -> Behaviour:
        return self.behaviours.get(version or "", Behaviour())

    def instance_healthy(self, name: str) -> bool:
        version = self.instances.get(name)
        if version is None:
            return False
        b = self.behaviour(version)
        return b.healthy and (b.healthy_on is None or name in b.healthy_on)

    def probe(self, name: str) -> bool:
        if self.behaviour(self.instances.get(name)).flapping:
            self.flips[name] = not self.flips.get(name, False)
            return self.flips[name]
        return self.instance_healthy(name)

    def refresh(self) -> None:
        """Router statuses follow instance health (HAProxy's own checks)."""
        for name, server in list(self.servers.items()):
            status = "MAINT" if server.admin == MAINT else ("UP" if self.instance_healthy(name) else "DOWN")
            self.servers[name] = dataclasses.replace(server, status=status)

    def traffic(self) -> None:
        """Requests split by effective weight (deterministic, carrying fractions over)."""
        weights = {n: s.effective_weight for n, s in self.servers.items() if s.up and s.effective_weight > 0}
        total = sum(weights.values())
        if not total:
            return
        for name, weight in weights.items():
            share = self.requests_per_tick * weight / total + self._carry.get(name, 0.0)
            count = int(share)
            self._carry[name] = share - count
            errors = round(count * self.behaviour(self.instances.get(name)).error_rate)
            old = self.servers[name].counters
            counters = Counters(old.responses + count, old.errors_5xx + errors, 5.0)
            self.servers[name] = dataclasses.replace(self.servers[name], counters=counters)
            self.served[name] = self.served.get(name, 0) + count

    def apply_router(self, actions) -> None:
        for action in actions:
            server = self.servers.get(action.name)
            if isinstance(action, AddServer):
                assert server is None, f"add of existing {action.name}"
                self.servers[action.name] = ServerState(action.name, action.address, action.weight, MAINT, "MAINT")
            elif isinstance(action, DelServer):
                assert server is not None and server.admin == MAINT and server.sessions == 0
                del self.servers[action.name]
            elif isinstance(action, SetWeight):
                self.servers[action.name] = dataclasses.replace(server, weight=action.weight)
            elif isinstance(action, SetState):
                self.servers[action.name] = dataclasses.replace(server, admin=action.state)
            elif isinstance(action, SetAddress):
                self.servers[action.name] = dataclasses.replace(server, address=action.address)
        self.refresh()

    # -- one tick -----------------------------------------------------------------------------

    def tick(self) -> Record:
        self.now += self.tick_ms
        self.traffic()
        rec = self.rec
        targets = reconcile.probe_targets(rec, self.now)
        probes = {n: Probe(self.probe(n), "sim") for n in targets}
        reconcile.apply_probes(rec, probes, self.config.health, self.now)
        smoke = None
        if rec["state"] == ANALYZING:
            bad = any(self.behaviour(self.instances.get(n)).error_rate > 0 for n in rec["data"]["green"])
            smoke = judge(40, 10 if bad else 0, 3.0, self.config.analysis).to_dict()
        obs = Observation(servers=dict(self.servers), gates=dict(self.gates), commands=list(self.commands),
                          smoke=smoke)
        rec["commands_done"] += len(self.commands)
        self.commands = []
        rec = advance(rec, obs, self.now)
        actions = reconcile.router_actions(rec, self.servers, reconcile.router_check(self.config.health))
        if actions:
            self.batches.append(actions)
        self.apply_router(actions)
        for name, version in reconcile.provider_operations(rec):
            assert self.servers.get(name) is None or self.servers[name].admin == MAINT, \
                f"provider touched {name} while the router sends it traffic"
            self.instances[name] = version
            reconcile.record_operation(rec, name, version, self.now)
        self.refresh()
        self.rec = rec
        self.history.append({"state": rec["state"], "servers": dict(self.servers), "instances": dict(self.instances)})
        return rec

    def run(self, until: set[str] | None = None, max_ticks: int = 400) -> Record:
        from deploy.record import TERMINAL

        until = until or set(TERMINAL)
        for _ in range(max_ticks):
            if self.rec["state"] in until:
                return self.rec
            self.tick()
        raise AssertionError(f"still {self.rec['state']} after {max_ticks} ticks; events: {self.rec['events'][-8:]}")

    def abort(self, by: str = "tester") -> None:
        self.commands.append({"type": "abort", "by": by, "at": self.now})

    def answer(self, gate_name: str, decision: str, by: str = "tester") -> None:
        self.gates[gate_name] = {"decision": decision, "by": by, "at": self.now}

    # -- assertions -----------------------------------------------------------------------------

    def effective(self) -> dict[str, int]:
        return {n: s.effective_weight for n, s in self.servers.items() if s.effective_weight > 0 and s.up}

    def stable_restored(self) -> bool:
        """Every live slot serves the stable version at its full share; nothing else runs or is routed to."""
        live = self.rec["live"]
        shares = {n: self.rec["slots"][n]["weight"] for n in live}
        if sum(shares.values()) != 100:
            return False
        for name in live:
            server = self.servers.get(name)
            if server is None or server.admin != READY or server.weight != shares[name]:
                return False
            if self.stable is not None and self.instances[name] != self.stable:
                return False
        for name in self.rec["slots"]:
            if name in live:
                continue
            server = self.servers.get(name)
            if self.instances.get(name) is not None or (server is not None and server.admin != MAINT):
                return False
        return True


def events_of(rec: Record, kind: str) -> list[dict]:
    return [e for e in rec["events"] if e["type"] == kind]


__all__ = ["World", "Behaviour", "make_config", "canary_config", "gate", "events_of", "event"]
