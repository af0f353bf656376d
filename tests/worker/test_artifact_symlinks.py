"""worker/artifacts.py with symlinks: a job's links are uploaded as links (not a failure,
wherever they point), the job log says how many point outside, and a downstream job gets
them back as links.

Fast: the job runner with the local executor, a SQLite state store and a file artifact store.
"""
from __future__ import annotations

import os
from pathlib import Path

from shared.artifacts.manifest import ManifestEntry
from worker.artifacts import kept_links_line
from tests.worker.local_run import job_log, run_until_done, start_local_run

RUN = "20261203-120000-5e1f11"

PIPELINE = """
    name: venv
    jobs:
      build:
        steps:
          - name: venv
            script:
              - mkdir -p venv/bin venv/lib && echo 'print(1)' > venv/lib/site.py
              - ln -s /usr/bin/python3 venv/bin/python
              - ln -s python venv/bin/python3
              - ln -s lib venv/lib64
              - ln -s ../../etc/passwd venv/escape
              - ln -s nowhere/at/all venv/dangling
        artifacts: {paths: [venv]}
      use:
        depends_on: [build]
        steps:
          - name: check
            script:
              - test -L venv/bin/python && test "$(readlink venv/bin/python)" = /usr/bin/python3
              - test -L venv/bin/python3 && test "$(readlink venv/bin/python3)" = python
              - test -L venv/lib64 && test "$(readlink venv/lib64)" = lib
              - test -L venv/escape && test "$(readlink venv/escape)" = ../../etc/passwd
              - test -L venv/dangling && test "$(readlink venv/dangling)" = nowhere/at/all
              - test "$(cat venv/lib64/site.py)" = 'print(1)'
              - echo links-ok
"""


def start(tmp_path: Path, pipeline: str):
    return start_local_run(tmp_path, pipeline, RUN)


def run_to_the_end(ctx, job: str) -> dict:
    return run_until_done(ctx, RUN, job)


def log_text(store, job: str) -> str:
    return job_log(store, RUN, job)


def test_a_venv_is_uploaded_with_its_links_and_a_dependent_gets_them_as_links(tmp_path: Path) -> None:
    store, ctx = start(tmp_path, PIPELINE)
    result = run_to_the_end(ctx, "build")
    log = log_text(store, "build")
    assert result["status"] == "success", log
    kept = [line for line in log.splitlines() if line.startswith("artifacts: kept ")]
    # python (absolute), python3 (through python) and escape; lib64 and dangling stay inside.
    assert kept == ["artifacts: kept 3 symlinks pointing outside the workspace as links "
                    "(venv/bin/python -> /usr/bin/python3, venv/bin/python3 -> python, "
                    "venv/escape -> ../../etc/passwd)"], log
    assert "uploaded artifacts: 6 file(s)" in log, log

    result = run_to_the_end(ctx, "use")
    log = log_text(store, "use")
    assert result["status"] == "success", log
    assert "links-ok" in log


def test_no_line_when_every_link_stays_inside(tmp_path: Path) -> None:
    store, ctx = start(tmp_path, """
        name: inside
        jobs:
          build:
            steps:
              - name: links
                script: ["mkdir -p out/lib && echo x > out/lib/a && ln -s lib out/lib64 && ln -s gone out/dangling"]
            artifacts: {paths: [out]}
    """)
    result = run_to_the_end(ctx, "build")
    log = log_text(store, "build")
    assert result["status"] == "success", log
    assert "artifacts: kept" not in log and "uploaded artifacts: 3 file(s)" in log


def test_the_line_names_three_links_then_dots_and_stays_one_line() -> None:
    links = [ManifestEntry(f"bin/l{i}", None, 0, 0o777, f"/usr/bin/t{i}") for i in range(5)]
    assert kept_links_line(links) == ("artifacts: kept 5 symlinks pointing outside the workspace as links "
                                      "(bin/l0 -> /usr/bin/t0, bin/l1 -> /usr/bin/t1, bin/l2 -> /usr/bin/t2, ...)")
    assert kept_links_line(links[:1]).startswith("artifacts: kept 1 symlink pointing")
    odd = ManifestEntry("a\nb", None, 0, 0o777, "/x\x1b[31m\udcff")
    line = kept_links_line([odd])
    assert "\n" not in line and "\x1b" not in line and "\udcff" not in line
    assert os.linesep not in line
