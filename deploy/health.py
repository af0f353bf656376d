"""Health checks of deployed instances: probes (http, tcp, command) and threshold counting.

A probe is one request; health is a verdict over consecutive probes. Ticks are short and
may run on different workers, so the consecutive counts live in the deployment record
(`HealthState`), not in a probing thread: `observe` is a pure function of the previous
counts and one probe result.
"""
from __future__ import annotations

import http.client
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from deploy.config import HealthConfig, ProviderConfig
from deploy.providers.base import Instance
from deploy.providers.command import command_environment, render


class HealthState(TypedDict):
    """One instance's consecutive probe counts, kept in its slot record (JSON)."""

    ok: int  # passes in a row
    fail: int  # failures in a row
    healthy: bool | None  # None: not judged since the instance (re)started
    next_at: int  # epoch ms the next probe is due
    detail: str  # the last probe's detail (why it failed, or the HTTP status)


@dataclass(frozen=True)
class Probe:
    """One probe's result; `detail` says why it failed (or the HTTP status)."""

    ok: bool
    detail: str = ""


def probe(config: HealthConfig, instance: Instance, workdir: Path | None = None,
          provider: ProviderConfig | None = None) -> Probe:
    """Probe the instance once, within `config.timeout` seconds. A command check runs with
    the environment of the provider's commands (``provider``), never the worker's."""
    try:
        if config.type == "http":
            return _http(config, instance)
        if config.type == "tcp":
            with socket.create_connection((instance.host, instance.port), timeout=config.timeout):
                return Probe(True, "connected")
        if config.type == "command":
            return _command(config, instance, workdir, provider)
    except (OSError, http.client.HTTPException) as exc:
        return Probe(False, f"{type(exc).__name__}: {exc}")
    return Probe(False, f"unknown health check type {config.type!r}")


def _http(config: HealthConfig, instance: Instance) -> Probe:
    conn = http.client.HTTPConnection(instance.host, instance.port, timeout=config.timeout)
    try:
        conn.request("GET", config.path or "/", headers={"User-Agent": "conveyor-health", "Connection": "close"})
        response = conn.getresponse()
        response.read(4096)
        # 2xx and 3xx pass, as HAProxy's and Kubernetes' HTTP checks count them.
        return Probe(200 <= response.status < 400, f"HTTP {response.status}")
    finally:
        conn.close()


def _command(config: HealthConfig, instance: Instance, workdir: Path | None, provider: ProviderConfig | None) -> Probe:
    values = {"INSTANCE": instance.name, "VERSION": "", "PORT": str(instance.port), "ADDRESS": instance.address}
    env = command_environment(values, provider.env, provider.pass_env) if provider else command_environment(values)
    try:
        argv = render(config.command or "", values)
        proc = subprocess.run(argv, cwd=workdir if workdir and workdir.is_dir() else None, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=config.timeout, env=env)
    except subprocess.TimeoutExpired:
        return Probe(False, f"timed out after {config.timeout}s")
    except Exception as exc:  # a bad template or a missing program fails the probe, visibly
        return Probe(False, str(exc))
    return Probe(proc.returncode == 0, f"exit {proc.returncode}")


# -- thresholds -----------------------------------------------------------------------------


def fresh() -> HealthState:
    """Health of an instance that was just (re)started: unknown, probe now."""
    return {"ok": 0, "fail": 0, "healthy": None, "next_at": 0, "detail": ""}


def observe(state: HealthState, result: Probe, config: HealthConfig, now_ms: int) -> HealthState:
    """The counts after one probe. `healthy` turns True after `success_threshold` passes in a
    row and False after `failure_threshold` failures in a row; between, it keeps its value."""
    ok, fail, healthy = int(state.get("ok", 0)), int(state.get("fail", 0)), state.get("healthy")
    if result.ok:
        ok, fail = ok + 1, 0
        if ok >= config.success_threshold:
            healthy = True
    else:
        ok, fail = 0, fail + 1
        if fail >= config.failure_threshold:
            healthy = False
    return {"ok": ok, "fail": fail, "healthy": healthy, "next_at": now_ms + int(config.interval * 1000),
            "detail": result.detail}


def due(state: HealthState, now_ms: int) -> bool:
    return now_ms >= int(state.get("next_at", 0))
