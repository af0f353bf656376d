"""Workers on three "hosts": network namespaces on one machine, each with its own link.

    host side (default namespace)            hosts (namespaces)
    bridge  10.X.Y.1/24  <- veth pair ->     host1 10.X.Y.11   worker host1, own data dir
    redis-server, moto S3 on 10.X.Y.1  <-    host2 10.X.Y.12   worker host2
                                       <-    host3 10.X.Y.13   worker host3

Nothing passes between workers except through Redis and S3 (each has its own data dir and
sees the others only over the network). Cutting a host's link (`ip link set ... down` on
its host end) is a network partition: its worker lives on but reaches nothing.
"""
from __future__ import annotations

import ipaddress
import random
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from shared.artifacts.s3 import make_client
from shared.state.base import RUNNING
from shared.state.redis import RedisState
from tests.faults.cluster import ReapingCluster, ReapingWorker
from tests.services import start_moto, start_redis

pytestmark = pytest.mark.slow

HOSTS = 3


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def free_subnet() -> ipaddress.IPv4Network:
    """A private /24 that no route on this machine overlaps."""
    routes = ip("-4", "route", "show", "table", "all").stdout.split()
    used = [ipaddress.ip_network(word, strict=False) for word in routes if "/" in word and word[0].isdigit()]
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(net.overlaps(other) for other in used):
            return net
    pytest.fail("no free private /24 found")


@dataclass
class Host:
    name: str
    namespace: str
    host_end: str  # the veth end on the host side: `ip link set HOST_END down` cuts this host off
    address: str


class Network:
    """The bridge, namespaces and veth pairs; `remove()` deletes all of them."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.subnet = free_subnet()
        self.gateway = str(self.subnet.network_address + 1)
        self.bridge = f"cvbr{self.tag}"
        self.hosts: list[Host] = []

    def create(self) -> None:
        prefix = self.subnet.prefixlen
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for n in range(1, HOSTS + 1):
            host = Host(f"host{n}", f"cv{self.tag}-{n}", f"cvh{self.tag}{n}", str(self.subnet.network_address + 10 + n))
            inner = f"cvn{self.tag}{n}"
            ip("netns", "add", host.namespace)
            self.hosts.append(host)
            ip("link", "add", host.host_end, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", host.namespace)
            ip("link", "set", host.host_end, "master", self.bridge)
            ip("link", "set", host.host_end, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/{prefix}", "dev", inner)
            ip("-n", host.namespace, "link", "set", inner, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")

    def remove(self) -> None:
        for host in self.hosts:
            ip("netns", "del", host.namespace, check=False)  # takes its veth pair along
            ip("link", "del", host.host_end, check=False)
        ip("link", "del", self.bridge, check=False)


@dataclass
class Cluster:
    network: Network
    cluster: ReapingCluster
    workers: dict[str, ReapingWorker]
    redis_url: str


@pytest.fixture(scope="module")
def multihost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("multihost")
    network = Network()
    services = []
    cluster = None
    environ = pytest.MonkeyPatch()
    try:
        network.create()
        redis_proc, port = start_redis(tmp, "--bind", f"{network.gateway} 127.0.0.1", "--protected-mode", "no")
        services.append(redis_proc)
        try:
            moto_proc, moto_port = start_moto(tmp, host=network.gateway)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        services.append(moto_proc)
        credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}
        endpoint = f"http://{network.gateway}:{moto_port}"
        bucket = f"multihost-{network.tag}"
        for name, value in credentials.items():
            environ.setenv(name, value)  # for this process's S3 client
        make_client(endpoint).create_bucket(Bucket=bucket)
        cluster = ReapingCluster(tmp, port, "local")
        cluster.redis_url = f"redis://{network.gateway}:{port}/0"
        cluster.env.update({**credentials, "CONVEYOR_BROKER_URL": cluster.redis_url,
                            "CONVEYOR_ARTIFACTS_URL": f"s3://{bucket}/ci", "CONVEYOR_S3_ENDPOINT_URL": endpoint})
        workers = {}
        for host in network.hosts:
            env = {**cluster.env, "CONVEYOR_DATA_DIR": str(tmp / host.name)}
            worker = ReapingWorker(host.name, env, 1, "ip", "netns", "exec", host.namespace)
            cluster.workers.append(worker)
            workers[host.name] = worker
        for worker in workers.values():
            if not worker.ready.wait(90):
                pytest.fail(f"worker {worker.name} did not become ready:\n{worker.log()}")
        yield Cluster(network, cluster, workers, cluster.redis_url)
    finally:
        if cluster is not None:
            cluster.stop()
        for proc in services:
            proc.terminate()
            proc.wait(timeout=10)
        network.remove()
        environ.undo()


def workers_of(job: dict) -> list[str]:
    return [attempt["worker"] for attempt in job["attempt_history"]]


def test_thirty_jobs_spread_over_three_hosts(multihost: Cluster) -> None:
    cluster = multihost.cluster
    jobs = "\n".join(
        f"  j{i:02d}: {{steps: [{{name: s, script: [\"sleep 0.5\", \"echo $CONVEYOR_JOB > out.txt\"]}}], "
        f"artifacts: {{paths: [out.txt]}}}}" for i in range(1, 30))
    pipeline = cluster.pipeline(f"""
