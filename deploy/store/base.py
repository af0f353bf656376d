"""The deployment store contract: persisted deployment records and what surrounds them.

- records: one per (run, job), versioned; `save` is compare-and-set on the version, so
  two ticks that somehow both ran cannot both win.
- the active index: deployments still ticking, scored by when their next tick is due;
  the watchdog re-enqueues the overdue ones.
- locks: a short lease per deployment that serialises its ticks.
- commands: abort/rollback requests, append-only; a record counts how many it consumed,
  so a tick that dies after reading one does not lose it.
- gate answers: per run and gate name, first answer wins.
- environments: which slots are live and which version they run, plus the deployment
  that owns the environment (one deployment per router backend at a time).
"""
from __future__ import annotations

from typing import Protocol

from deploy.record import TERMINAL, Command, EnvRecord, GateAnswer, Record

# Finished deployments are kept as long as the state store keeps runs.
RETENTION_S = 30 * 24 * 3600


class DeployStore(Protocol):
    def create(self, record: Record) -> bool:
        """Store a new record (version 1); False when one exists for that run and job."""
        ...

    def load(self, run_id: str, job: str) -> tuple[Record, int] | None:
        """The record and its version, or None."""
        ...

    def save(self, record: Record, version: int) -> bool:
        """Write the record if its stored version is still `version`; also updates the active index."""
        ...

    def jobs(self, run_id: str) -> list[str]:
        """Jobs of the run that have a deployment record."""
        ...

    def lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool: ...

    def refresh_lock(self, run_id: str, job: str, owner: str, ttl_ms: int) -> bool: ...

    def unlock(self, run_id: str, job: str, owner: str) -> None: ...

    def add_command(self, run_id: str, job: str, command: Command) -> None: ...

    def commands(self, run_id: str, job: str, after: int) -> list[Command]:
        """Commands from position `after` (0-based) on, in order."""
        ...

    def answer_gate(self, run_id: str, gate: str, answer: GateAnswer) -> GateAnswer:
        """Store the answer unless the gate has one; returns the stored answer either way."""
        ...

    def gate_answers(self, run_id: str) -> dict[str, GateAnswer]: ...

    def overdue(self, now_ms: int, grace_ms: int, bump_ms: int) -> list[tuple[str, str]]:
        """Active deployments whose next tick is more than `grace_ms` late; pushes their due time `bump_ms` ahead
        so that other watchdogs do not all re-enqueue them at once."""
        ...

    def load_env(self, key: str) -> tuple[EnvRecord, int] | None: ...

    def save_env(self, key: str, data: EnvRecord, version: int) -> bool:
        """Compare-and-set on the environment record (`version` 0: create)."""
        ...

    def close(self) -> None: ...


def is_active(record: Record) -> bool:
    """Still ticking (not in a terminal state)."""
    return record.get("state") not in TERMINAL
