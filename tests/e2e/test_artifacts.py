"""Artifacts and sources between jobs on separate workers, through a real S3 API (moto's server).

Each worker has its own data directory, so nothing can pass through local disk: the source
snapshot and every artifact travel through the bucket.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from shared.artifacts.s3 import make_client


BIG_MB = 50
SMALL_FILES = 2000


@pytest.fixture
def executor() -> str:
    return "local"  # artifacts do not depend on the executor; the local one keeps these quick


@pytest.fixture
def s3_cluster(cluster, s3_endpoint: str, s3_bucket: str):
    cluster.env.update({
        "CONVEYOR_ARTIFACTS_URL": f"s3://{s3_bucket}/ci",
        "CONVEYOR_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    })
    for name in ("w1", "w2"):
        cluster.worker(name, concurrency=1, CONVEYOR_DATA_DIR=str(cluster.tmp / f"data-{name}"))
    return cluster


HANDOVER = f"""
name: handover
jobs:
  big:
    steps:
      - name: make
        script:
          - mkdir -p out
          - yes conveyor-artifact | head -c {BIG_MB * 1000 * 1000} > out/big.bin
          - sha256sum out/big.bin > out/big.sha256
          - sleep 2
    artifacts: {{paths: [out]}}
  many:
    steps:
      - name: make
        script:
          - mkdir -p tree/a tree/b
          - i=0; while [ $i -lt {SMALL_FILES // 2} ]; do echo "a$i" > tree/a/$i.txt; echo "b$i" > tree/b/$i.txt; i=$((i+1)); done
          - ln -s a/1.txt tree/link
          - sleep 2
    artifacts: {{paths: ["tree/**"]}}
  check:
    depends_on: [big, many]
    steps:
      - name: verify
        script:
          - sha256sum -c out/big.sha256
          - test "$(find tree -type f | wc -l)" -eq {SMALL_FILES}
          - test "$(cat tree/link)" = a1
          - test -f input.txt
          - echo checked-ok
"""


def _uploaded_new(log: str) -> str:
    match = re.search(r"uploaded artifacts: .*\((.+) new\)", log)
    assert match, log
    return match.group(1)


@pytest.mark.slow
def test_artifacts_and_source_travel_between_workers_and_dedupe(s3_cluster) -> None:
    pipeline = s3_cluster.pipeline(HANDOVER)
    (pipeline.parent / "input.txt").write_text("from the source snapshot\n")
    first = s3_cluster.submit(pipeline)
    status = s3_cluster.wait(first, timeout=300)
    assert status["status"] == "success", json.dumps(status["jobs"], indent=1) + s3_cluster.logs(first)
    jobs = status["jobs"]
    # `big` and `many` ran at once on the two single-slot workers, so `check` read at least
    # one of them from the other machine's uploads.
    assert {jobs["big"]["worker"], jobs["many"]["worker"]} == {"w1", "w2"}
    assert "checked-ok" in s3_cluster.logs(first, "check")
    members = {a["path"]: a for a in jobs["big"]["artifacts"]}
    assert members["out/big.bin"]["size"] == BIG_MB * 1000 * 1000
    assert len(jobs["many"]["artifacts"]) == SMALL_FILES + 1

    second = s3_cluster.submit(pipeline)
    assert s3_cluster.wait(second, timeout=300)["status"] == "success"
    # Identical outputs: the second run's uploads are all dedup hits.
    assert _uploaded_new(s3_cluster.logs(second, "big")) == "0 bytes"
    assert _uploaded_new(s3_cluster.logs(second, "many")) == "0 bytes"

    listing = s3_cluster.cli("artifacts", "ls", second, "--format", "json")
    assert listing.returncode == 0, listing.stderr
    kinds = sorted((r["job"], r["kind"]) for r in json.loads(listing.stdout))
    assert ("big", "artifact") in kinds and ("many", "artifact") in kinds
    out = s3_cluster.tmp / "fetched"
    got = s3_cluster.cli("artifacts", "get", second, "big", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "out" / "big.bin").stat().st_size == BIG_MB * 1000 * 1000


@pytest.mark.slow
def test_a_flipped_byte_fails_the_download_and_verify(s3_cluster, s3_endpoint: str, s3_bucket: str) -> None:
    pipeline = s3_cluster.pipeline("""
        name: rot
        jobs:
          make:
            steps: [{name: make, script: ["echo precious-content > data.txt"]}]
            artifacts: {paths: [data.txt]}
          use:
            depends_on: [make]
            steps: [{name: use, script: ["cat data.txt"]}]
    """)
    first = s3_cluster.submit(pipeline)
    status = s3_cluster.wait(first)
    assert status["status"] == "success"
    digest = status["jobs"]["make"]["artifacts"][0]["sha256"]
    client = make_client(s3_endpoint)
    key = f"ci/cas/{digest[:2]}/{digest[2:4]}/{digest}"
    data = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    data[3] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key=key, Body=bytes(data))

    # The same content again is a dedup hit on the rotten object; the download catches it.
    second = s3_cluster.submit(pipeline)
    status = s3_cluster.wait(second, timeout=180)
    use = status["jobs"]["use"]
    assert use["status"] == "failed" and use["reason"] == "integrity_error"
    log = s3_cluster.logs(second, "use")
    assert "data.txt" in log and digest in log  # names the file and the expected hash
    verify = s3_cluster.cli("artifacts", "verify")
    assert verify.returncode == 1
    assert digest in verify.stderr

    # Healing: drop the rotten object; until the content is stored again the records that
    # name it are reported missing; the next run stores it afresh.
    assert s3_cluster.cli("artifacts", "verify", "--delete-corrupt").returncode == 1
    still = s3_cluster.cli("artifacts", "verify")
    assert still.returncode == 1 and f"missing: {digest}" in still.stderr
    third = s3_cluster.submit(pipeline)
    assert s3_cluster.wait(third, timeout=180)["status"] == "success"
    assert "precious-content" in s3_cluster.logs(third, "use")
    healed = s3_cluster.cli("artifacts", "verify")
    assert healed.returncode == 0, healed.stderr


def test_a_link_that_leaves_the_workspace_is_kept_as_a_link_never_followed(s3_cluster, tmp_path) -> None:
    # As tar and GitLab do: `out/passwd -> /etc/passwd` is stored as that link (its target
    # text), never as the host's file, and comes back as the same link.
    pipeline = s3_cluster.pipeline("""
        name: escape
        jobs:
          sneaky:
            steps: [{name: link, script: ["mkdir out", "ln -s /etc/passwd out/passwd"]}]
            artifacts: {paths: [out]}
    """)
    run_id = s3_cluster.submit(pipeline)
    job = s3_cluster.wait(run_id)["jobs"]["sneaky"]
    assert job["status"] == "success", s3_cluster.logs(run_id, "sneaky")
    [member] = job["artifacts"]
    assert member["path"] == "out/passwd" and member["link_target"] == "/etc/passwd"
    assert "kept 1 symlink pointing outside the workspace" in s3_cluster.logs(run_id, "sneaky")
    got = s3_cluster.cli("artifacts", "get", run_id, "sneaky", "-o", str(tmp_path / "got"))
    assert got.returncode == 0, got.stderr
    link = tmp_path / "got" / "out" / "passwd"
    assert link.is_symlink() and str(link.readlink()) == "/etc/passwd"


@pytest.mark.slow
def test_gc_keeps_what_a_waiting_job_will_download(s3_cluster) -> None:
    pipeline = s3_cluster.pipeline("""
        name: held
        jobs:
          make:
            steps: [{name: make, script: ["echo keep-me > kept.txt"]}]
            artifacts: {paths: [kept.txt], expire_in: 1s}
          slow:
            steps: [{name: wait, script: ["sleep 8"]}]
          use:
            depends_on: [make, slow]
            steps: [{name: use, script: ["grep keep-me kept.txt"]}]
    """)
    run_id = s3_cluster.submit(pipeline)
    for _ in range(100):
        if s3_cluster.status(run_id)["jobs"]["make"]["status"] == "success":
            break
        time.sleep(0.2)
    time.sleep(1.5)  # the artifact has expired; `use` still waits for `slow`
    gc = s3_cluster.cli("artifacts", "gc", "-v")
    assert gc.returncode == 0, gc.stderr
    assert re.search(r"keep .*make.*held by .*use", gc.stdout), gc.stdout
    status = s3_cluster.wait(run_id)
    assert status["status"] == "success", s3_cluster.logs(run_id, "use")

    gc = s3_cluster.cli("artifacts", "gc")
    assert gc.returncode == 0, gc.stderr
    assert re.search(r"delete record .*make", gc.stdout), gc.stdout
    listing = json.loads(s3_cluster.cli("artifacts", "ls", run_id, "--format", "json").stdout)
    assert [r for r in listing if r["job"] == "make"] == []
