"""The local executor: the shared contract, plus what only host processes need."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.worker.executors.contract_suite import Contract, drive
from worker.executors import select_executor
from worker.executors.contract import InfrastructureError
from worker.executors.local import DEFAULT_PATH, LocalExecutor


@pytest.fixture
def executor(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(scripts_root=tmp_path / "jobs")


@pytest.fixture
def image() -> str:
    return "ignored-by-local:latest"


@pytest.fixture
def kill_grace() -> float:
    return 0.3


@pytest.fixture
def short_timeout() -> float:
    return 0.5


class TestLocalContract(Contract):
    pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_scripts_live_outside_the_workspace_and_go_with_cleanup(executor, job, step, tmp_path):
    executor.prepare(job)
    result = drive(executor, job, step("echo hi"))
    assert result.outcome.succeeded
    scripts = list((tmp_path / "jobs").glob("*/scripts/step-*.sh"))
    assert len(scripts) == 1 and job.workspace not in scripts[0].parents
    executor.cleanup(job)
    assert list((tmp_path / "jobs").iterdir()) == []


def test_default_path_and_a_private_home_when_the_step_sets_none(executor, job, step, tmp_path):
    executor.prepare(job)
    try:
        result = drive(executor, job, step('echo "path=$PATH"', 'echo "home=$HOME"', 'test -d "$HOME"'))
        own = drive(executor, job, step('echo "path=$PATH"', env={"PATH": "/bin:/usr/bin"}))
    finally:
        executor.cleanup(job)
    assert result.outcome.succeeded
    assert f"path={DEFAULT_PATH}" in result.stdout
    home = next(t for t in result.stdout if t.startswith("home="))[len("home="):]
    assert Path(home).parent.parent == tmp_path / "jobs"
    assert home != os.environ.get("HOME")
    assert "path=/bin:/usr/bin" in own.stdout


def test_background_processes_do_not_outlive_the_step(run, step, job):
    result = run(step("sleep 30 &", "echo $! > bg.pid", "echo done"))
    assert result.outcome.succeeded
    assert result.elapsed < 5, "tail waited for the background process"
    pid = int((job.workspace / "bg.pid").read_text())
    assert not _alive(pid)


def test_step_reads_no_input(run, step):
    result = run(step("cat", "echo read-nothing"))
    assert result.outcome.succeeded and "read-nothing" in result.stdout


def test_missing_shell_is_an_infrastructure_error(job, step, tmp_path):
    executor = LocalExecutor(scripts_root=tmp_path / "jobs", shell="/nonexistent/sh")
    with pytest.raises(InfrastructureError):
        executor.start(job, step("true"))
    executor.cleanup(job)


def test_select_local_by_name():
    assert isinstance(select_executor(" Local "), LocalExecutor)


def test_select_unknown_name_is_refused():
    with pytest.raises(ValueError, match="CONVEYOR_EXECUTOR"):
        select_executor("podman")


def test_select_without_a_name_and_no_engine_refuses_and_names_the_local_opt_in(monkeypatch, tmp_path):
    """Fail closed: an unset CONVEYOR_EXECUTOR never turns into unisolated local steps."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(InfrastructureError) as raised:
        select_executor(None)
    message = str(raised.value)
    assert "CONVEYOR_EXECUTOR=local" in message and "\n" not in message


def test_select_auto_without_an_engine_falls_back_to_local_with_one_warning(monkeypatch, caplog, tmp_path):
    """`conveyor run` on one's own machine (embedded) keeps its documented default."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    caplog.set_level(logging.WARNING)
    executor = select_executor("auto")
    assert isinstance(executor, LocalExecutor)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "--executor" in warnings[0].getMessage()


def test_select_docker_by_name_without_an_engine_fails_loudly(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(InfrastructureError):
        select_executor("docker")


def test_reap_orphans_kills_only_this_workers_leftover_steps(job, step, tmp_path):
    from dataclasses import replace

    previous_life = LocalExecutor(scripts_root=tmp_path / "old")
    other_worker = replace(job, worker_name=job.worker_name + "-other")
    orphan = previous_life.start(job, step("sleep 30 & sleep 30"))
    bystander = previous_life.start(other_worker, step("sleep 30"))
    try:
        current = LocalExecutor(scripts_root=tmp_path / "new")
        assert current.reap_orphans(job.worker_name) == 1
        orphan.proc.wait(timeout=5)
        assert not _alive(orphan.proc.pid)
        assert bystander.proc.poll() is None  # another worker's step is left alone
        assert current.reap_orphans(job.worker_name) == 0
    finally:
        previous_life.cleanup(other_worker)
        previous_life.cleanup(job)


@pytest.mark.usefixtures("as_root")
def test_on_a_root_worker_steps_have_no_capabilities_and_cannot_regain_them(run, step):
    result = run(step("grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status"))
    assert result.outcome.succeeded, result.lines
    fields = dict(line.split(":\t") for line in result.stdout[1:])
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"] == "1"


def test_the_executor_process_is_not_dumpable(executor):
    import ctypes

    assert executor.non_dumpable
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE, asked of the kernel


@pytest.mark.usefixtures("as_root")
def test_a_local_user_runs_the_steps_and_gets_the_workspace_without_root_groups(step):
    import shutil
    import tempfile
    import uuid

    from worker.executors.contract import JobSpec

    base = Path(tempfile.mkdtemp(prefix="conveyor-local-user-", dir="/tmp"))  # nobody can traverse it
    os.chmod(base, 0o711)
    try:
        (base / "ws").mkdir()
        (base / "ws" / "input.txt").write_text("from the source\n")
        executor = LocalExecutor(scripts_root=base / "jobs")
        job = JobSpec(run_id="r", job="j", workspace=base / "ws", worker_name=f"w-{uuid.uuid4().hex[:6]}",
                      user="nobody")
        executor.prepare(job)
        try:
            result = drive(executor, job, step("id -u", "id -G", "cat input.txt > copy.txt", 'touch "$HOME/x"'))
        finally:
            executor.cleanup(job)
        assert result.outcome.succeeded, result.lines
        assert result.stdout[1] == "65534" and result.stdout[3] == "65534"  # no gid 0 left over
        assert (base / "ws" / "copy.txt").stat().st_uid == 65534
        assert oct((base / "ws").stat().st_mode & 0o777) == "0o700"
    finally:
        shutil.rmtree(base, ignore_errors=True)
