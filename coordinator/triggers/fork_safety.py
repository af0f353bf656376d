"""Pull requests from forks run without secrets and without deployments.

A fork's author controls every file of the commit, the pipeline file included: anything
the pipeline asks for, they ask for. Unless the repository sets `trust_forks`, the plan
of such a run is rewritten before it is stored:

- every job's `secrets` list is emptied: workers inject only the secrets a job names, so
  none reaches the fork's code;
- every deployment job gets the condition `false`, so it is skipped (`condition_false`)
  and the jobs after it follow the usual skip rules; it stays visible in the run, as a
  skipped job in GitHub Actions does, instead of vanishing.

Pure: plan in, plan and the notes for the run's events out.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType

from shared.plan import Plan

NEVER = "false"


@dataclasses.dataclass(frozen=True)
class Withheld:
    """What the rewrite took away, for the run's events."""

    secrets: dict[str, tuple[str, ...]]  # job -> secret names it asked for
    deployments: tuple[str, ...]

    def notes(self, head_repository: str) -> list[str]:
        source = head_repository or "a deleted fork"
        out = []
        if self.secrets:
            listed = "; ".join(f"{job}: {', '.join(names)}" for job, names in sorted(self.secrets.items()))
            out.append(f"pull request from {source}: secrets withheld ({listed})")
        if self.deployments:
            out.append(f"pull request from {source}: deployment jobs skipped ({', '.join(self.deployments)})")
        if not out:
            out.append(f"pull request from {source}: runs without secrets and deployments (it asked for none)")
        return out


def withhold_for_fork(plan: Plan) -> tuple[Plan, Withheld]:
    """The plan a fork's pull request may run, and what was withheld."""
    jobs = {}
    secrets: dict[str, tuple[str, ...]] = {}
    deployments: list[str] = []
    for name, job in plan.jobs.items():
        changes: dict[str, object] = {}
        if job.secrets:
            secrets[name] = job.secrets
            changes["secrets"] = ()
        if job.is_deployment:
            deployments.append(name)
            changes["conditional"] = NEVER
        jobs[name] = dataclasses.replace(job, **changes) if changes else job
    safe = dataclasses.replace(plan, jobs=MappingProxyType(jobs))
    return safe, Withheld(secrets, tuple(deployments))
