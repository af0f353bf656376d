"""Artifact storage faults: the S3 server gone for 10 s mid-upload, and a full disk under a
filesystem store. Retried or failed with a clear reason; never a corrupt or partial object."""
from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from shared.artifacts.s3 import make_client
from tests.faults.proxy import OutageProxy
from tests.services import start_moto

pytestmark = [pytest.mark.services, pytest.mark.slow]

OUTAGE_SECONDS = 10
BIG_MB = 20

PRODUCE_AND_CHECK = f"""
name: artifacts
retry_policy: {{backoff_base: 1, backoff_max: 2}}
jobs:
  produce:
    steps:
      - name: make
        script:
          - mkdir -p out
          - head -c {BIG_MB * 1000 * 1000} /dev/urandom > out/big.bin
          - sha256sum out/big.bin > out/big.sha256
    artifacts: {{paths: [out]}}
  consume:
    depends_on: [produce]
    steps: [{{name: check, script: ["sha256sum -c out/big.sha256"]}}]
"""


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[str, OutageProxy]]:
    """A moto S3 server of this test's own (its outage must not hit other tests), behind a proxy."""
    try:
        proc, port = start_moto(tmp_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    proxy = OutageProxy(port)
    try:
        yield f"http://127.0.0.1:{port}", proxy
    finally:
        proxy.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_down_for_ten_seconds_mid_upload(fault_cluster, fault, s3, monkeypatch) -> None:
    fault.fault = f"S3 server down {OUTAGE_SECONDS}s mid-upload ({BIG_MB} MB artifact)"
    endpoint, proxy = s3
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    make_client(endpoint).create_bucket(Bucket=bucket)
    cluster = fault_cluster
    cluster.env.update({"CONVEYOR_ARTIFACTS_URL": f"s3://{bucket}/ci",
                        "CONVEYOR_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"})
    for name in ("w1", "w2"):
        cluster.worker(name, concurrency=1, CONVEYOR_DATA_DIR=str(cluster.tmp / f"data-{name}"))
    run_id = cluster.submit(cluster.pipeline(PRODUCE_AND_CHECK))
    start = proxy.bytes_up
    deadline = time.monotonic() + 60
    while proxy.bytes_up - start < 5 * 1000 * 1000:  # well into the upload, far from its end
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.005)
    proxy.down()
    fault.injected = 1
    outage = threading.Timer(OUTAGE_SECONDS, proxy.up)
    outage.start()
    try:
        status = cluster.wait(run_id, timeout=180)
    finally:
        outage.join()
    produce = status["jobs"]["produce"]
    reasons = [a["reason"] for a in produce["attempt_history"]]
    uploads = make_client(endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    fault.note(f"run {status['status']}; produce attempts {reasons}; "
               f"{len(uploads)} abandoned multipart upload(s) left (invisible, never a CAS object)")
    assert status["status"] == "success", cluster.logs(run_id, "produce")
    assert "big.bin: OK" in cluster.logs(run_id, "consume")
    verify = cluster.cli("artifacts", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (the test runs as root, as CI does)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_under_the_artifact_store(fault_cluster, fault, tiny_disk: Path) -> None:
    fault.fault = "artifact store on a full disk (1 MiB tmpfs, 3 MB artifact)"
    cluster = fault_cluster
    store = tiny_disk / "store"
    cluster.env["CONVEYOR_ARTIFACTS_URL"] = store.as_uri()
    cluster.worker("w1", concurrency=1)
    pipeline = cluster.pipeline("""
        name: full
        retry_policy: {backoff_base: 0.5, backoff_max: 1}
        jobs:
          produce:
            steps: [{name: make, script: ["mkdir -p out", "head -c 3000000 /dev/urandom > out/big.bin"]}]
            artifacts: {paths: [out]}
    """)
    run_id = cluster.submit(pipeline)
    fault.injected = 1
    status = cluster.wait(run_id, timeout=120)
    produce = status["jobs"]["produce"]
    log = cluster.logs(run_id, "produce")
    fault.note(f"run {status['status']}; produce {produce['status']} ({produce['reason']}) "
               f"after {produce['attempts']} attempt(s)")
    assert (status["status"], produce["reason"]) == ("failed", "infrastructure")
    assert "no space left on device" in log.lower(), log
    fault.note(next(line.strip() for line in log.splitlines() if "no space left" in line.lower()))
    # nothing half-written is visible: every stored object hashes to its name, no temp files
    verify = cluster.cli("artifacts", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    leftovers = [p for p in (store / "tmp").rglob("*") if p.is_file()] if (store / "tmp").exists() else []
    assert leftovers == []
    sizes = [p.stat().st_size for p in (store / "cas").rglob("*") if p.is_file()] if (store / "cas").exists() else []
    assert all(size < 3_000_000 for size in sizes)  # the big file never landed, not even truncated
