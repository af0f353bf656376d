"""What a deployment leaves behind in its environment: which slots are live, on which version, and who owns it.

One deployment at a time owns an environment (its router backend); others wait in
`queued`. The environment record survives deployments: the next one starts from the
slots and version this one left live. `env_target` is pure; `acquire` and `sync` read
and write the record in the deployment store with compare-and-set.
"""
from __future__ import annotations

from deploy.config import DeployConfig
from deploy.record import (
    PROGRESSING, PROMOTED, QUEUED, ROLLED_BACK, SUCCEEDED, TERMINAL, EnvRecord, Record, event, initialise, set_state,
)
from deploy.store.base import DeployStore


def owner_id(run_id: str, job: str) -> str:
    """The environment record's `owner` for a deployment."""
    return f"{run_id}\n{job}"


def empty_env() -> EnvRecord:
    """An environment Conveyor has not deployed to: its configured instances are live, version unknown."""
    return {"live": None, "stable_version": None, "owner": None}


def env_target(rec: Record, env: EnvRecord) -> EnvRecord:
    """The environment record after this deployment's current state."""
    target = env.copy()
    state = rec["state"]
    if state in (PROMOTED, SUCCEEDED) and rec["strategy"] == "blue_green":
        target["live"] = list(rec["data"]["green"])
        target["stable_version"] = rec["new_version"]
    elif state == SUCCEEDED:
        target["live"] = list(rec["live"])
        target["stable_version"] = rec["new_version"]
    elif state == ROLLED_BACK:
        target["live"] = list(rec["live"])
        target["stable_version"] = rec["stable_version"]
    if state in TERMINAL and target.get("owner") == owner_id(rec["run_id"], rec["job"]):
        target["owner"] = None
    return target


def acquire(deploys: DeployStore, rec: Record, config: DeployConfig, now: int) -> bool:
    """Take the environment if free (or held by a finished deployment) and lay out the slots."""
    me = owner_id(rec["run_id"], rec["job"])
    loaded = deploys.load_env(config.env_key)
    env, version = loaded if loaded is not None else (empty_env(), 0)
    owner = env.get("owner")
    if owner not in (None, me):
        run_id, _, job = owner.partition("\n")
        holder = deploys.load(run_id, job)
        if holder is not None and holder[0]["state"] not in TERMINAL:
            if rec["data"].get("waiting_for") != owner:
                rec["data"]["waiting_for"] = owner
                event(rec, now, "queued", behind=f"{run_id}/{job}")
            return False
    if not deploys.save_env(config.env_key, {**env, "owner": me, "environment": config.environment}, version):
        return False
    waited = rec["data"].pop("waiting_for", None)
    # In place, as the tick holds this record: initialise returns a copy of it with the slots
    # laid out, so it has every key `rec` has and the update replaces the whole record.
    rec.update(initialise(rec, config, env.get("live"), env.get("stable_version"), now))
    set_state(rec, PROGRESSING, now)
    event(rec, now, "started", live=rec["live"], stable_version=rec["stable_version"],
          new_version=rec["new_version"], waited_for=waited)
    return True


def sync(deploys: DeployStore, rec: Record, config: DeployConfig) -> None:
    """Write what this deployment leaves live into the environment record (compare-and-set, a few tries)."""
    if rec["state"] == QUEUED or not rec["slots"]:
        return
    for _ in range(5):
        loaded = deploys.load_env(config.env_key)
        if loaded is None:
            return
        env, version = loaded
        if env.get("owner") != owner_id(rec["run_id"], rec["job"]):
            return
        target = env_target(rec, env)
        if target == env or deploys.save_env(config.env_key, target, version):
            return
