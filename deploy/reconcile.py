"""From desired to actual: the router batch and the provider operations that make reality match a record.

Every tick computes these afresh from the record and what the router reports, so a tick
that died half-way, or a router changed behind our back (a reload, an operator's
`set weight`), is fixed by the next tick: the same diff is drift repair and progress.

Order inside the batch keeps traffic flowing: servers are added, weights raised and
servers made ready before others are drained or put in maintenance, so that no
instant of the batch has fewer servers ready than before or after it.
"""
from __future__ import annotations

import socket
from functools import lru_cache
from typing import Iterable, Mapping

from deploy import health
from deploy.config import HealthConfig
from deploy.health import Probe
from deploy.record import Record
from deploy.routers.base import (
    ABSENT,
    DRAIN,
    MAINT,
    READY,
    Action,
    AddServer,
    Check,
    DelServer,
    ServerState,
    SetAddress,
    SetState,
    SetWeight,
)


@lru_cache(maxsize=256)
def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def same_address(a: str, b: str) -> bool:
    """`host:port` equality, with host names resolved (the router reports IPs)."""
    host_a, _, port_a = a.rpartition(":")
    host_b, _, port_b = b.rpartition(":")
    if port_a != port_b:
        return False
    return host_a == host_b or _resolve(host_a.strip("[]")) == _resolve(host_b.strip("[]"))


def router_check(config: HealthConfig) -> Check | None:
    """The router's own check for servers it adds: as often and as strict as ours (none for command checks)."""
    if config.type not in ("http", "tcp"):
        return None
    return Check(int(config.interval * 1000), config.success_threshold, config.failure_threshold)


def router_actions(rec: Record, servers: Mapping[str, ServerState], check: Check | None = None) -> list[Action]:
    """The batch that turns the router's servers into the record's desired entries (one backend's slots only)."""
    adds: list[Action] = []
    raises: list[Action] = []
    readies: list[Action] = []
    drains: list[Action] = []
    maints: list[Action] = []
    lowers: list[Action] = []
    moves: list[Action] = []
    deletes: list[Action] = []
    for name, slot in rec["slots"].items():
        want, weight = slot["router"], int(slot["weight"])
        server = servers.get(name)
        if want == ABSENT:
            if server is None:
                continue
            if server.admin != MAINT:
                maints.append(SetState(name, MAINT))
            elif server.sessions == 0:
                deletes.append(DelServer(name))
            continue
        if server is None:
            # created in maintenance, as HAProxy creates dynamic servers
            adds.append(AddServer(name, slot["address"], weight, check))
            current_admin, current_weight = MAINT, weight
        else:
            current_admin, current_weight = server.admin, server.weight
            if not same_address(server.address, slot["address"]):
                # Moved only in maintenance; it comes back ready on the next tick, at its new address.
                if current_admin != MAINT:
                    maints.append(SetState(name, MAINT))
                moves.append(SetAddress(name, slot["address"]))
                continue
        if current_weight != weight:
            (raises if weight > current_weight else lowers).append(SetWeight(name, weight))
        if current_admin != want:
            {READY: readies, DRAIN: drains, MAINT: maints}[want].append(SetState(name, want))
    return [*adds, *raises, *readies, *drains, *maints, *lowers, *moves, *deletes]


def provider_operations(rec: Record, blocked: Iterable[str] = ()) -> list[tuple[str, str | None]]:
    """(slot, version to start | None to stop) for slots whose instance is not what they want.

    Only slots the router sends no new traffic (desired maint or absent) are touched, and
    none whose router change failed this tick (`blocked`): an instance is never restarted
    under live traffic.
    """
    blocked = set(blocked)
    operations: list[tuple[str, str | None]] = []
    for name, slot in rec["slots"].items():
        if name in blocked or slot["router"] not in (MAINT, ABSENT):
            continue
        if slot["want"] is None and slot["running"]:
            operations.append((name, None))
        elif slot["want"] is not None and (slot["version"] != slot["want"] or not slot["running"]):
            operations.append((name, slot["want"]))
    return operations


def record_operation(rec: Record, name: str, version: str | None, now_ms: int) -> None:
    """The provider did it: the slot runs `version` (None: stopped), health unknown until probed."""
    slot = rec["slots"][name]
    slot["version"] = version
    slot["running"] = version is not None
    slot["health"] = health.fresh()
    slot["health"]["next_at"] = now_ms


def probe_targets(rec: Record, now_ms: int) -> list[str]:
    """Slots running what they want whose next probe is due."""
    return [name for name, slot in rec["slots"].items()
            if slot["want"] is not None and slot["running"] and slot["version"] == slot["want"]
            and health.due(slot["health"], now_ms)]


def apply_probes(rec: Record, results: Mapping[str, Probe], config: HealthConfig, now_ms: int) -> list[tuple[str, bool]]:
    """Fold probe results into the slots' counts; returns the slots whose verdict changed."""
    changed = []
    for name, result in results.items():
        slot = rec["slots"][name]
        before = slot["health"].get("healthy")
        slot["health"] = health.observe(slot["health"], result, config, now_ms)
        after = slot["health"]["healthy"]
        if after is not None and after != before:
            changed.append((name, after))
    return changed
