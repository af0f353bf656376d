"""Schedules fire once per tick with two servers running; `concurrency` groups cancel or
queue; `conveyor schedules` lists next fire times. Real git, Redis, workers, uvicorn."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from coordinator.server.scheduler import Scheduler
from tests.cluster import ROOT, Cluster
from tests.coordinator.server.ci_fixture import CI, REPO, github_push, serving_ci
from tests.forge_recorder import recording_forge

pytestmark = [pytest.mark.services, pytest.mark.slow]

SCHEDULED = textwrap.dedent("""
    name: nightly
    on:
      schedule: [{cron: "* * * * *", branch: main}, {cron: "0 3 * * 1-5", timezone: Europe/Berlin}]
    jobs:
      build: {steps: [{name: s, script: ["echo event=$CONVEYOR_EVENT"]}]}
""")


def test_a_schedule_fires_once_per_tick_with_two_servers(ci: CI, cluster: Cluster, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sha = ci.repo.commit({".conveyor.yml": SCHEDULED})
    with recording_forge() as forge2, serving_ci(tmp_path / "second", cluster, forge2, ci.repo, monkeypatch) as ci2:
        schedulers = [Scheduler(ci.app.state.services.runtime), Scheduler(ci2.app.state.services.runtime)]
        for scheduler in schedulers:
            scheduler.refresh()
            assert len(scheduler.entries) == 2
        now = datetime.now(timezone.utc)
        results: list[list[str]] = [[], []]

        def fire(i: int) -> None:
            results[i] = schedulers[i].fire_due(now)

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = results[0] + results[1]
        assert len(started) == 1, results
        view = ci.wait_run(started[0])
        assert view["status"] == "success"
        assert view["trigger"]["event"] == "schedule" and view["trigger"]["sha"] == sha
        # the same tick again, from either server: nothing new
        assert schedulers[0].fire_due(now) == [] and schedulers[1].fire_due(now) == []


def test_conveyor_schedules_lists_next_fire_times(ci: CI, tmp_path: Path) -> None:
    ci.repo.commit({".conveyor.yml": SCHEDULED})
    config = tmp_path / "conveyor.toml"
    config.write_text(textwrap.dedent(f"""
        [[repositories]]
        name = "{REPO}"
        forge = "github"
        url = "{ci.repo.bare}"
        webhook_secret_env = "X"
    """))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONVEYOR_CONFIG": str(config),
           "CONVEYOR_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-m", "coordinator", "schedules", "--format", "json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["cron"], r["branch"], r["timezone"]) for r in rows] == [("* * * * *", "main", "UTC"),
                                                                       ("0 3 * * 1-5", "main", "Europe/Berlin")]
    nightly = datetime.fromisoformat(rows[1]["next"])
    assert nightly > datetime.now(timezone.utc) and nightly.astimezone().weekday() < 6


GROUPED = textwrap.dedent("""
    name: grouped
    concurrency: {group: "deploy-${CONVEYOR_BRANCH}", cancel_in_progress: CANCEL}
    jobs:
      slow: {steps: [{name: s, script: ["sleep 3"]}]}
""")


def test_cancel_in_progress_cancels_the_older_run_of_the_group(ci: CI) -> None:
    first = ci.repo.commit({".conveyor.yml": GROUPED.replace("CANCEL", "true"), "n": "1"})
    run1 = ci.deliver(github_push(first))[1]["runs"][0]
    second = ci.repo.commit({"n": "2"})
    run2 = ci.deliver(github_push(second, before=first))[1]["runs"][0]
    assert ci.wait_run(run1)["status"] == "cancelled"
    assert ci.wait_run(run2)["status"] == "success"
    events = ci.api("GET", f"/api/v1/runs/{run1}")[1]["events"]
    assert any(f"cancelled by newer run {run2}" in e.get("message", "") for e in events)


def test_without_cancel_in_progress_the_newer_run_waits_its_turn(ci: CI) -> None:
    first = ci.repo.commit({".conveyor.yml": GROUPED.replace("CANCEL", "false"), "n": "1"})
    run1 = ci.deliver(github_push(first))[1]["runs"][0]
    second = ci.repo.commit({"n": "2"})
    run2 = ci.deliver(github_push(second, before=first))[1]["runs"][0]
    view1 = ci.wait_run(run1)
    view2 = ci.wait_run(run2)
    assert view1["status"] == view2["status"] == "success", (view1["jobs"], view2["jobs"])
    # the second started only after the first ended
    assert view2["jobs"]["slow"]["started_at"] >= view1["jobs"]["slow"]["finished_at"]
