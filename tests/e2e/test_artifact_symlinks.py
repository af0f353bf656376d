"""A virtualenv as an artifact, end to end: `conveyor run` embedded with the local executor.

A job makes a real `python -m venv` (one of whose `bin/python*` links is absolute, to the
interpreter) plus a link leaving the workspace and a dangling one; the job succeeds, its
log counts the links kept, the downstream job finds every link as a link with the same
text and runs the venv's python through them, and `conveyor artifacts get` recreates them
exactly in a fresh directory without touching anything beside it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def conveyor(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env["CONVEYOR_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run([sys.executable, "-m", "coordinator", *args], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=180)


PIPELINE = """\
name: venv-links
jobs:
  build:
    steps:
      - name: venv
        script:
          - {python} -m venv --without-pip venv
          - ln -s ../../etc/passwd venv/escape
          - ln -s not/there venv/dangling
          - mkdir -p venv/share && echo data > venv/share/a.txt && ln -s share venv/share-link
          - ls -l venv/bin
    artifacts: {{paths: [venv]}}
  test:
    depends_on: [build]
    steps:
      - name: links
        script:
          - for l in venv/bin/python venv/bin/python3 venv/escape venv/dangling venv/share-link; do test -L $l || exit 7; done
          - for l in venv/bin/python*; do test -L $l && echo "seen $l -> $(readlink $l)"; done
          - test "$(readlink venv/escape)" = ../../etc/passwd
          - test "$(cat venv/share-link/a.txt)" = data
          - venv/bin/python -c 'import sys; print("in-venv", sys.prefix != sys.base_prefix)'
"""


def test_a_venv_artifact_keeps_its_links_as_links_end_to_end(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.yml").write_text(PIPELINE.format(python=sys.executable))
    result = conveyor(tmp_path, "run", str(project / "pipeline.yml"), "--executor", "local", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in-venv True" in result.stdout, result.stdout
    seen = dict(re.findall(r"\| seen (venv/bin/\S+) -> (\S+)", result.stdout))  # what the test job found
    assert any(target.startswith("/") for target in seen.values()), result.stdout

    run_id = json.loads(conveyor(tmp_path, "runs", "--format", "json").stdout)[0]["run_id"]
    status = json.loads(conveyor(tmp_path, "status", run_id, "--format", "json").stdout)
    members = {m["path"]: m for m in status["jobs"]["build"]["artifacts"]}
    links = {path: m["link_target"] for path, m in members.items() if "link_target" in m}
    assert {p: t for p, t in links.items() if p.startswith("venv/bin/python")} == seen
    assert links["venv/escape"] == "../../etc/passwd" and links["venv/dangling"] == "not/there"
    assert links["venv/share-link"] == "share"
    assert not any(p.startswith("venv/share-link/") for p in members)

    log = conveyor(tmp_path, "logs", run_id, "build").stdout
    kept = re.findall(r"artifacts: kept (\d+) symlinks? pointing outside the workspace as links \((.*)\)", log)
    bin_links = [p for p in links if p.startswith("venv/bin/")]  # all lead to the absolute interpreter
    assert kept and int(kept[0][0]) == len(bin_links) + 1, log  # + venv/escape

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    got = conveyor(tmp_path, "artifacts", "get", run_id, "build", "-o", str(fresh / "out"), cwd=tmp_path)
    assert got.returncode == 0, got.stdout + got.stderr
    for path, target in links.items():
        assert os.readlink(fresh / "out" / path) == target, path
    assert (fresh / "out" / "venv" / "share" / "a.txt").read_text() == "data\n"
    assert sorted(p.name for p in fresh.iterdir()) == ["out"]  # ../../etc/passwd was not made
    assert not [p for p in (fresh / "out").iterdir() if p.name.startswith(".conveyor-incoming-")]