name: spread
jobs:
{jobs}
  gather:
    depends_on: [{", ".join(f"j{i:02d}" for i in range(1, 30))}]
    steps: [{{name: s, script: ["cat out.txt"]}}]
""", name="spread.yml")
    run_id = cluster.submit(pipeline)
    status = cluster.wait(run_id, timeout=180)
    assert status["status"] == "success"
    assert len(status["jobs"]) == 30
    ran = {}
    for name, job in status["jobs"].items():
        for worker in workers_of(job):
            ran[worker] = ran.get(worker, 0) + 1
    assert set(ran) == {"host1", "host2", "host3"}, ran


def test_a_cut_host_loses_its_job_to_another_and_cannot_overwrite_it(multihost: Cluster, tmp_path: Path) -> None:
    cluster = multihost.cluster
    # The first attempt runs long (it is the one cut off); any later attempt is quick. The
    # marker lives on the one filesystem all namespaces share.
    marker = tmp_path / "first-attempt"
    pipeline = cluster.pipeline(f"""
        name: partition
        jobs:
          work:
            steps:
              - name: s
                script:
                  - if mkdir {marker} 2>/dev/null; then sleep 15; echo first-attempt-finished; else echo second-attempt; fi
          after: {{depends_on: [work], steps: [{{name: s, script: ["echo after"]}}]}}
    """, name="partition.yml")
    run_id = cluster.submit(pipeline)
    store = RedisState(multihost.redis_url)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or store.get_jobs(run_id, ["work"])["work"].status != RUNNING:
            assert time.monotonic() < deadline, "work never started"
            time.sleep(0.05)
        first = store.get_jobs(run_id, ["work"])["work"].worker
        host = next(h for h in multihost.network.hosts if h.name == first)
        ip("link", "set", host.host_end, "down")
        cut_at = time.monotonic()
        try:
            deadline = time.monotonic() + 40
            while store.get_run(run_id).status == RUNNING:
                assert time.monotonic() < deadline, "the job was not re-run while its host was cut off"
                time.sleep(0.2)
            rerun_after = time.monotonic() - cut_at
        finally:
            ip("link", "set", host.host_end, "up")
        # Back on the network, the cut worker's next heartbeat finds a newer attempt: it stops
        # its step and discards its result. Give it the time to try.
        deadline = time.monotonic() + 30
        while "lease lost" not in cluster.logs(run_id, "work"):
            assert time.monotonic() < deadline, cluster.logs(run_id, "work")
            time.sleep(0.5)
    finally:
        store.close()
    status = cluster.status(run_id)
    work = status["jobs"]["work"]
    assert status["status"] == "success"
    assert rerun_after < 30  # lease (3 s) + a reaper pass, not the 2 h visibility timeout
    assert [(a["worker"], a["reason"]) for a in work["attempt_history"]][0] == (first, "worker_lost")
    assert work["worker"] != first and work["attempt_history"][-1]["reason"] is None
    assert (work["status"], work["exit_code"]) == ("success", 0)
    output = cluster.logs(run_id, "work").splitlines()  # step output only, not the echoed commands
    assert "second-attempt" in output and "first-attempt-finished" not in output
