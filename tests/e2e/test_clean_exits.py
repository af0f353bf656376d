"""The `conveyor` commands that follow a run end cleanly, and leave a complete log behind.

Real subprocesses on a real Redis with a real worker (local executor): `submit --wait`,
`run` (distributed and embedded), on succeeding and failing pipelines and on Ctrl-C. At
exit nothing may be printed but what the command means to say: no "Exception ignored"
from Celery result objects torn down with the interpreter, no traceback, no stray `1`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from tests.cluster import ROOT, Cluster, running_cluster


# Groups and chords, one nested in another's header: what makes Celery watch results in
# the submitting process (several result objects per task, in the nested case).
DIAMOND = """
    name: diamond
    jobs:
      a: {{steps: [{{name: s, script: ["echo from-a"]}}]}}
      g: {{steps: [{{name: s, script: ["echo from-g"]}}]}}
      b: {{depends_on: [a], steps: [{{name: s, script: ["echo from-b", "exit {exit_b}"]}}]}}
      c: {{depends_on: [a], steps: [{{name: s, script: ["echo from-c"]}}]}}
      d: {{depends_on: [b, c], steps: [{{name: s, script: ["echo from-d"]}}]}}
      h: {{depends_on: [g, d], conditional: "always()", steps: [{{name: s, script: ["echo from-h"]}}]}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("clean-exits"), "local") as cluster:
        cluster.worker("exits-w1", concurrency=2)
        yield cluster


def assert_clean_exit(result: subprocess.CompletedProcess, code: int) -> None:
    output = f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    assert result.returncode == code, output
    assert "Exception ignored" not in result.stderr, output
    assert "Traceback" not in result.stderr + result.stdout, output
    stray = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() == "1"]
    assert not stray, output


def embedded(cluster: Cluster) -> dict[str, str]:
    """Environment overrides for embedded mode: no broker, state in a data dir of its own."""
    return {"CONVEYOR_BROKER_URL": "", "CONVEYOR_DATA_DIR": str(cluster.tmp / "embedded-data")}


@pytest.mark.parametrize("exit_b, code, status", [(0, 0, "success"), (1, 1, "failed")])
def test_submit_wait_exits_cleanly(cluster, exit_b, code, status) -> None:
    pipeline = cluster.pipeline(DIAMOND.format(exit_b=exit_b), name=f"diamond-{exit_b}.yml")
    result = cluster.cli("submit", str(pipeline), "--wait")
    assert_clean_exit(result, code)
    run_id = result.stdout.splitlines()[0]
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"run {run_id}: {status}")


@pytest.mark.parametrize("exit_b, code", [(0, 0), (1, 1)])
@pytest.mark.parametrize("mode", ["distributed", "embedded"])
def test_run_exits_cleanly(cluster, mode, exit_b, code) -> None:
    pipeline = cluster.pipeline(DIAMOND.format(exit_b=exit_b), name=f"diamond-{exit_b}.yml")
    env = embedded(cluster) if mode == "embedded" else {}
    assert_clean_exit(cluster.cli("run", str(pipeline), **env), code)


def interrupted(cluster: Cluster, args: list[str], env: dict[str, str], after: str) -> subprocess.CompletedProcess:
    """Run the CLI, press Ctrl-C once `after` shows on stdout, and return how it ended."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args], env={**cluster.env, **env}, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        # A session of its own keeps the test's own Ctrl-C away; SIGINT must not be ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        seen.append(line)
        if after in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    try:
        rest, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen) + rest, err)


SLOW = """
    name: slow
    jobs:
      long: {steps: [{name: s, script: ["echo started", "sleep 30"]}]}
      next: {depends_on: [long], steps: [{name: s, script: ["echo next"]}]}
"""


def test_ctrl_c_on_submit_wait_stops_following_cleanly(cluster) -> None:
    pipeline = cluster.pipeline(SLOW, name="slow.yml")
    result = interrupted(cluster, ["submit", str(pipeline), "--wait"], {}, after="started")
    assert_clean_exit(result, 130)
    run_id = result.stdout.splitlines()[0]
    assert f"conveyor cancel {run_id}" in result.stderr  # the run goes on: say how to stop it
    assert cluster.cli("cancel", run_id).returncode == 0
    assert cluster.wait(run_id)["status"] == "cancelled"


def test_ctrl_c_on_embedded_run_cancels_and_exits_cleanly(cluster) -> None:
    pipeline = cluster.pipeline(SLOW, name="slow.yml")
    result = interrupted(cluster, ["run", str(pipeline)], embedded(cluster), after="started")
    assert_clean_exit(result, 1)
    assert "cancelled" in result.stdout.rstrip().splitlines()[-1]


def test_logs_right_after_submit_wait_show_the_last_line(cluster) -> None:
    # Many lines as the job's last action: the sink is still sending when the step ends.
    pipeline = cluster.pipeline("""
        name: chatty
        jobs:
          talk: {steps: [{name: s, script: ["seq 1 30000", "echo THE-LAST-LINE"]}]}
    """, name="chatty.yml")
    result = cluster.cli("submit", str(pipeline), "--wait")
    assert_clean_exit(result, 0)
    run_id = result.stdout.splitlines()[0]
    logs = cluster.cli("logs", run_id, "talk")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    output = [line for line in lines if line.isdigit() or line == "THE-LAST-LINE"]
    assert output[-1] == "THE-LAST-LINE" and output[:-1] == [str(i) for i in range(1, 30001)]
    assert lines[-1] == "job succeeded"
