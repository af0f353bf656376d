"""`Contract`: the behaviour every executor backend shares, and `drive`, which runs a step the
way the worker does. `test_local.py` and `test_docker.py` subclass `Contract` and provide the
fixtures `executor` and `image` (conftest.py has the rest)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from worker.executors.contract import Executor, JobSpec, LogLine, StepHandle, StepOutcome, StepSpec


@dataclass
class Result:
    """What a user sees of one step: its outcome and its output, per stream."""

    outcome: StepOutcome
    lines: list[LogLine]
    elapsed: float

    @property
    def stdout(self) -> list[str]:
        return [line.text for line in self.lines if line.stream == "stdout"]

    @property
    def stderr(self) -> list[str]:
        return [line.text for line in self.lines if line.stream == "stderr"]


def drive(
    executor: Executor,
    job: JobSpec,
    step: StepSpec,
    during: Callable[[StepHandle, list[LogLine]], None] | None = None,
) -> Result:
    """Run a step the way the worker does: tail in a reader thread, wait in this one.

    ``during`` runs in a third thread with the handle and the lines so far.
    """
    started = time.monotonic()
    handle = executor.start(job, step)
    lines: list[LogLine] = []
    reader = threading.Thread(target=_collect, args=(executor, handle, lines))
    reader.start()
    helper = None
    if during is not None:
        helper = threading.Thread(target=during, args=(handle, lines))
        helper.start()
    outcome = executor.wait(handle)
    reader.join(timeout=15)
    assert not reader.is_alive(), "tail() did not end after the step ended"
    if helper is not None:
        helper.join(timeout=15)
    return Result(outcome, lines, time.monotonic() - started)


def _collect(executor: Executor, handle: StepHandle, lines: list[LogLine]) -> None:
    for line in executor.tail(handle):
        lines.append(line)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Contract:
    """Behaviour both backends must show; subclasses provide ``executor`` and ``image``."""

    def test_backend_satisfies_the_protocol(self, executor):
        assert isinstance(executor, Executor)
        assert executor.name in ("docker", "local")

    def test_success_keeps_stdout_and_stderr_apart_and_in_order(self, run, step):
        result = run(step("echo out1", "echo err1 >&2", "echo out2", "echo err2 >&2"))
        assert result.outcome.exit_code == 0
        assert result.outcome.reason is None and result.outcome.succeeded
        assert result.outcome.duration > 0
        assert result.stdout == [
            "$ echo out1", "out1", "$ echo err1 >&2", "$ echo out2", "out2", "$ echo err2 >&2",
        ]
        assert result.stderr == ["err1", "err2"]

    def test_first_failing_line_stops_the_script(self, run, step, job):
        result = run(step("echo before", "sh -c 'exit 3'", "touch after-ran", "echo after"))
        assert result.outcome.exit_code == 3
        assert result.outcome.reason == "script_failure"
        assert "before" in result.stdout
        assert "after" not in result.stdout
        assert not (job.workspace / "after-ran").exists()

    def test_working_directory_is_relative_to_the_workspace(self, run, step, job):
        (job.workspace / "sub" / "dir").mkdir(parents=True)
        (job.workspace / "sub" / "dir" / "marker.txt").write_text("x")
        result = run(step("pwd", "ls", working_directory="sub/dir"))
        assert result.outcome.succeeded
        pwd = result.stdout[1]
        assert pwd.endswith("/sub/dir")
        assert "marker.txt" in result.stdout

    def test_missing_working_directory_fails_the_step_and_says_why(self, run, step):
        result = run(step("echo never", working_directory="not/there"))
        assert result.outcome.reason == "script_failure"
        assert "never" not in result.stdout
        assert any("not/there" in text for text in result.stderr)

    def test_working_directory_leaving_the_workspace_is_refused(self, executor, job, step):
        with pytest.raises(ValueError):
            executor.start(job, step("true", working_directory="../elsewhere"))

    def test_step_env_reaches_the_step_and_worker_env_does_not(self, run, step, monkeypatch):
        monkeypatch.setenv("CONVEYOR_TEST_WORKER_ONLY", "worker-secret-value")
        result = run(step("echo \"greeting=$GREETING\"", "env", env={"GREETING": "hello world"}))
        assert result.outcome.succeeded
        assert "greeting=hello world" in result.stdout
        assert "GREETING=hello world" in result.stdout
        assert not any("CONVEYOR_TEST_WORKER_ONLY" in t or "worker-secret-value" in t
                       for t in result.stdout)

    def test_quoting_survives_quotes_substitution_and_semicolons(self, run, step, job):
        line = "echo \"it's $(echo nested); done\"; echo 'semi;colon' \"$VALUE\""
        # The env value is data: its shell syntax must come out verbatim, never run.
        result = run(step(line, env={"VALUE": "$(touch pwned); `touch pwned2`"}))
        assert result.outcome.succeeded
        assert result.stdout == [
            f"$ {line}", "it's nested; done", "semi;colon $(touch pwned); `touch pwned2`",
        ]
        assert list(job.workspace.iterdir()) == []

    def test_multi_line_command_is_echoed_and_runs_as_one(self, run, step):
        result = run(step("if true; then\n  echo inside\nfi", "echo next"))
        assert result.stdout == ["$ if true; then", ">   echo inside", "> fi", "inside",
                                 "$ echo next", "next"]

    def test_output_lines_are_cleaned_split_and_flushed(self, executor, run, step):
        # 40000 chars without a newline, invalid UTF-8, and a last line without newline.
        result = run(step("head -c 40000 /dev/zero | tr '\\0' x; echo",
                          "printf 'bad\\377byte\\n'", "printf 'no newline'"))
        assert result.outcome.succeeded
        long = [t for t in result.stdout if t and set(t) == {"x"}]
        assert [len(t) for t in long] == [16384, 16384, 7232]
        assert "bad\ufffdbyte" in result.stdout
        assert result.stdout[-1] == "no newline"

    def test_timeout_stops_the_step(self, run, step, short_timeout, kill_grace):
        result = run(step("echo started", "sleep 30", "echo after", timeout=short_timeout))
        assert result.outcome.reason == "timeout"
        assert "started" in result.stdout and "after" not in result.stdout
        assert short_timeout <= result.outcome.duration
        # timeout + grace + slack for the engine
        assert result.elapsed < short_timeout + kill_grace + 4.0

    def test_kill_from_another_thread_cancels_the_step(self, executor, run, step):
        def cancel(handle, lines):
            wait_for(lambda: any(line.text == "started" for line in lines))
            executor.kill(handle)

        result = run(step("echo started", "sleep 30", "echo after"), during=cancel)
        assert result.outcome.reason == "cancelled"
        assert "after" not in result.stdout
        assert result.elapsed < 8

    def test_kill_escalates_to_sigkill_after_the_grace(self, executor, run, step, kill_grace):
        def cancel(handle, lines):
            wait_for(lambda: any(line.text == "ready" for line in lines))
            executor.kill(handle, "cancelled")

        # The shell and its children ignore SIGTERM: only SIGKILL after the grace stops it.
        result = run(step("trap '' TERM", "echo ready", "sleep 30"), during=cancel)
        assert result.outcome.reason == "cancelled"
        assert result.outcome.exit_code == 137
        assert kill_grace * 0.9 < result.elapsed < kill_grace + 8

    def test_kill_after_the_end_changes_nothing(self, executor, job, step):
        executor.prepare(job)
        try:
            handle = executor.start(job, step("true"))
            list(executor.tail(handle))
            first = executor.wait(handle)
            executor.kill(handle)
            assert executor.wait(handle) == first
            assert first.succeeded
        finally:
            executor.cleanup(job)

    def test_files_written_by_a_step_are_seen_by_the_next(self, run, step, job):
        first = run(step("mkdir -p out", "echo payload > out/data.txt"))
        second = run(step("cat out/data.txt"))
        assert first.outcome.succeeded and second.outcome.succeeded
        assert "payload" in second.stdout
        assert (job.workspace / "out" / "data.txt").read_text() == "payload\n"

    def test_cleanup_keeps_the_workspace_and_scripts_stay_out_of_it(self, executor, job, step):
        executor.prepare(job)
        drive(executor, job, step("echo kept > kept.txt"))
        executor.cleanup(job)
        assert sorted(p.name for p in job.workspace.iterdir()) == ["kept.txt"]
