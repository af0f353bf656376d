"""Artifact globs never leave the workspace, and never walk without bound.

Attacks (a job controls its workspace; the worker expands `artifacts.paths` on its host):
- the job runs `ln -s / out/root` and the pipeline collects `out/*/*`: pathlib's glob
  follows the link, so the worker walked the whole host disk and the job log named host
  files. Now no directory outside the workspace is ever listed, and nothing of the host
  is named;
- a job makes a huge tree (or the glob is `**` over one): collecting stops at the entry
  bound with a job-log error naming the glob and the bound, reason `script_failure`,
  not retried.

Fast: the matcher alone, then the job runner with the local executor, a SQLite state
store and a file artifact store.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.artifacts import manifest as manifest_mod
from shared.artifacts.base import PathError
from shared.artifacts.manifest import GlobLimitError, build_manifest
from worker.artifacts import ArtifactFailure, _guarded
from tests.worker.local_run import job_log, run_until_done, start_local_run

RUN = "20261203-120000-0ab1e5"


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every directory os.scandir lists (pathlib's glob and os.walk both go through it)."""
    seen: list[str] = []
    real = os.scandir

    def recording(path=".", *args, **kwargs):
        seen.append(os.path.realpath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", recording)
    return seen


def fake_host(tmp_path: Path) -> Path:
    """A directory standing in for the worker's disk, outside the workspace."""
    host = tmp_path / "host"
    (host / "etc").mkdir(parents=True)
    (host / "etc" / "shadow").write_text("root:$6$hash")
    (host / "home" / "ops" / ".ssh").mkdir(parents=True)
    (host / "home" / "ops" / ".ssh" / "id_ed25519").write_text("KEY")
    return host


@pytest.mark.parametrize("pattern", ["out/*/*", "out/*/*/*", "out/**", "out/**/*", "*/root*/*", "out/[r]oot/*"])
def test_a_link_to_the_host_is_never_walked(tmp_path: Path, listed: list[str], pattern: str) -> None:
    host = fake_host(tmp_path)
    ws = tmp_path / "ws"
    (ws / "out" / "real").mkdir(parents=True)
    (ws / "out" / "real" / "report.txt").write_text("ok")
    (ws / "out" / "root").symlink_to(host)
    try:
        manifest = build_manifest(ws, [pattern])
    except PathError as exc:  # the link itself matched as a member: refused, naming only it
        assert "shadow" not in str(exc) and "etc" not in str(exc) and "ssh" not in str(exc)
    else:
        assert all(not e.path.startswith("out/root/") for e in manifest.entries)
    real_ws = os.path.realpath(ws)
    outside = [path for path in listed if not (path == real_ws or path.startswith(real_ws + os.sep))]
    assert outside == [], f"listed outside the workspace: {outside}"


def test_a_link_to_slash_matches_nothing_and_lists_nothing_of_the_host(tmp_path: Path, listed: list[str]) -> None:
    ws = tmp_path / "ws"
    (ws / "out").mkdir(parents=True)
    (ws / "out" / "root").symlink_to("/")
    assert build_manifest(ws, ["out/*/*"]).entries == ()
    real_ws = os.path.realpath(ws)
    assert all(path.startswith(real_ws) for path in listed), listed


def test_the_glob_limit_is_a_script_failure_that_is_not_retried() -> None:
    def collect() -> None:
        raise GlobLimitError("artifact glob '**' looked at more than 100,000 directory entries (the limit)")

    with pytest.raises(ArtifactFailure) as caught:
        _guarded("collecting artifacts", collect)
    assert (caught.value.reason, caught.value.retryable) == ("script_failure", False)
    assert "'**'" in str(caught.value) and "100,000" in str(caught.value)


# -- through the job runner ----------------------------------------------------------------


def start(tmp_path: Path, pipeline: str):
    return start_local_run(tmp_path, pipeline, RUN)


def run_to_the_end(ctx, job: str) -> dict:
    return run_until_done(ctx, RUN, job)


def log_text(store, job: str) -> str:
    return job_log(store, RUN, job)


def test_a_job_linking_the_host_root_gets_nothing_of_it(tmp_path: Path) -> None:
    store, ctx = start(tmp_path, """
        name: escape
        jobs:
          build:
            steps:
              - name: link
                script: ["mkdir -p out/real && echo ok > out/real/report.txt && ln -s / out/root"]
            artifacts: {paths: ["out/*/*"]}
    """)
    result = run_to_the_end(ctx, "build")
    log = log_text(store, "build")
    assert result["status"] == "success", log
    assert "uploaded artifacts: 1 file(s)" in log
    for host_name in ("passwd", "/etc", "out/root/"):
        assert host_name not in log


def test_a_huge_tree_stops_at_the_bound_with_a_clear_error_and_no_retry(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_mod, "MAX_GLOB_ENTRIES", 300)
    store, ctx = start(tmp_path, """
        name: huge
        jobs:
          build:
            retry_count: 2
            steps:
              - name: many
                script: ["mkdir -p many && cd many && for i in $(seq 1 400); do : > f$i; done"]
            artifacts: {paths: ["many/**"]}
    """)
    result = run_to_the_end(ctx, "build")
    record = store.get_jobs(RUN, ["build"])["build"]
    assert (result["status"], record.reason, record.attempt) == ("failed", "script_failure", 1)
    log = log_text(store, "build")
    assert "artifact glob 'many/**'" in log and "300" in log and "the limit" in log, log
