"""Local steps get no worker credentials: not in their environment, not through /proc.

The local executor isolates nothing else (docs/executors.md); these are the attacks it
does stop:
- a step prints its own environment, and the worker's (`/proc/$PPID/environ`, and the
  worker's pid given outright) → neither holds the broker password nor a
  CONVEYOR_SECRET_* the job was not given. On a root worker the steps run without
  capabilities (CAP_SYS_PTRACE would read any environ) and the worker is non-dumpable;
- the same with CONVEYOR_LOCAL_USER=nobody, where the step also cannot list the worker's
  full logs;
- a worker of the same uid as its steps (no root involved) → its environ is closed by the
  non-dumpable flag alone; a control without the flag reads it, so the probe works.

What a step can still read is listed in docs/executors.md ("Local backend").
"""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.services import start_redis

PASSWORD = "redis-pw-local-5e6f7a"
SECRET = "worker-secret-local-1b2c3d"
ROOT = Path(__file__).resolve().parents[2]

# Each dump is base64 on one line, so masking in the log cannot hide a leak from the test.
STEPS = [
    "printf 'OWN='; env | base64 | tr -d '\\n'; echo",
    "printf 'PARENT='; (cat /proc/$PPID/environ 2>/dev/null || echo DENIED) | base64 | tr -d '\\n'; echo",
    "printf 'WORKER='; (cat /proc/$WORKER_PID/environ 2>/dev/null || echo DENIED) | base64 | tr -d '\\n'; echo",
    "if ls \"$DATA_DIR/logs\" >/dev/null 2>&1; then echo LOGS=listed; else echo LOGS=denied; fi",
    "echo UID=$(id -u)",
    "echo CAPS=$(grep CapEff /proc/self/status | cut -f2)",
]


def dumps(log: str) -> dict[str, str]:
    found = {}
    for line in log.splitlines():
        for key in ("OWN=", "PARENT=", "WORKER="):
            if key in line and not line.lstrip().startswith("$"):
                found[key[:-1]] = base64.b64decode(line.split(key, 1)[1].strip()).decode(errors="replace")
        for key in ("LOGS", "UID", "CAPS"):
            if line.startswith(key + "="):
                found[key] = line[len(key) + 1:]
    return found


def run_pipeline(tmp_path: Path, data_dir: Path, **worker_env: str) -> dict[str, str]:
    (tmp_path / "redis").mkdir()
    proc, port = start_redis(tmp_path / "redis", "--requirepass", PASSWORD)
    cluster = Cluster(tmp_path, port, "local")
    cluster.env["CONVEYOR_BROKER_URL"] = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    cluster.env["CONVEYOR_DATA_DIR"] = str(data_dir)
    try:
        worker = cluster.worker("local-env", CONVEYOR_SECRET_API_TOKEN=SECRET, **worker_env)
        script = "\n".join(f"              - {line!r}" for line in STEPS)
        pipeline = cluster.pipeline(textwrap.dedent("""
            name: snoop
            jobs:
              snoop:
                steps:
                  - name: look
                    script:
        """) + script + "\n")
        run_id = cluster.submit(pipeline, "--var", f"WORKER_PID={worker.proc.pid}", "--var", f"DATA_DIR={data_dir}")
        status = cluster.wait(run_id, timeout=90)
        log = cluster.logs(run_id, "snoop")
        assert status["status"] == "success", log + worker.log()[-3000:]
        return dumps(log)
    finally:
        cluster.stop()
        proc.terminate()
        proc.wait(timeout=10)


def assert_no_credentials(found: dict[str, str]) -> None:
    assert set(found) >= {"OWN", "PARENT", "WORKER"}, found
    for name, text in found.items():
        assert PASSWORD not in text, f"{name} holds the broker password"
        assert SECRET not in text, f"{name} holds a worker secret"
    assert "CONVEYOR_STEP=look" in found["OWN"]  # the dump is real
    assert found["PARENT"].strip() == "DENIED" and found["WORKER"].strip() == "DENIED"


@pytest.mark.services
def test_a_local_step_reads_no_worker_credentials(tmp_path: Path) -> None:
    """Default: on a root worker, steps run as root without any capability."""
    found = run_pipeline(tmp_path, tmp_path / "data")
    assert_no_credentials(found)
    if os.geteuid() == 0:
        assert (found["UID"], int(found["CAPS"], 16)) == ("0", 0)


@pytest.mark.services
@pytest.mark.usefixtures("as_root")
def test_with_a_local_user_steps_also_cannot_list_the_workers_logs(tmp_path: Path) -> None:
    # `nobody` must reach the data directory: pytest's own temp root is private (0700).
    data_parent = Path(tempfile.mkdtemp(prefix="conveyor-local-user-", dir="/tmp"))
    os.chmod(data_parent, 0o711)
    try:
        found = run_pipeline(tmp_path, data_parent / "data", CONVEYOR_LOCAL_USER="nobody")
        assert_no_credentials(found)
        assert (found["UID"], int(found["CAPS"], 16)) == ("65534", 0)
        assert found["LOGS"] == "denied"
    finally:
        subprocess.run(["rm", "-rf", str(data_parent)], check=False)


# A worker of the same uid as its steps: run in a child process whose capabilities are all
# dropped (as root) so that only the dumpable flag stands between step and worker.
SAME_UID_WORKER = textwrap.dedent("""
    import os, sys, uuid
    from pathlib import Path
    import worker.executors.local as local
    if sys.argv[1] == "dumpable":
        local.make_non_dumpable = lambda: False  # the control: an ordinary process
    from tests.worker.executors.contract_suite import drive
    from worker.executors.contract import JobSpec, StepSpec
    executor = local.LocalExecutor(scripts_root=Path(sys.argv[2]) / "jobs")
    workspace = Path(sys.argv[2]) / "ws"
    workspace.mkdir()
    job = JobSpec(run_id="r", job="j", workspace=workspace, worker_name="w" + uuid.uuid4().hex[:6])
    step = StepSpec(0, "s", "none", ["cat /proc/$PPID/environ | tr '\\\\0' '\\\\n' || echo DENIED"])
    executor.prepare(job)
    result = drive(executor, job, step)
    executor.cleanup(job)
    print("\\n".join(result.stdout))
""")


def _same_uid_worker(tmp_path: Path, mode: str) -> str:
    command = [sys.executable, "-c", SAME_UID_WORKER, mode, str(tmp_path)]
    if os.geteuid() == 0:
        # Root's CAP_SYS_PTRACE reads any environ; without capabilities root is just a uid.
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", *command]
    env = {**os.environ, "CONVEYOR_SECRET_SAME_UID": SECRET, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_non_dumpable_worker_hides_its_environ_from_steps_of_its_own_uid(tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    (tmp_path / "protected").mkdir()
    control = _same_uid_worker(tmp_path / "control", "dumpable")
    assert SECRET in control  # the attack works against an ordinary process
    protected = _same_uid_worker(tmp_path / "protected", "non-dumpable")
    assert SECRET not in protected and "DENIED" in protected
