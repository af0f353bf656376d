"""Deployment benchmarks on a real HAProxy and real demo-app processes (no Celery: ticks run in-process).

    python bench/deploy_bench.py {abort,split,switch,all} [--repeat N] [--requests N] [--threads N]

    abort   from the abort decision (command recorded) to HAProxy reporting the stable
            servers at 100 % and the canary out, through one tick and one runtime-API batch
                                                            target p50 <= 100 ms
    split   observed traffic split vs the requested canary weight over 1,000 requests
            through the HAProxy frontend, for weights 5, 10, 25, 50 %
                                                            target |observed - requested| <= 2 points
    switch  failed requests during a blue-green switch, under the highest request rate
            this machine sustains (threads of keep-alive clients against the frontend)
                                                            target 0 failed

Each sub-command starts its own haproxy (admin socket in a temporary directory) and
demo-app instances (examples/demo-app/ctl.py), as the deployment tests start them
(tests/deploy/services.py), and stops them when it ends. Exit status 1 when a target is
missed.
"""
from __future__ import annotations

import argparse
import heapq
import http.client
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import verdict  # noqa: E402
from tests.deploy.services import CTL, start_app, start_haproxy, stop_apps  # noqa: E402
from tests.services import free_port  # noqa: E402

from deploy import engine  # noqa: E402
from deploy.config import load_config  # noqa: E402
from deploy.record import weight_shares  # noqa: E402
from deploy.routers.base import SetState, SetWeight  # noqa: E402
from deploy.routers.haproxy import HAProxyRouter  # noqa: E402
from deploy.store import deploy_store_for  # noqa: E402
from shared.state import JobMeta, open_state  # noqa: E402

PY = sys.executable



class Site:
    """haproxy with backend `web` (web1, web2) and demo-app state in one temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.apps = tmp / "apps"  # DEMO_STATE_DIR of the demo-app instances
        self.ports = {n: free_port() for n in ("web1", "web2", "spare1", "spare2")}
        self.haproxy = start_haproxy(tmp / "haproxy", {
            name: f"127.0.0.1:{self.ports[name]}" for name in ("web1", "web2")})
        self.frontend = self.haproxy.port
        self.socket = self.haproxy.socket
        self.router = HAProxyRouter(self.haproxy.admin, "web")
        for name in ("web1", "web2"):
            start_app(self.apps, name, "v1", self.ports[name])
        self.wait(lambda: all(s.up for s in self.router.servers().values()))
        self.state = open_state(f"sqlite:///{tmp / 'state.db'}")
        self.deploys = deploy_store_for(self.state)
        self.queue: list[tuple[float, int, str, str, int]] = []
        self.count = 0
        self.rt = engine.DeployRuntime(self.state, self.deploys, self._enqueue, "bench")

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting")
            time.sleep(0.02)

    def _enqueue(self, run_id: str, job: str, seq: int, countdown: float) -> None:
        self.count += 1
        heapq.heappush(self.queue, (time.monotonic() + min(countdown, 2.0), self.count, run_id, job, seq))

    def deploy(self, spec: str) -> str:
        """Start a deployment of `spec` (the deploy: mapping as YAML flow) and return its run id."""
        import yaml

        self.count += 1
        run_id = f"bench-{self.count}"
        p = self.ports
        environment = {
            "router": {"type": "haproxy", "admin": f"unix://{self.socket}", "backend": "web"},
            "provider": {"type": "command", "start": f"{PY} {CTL} start ${{INSTANCE}} ${{VERSION}} ${{PORT}}",
                         "stop": f"{PY} {CTL} stop ${{INSTANCE}}",
                         # provider commands see only what they are given (docs/deployments.md)
                         "env": {"DEMO_STATE_DIR": str(self.apps)}},
            "instances": [{"name": "web1", "address": f"127.0.0.1:{p['web1']}"},
                          {"name": "web2", "address": f"127.0.0.1:{p['web2']}"}],
            "spare": [f"127.0.0.1:{p['spare1']}", f"127.0.0.1:{p['spare2']}"],
            "health_check": {"type": "http", "path": "/healthz", "interval": 0.3, "timeout": 1,
                             "success_threshold": 1, "failure_threshold": 2},
        }
        deploy = {"environment": "prod", **yaml.safe_load(spec)}
        config = load_config(deploy, {"prod": environment})
        self.state.create_run(run_id, "bench", {"release": JobMeta()}, {"jobs": {}}, {})
        claim = self.state.claim(run_id, "release", "bench", 30_000)
        engine.begin(self.rt, run_id, "release", claim.token, config, str(self.tmp), None)
        return run_id

    def state_of(self, run_id: str) -> str:
        return self.deploys.load(run_id, "release")[0]["state"]

    def drive(self, until: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if not self.queue or time.monotonic() > deadline:
                raise SystemExit("deployment did not get there")
            due, _, run_id, job, seq = heapq.heappop(self.queue)
            time.sleep(max(0.0, due - time.monotonic()))
            engine.tick(self.rt, run_id, job, seq)

    def close(self) -> None:
        stop_apps(self.apps)
        self.haproxy.stop()


@contextmanager
def site() -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        s = Site(Path(tmp))
        try:
            yield s
        finally:
            s.close()


def report(ok: bool, text: str) -> bool:
    print(f"  {verdict(ok)}: {text}")
    return ok


# -- abort --------------------------------------------------------------------------------------


def bench_abort(repeat: int) -> bool:
    print("abort: abort decision -> stable at 100 % in HAProxy")
    with site() as s:
        samples, batch_ms = [], []
        for _ in range(repeat):
            run_id = s.deploy("{version: v2, strategy: canary, canary: {steps: [{set_weight: 50}, {pause: 600}]}}")
            s.drive(lambda: s.state_of(run_id) == "paused")
            started = time.perf_counter()
            s.deploys.add_command(run_id, "release", {"type": "abort", "by": "bench", "at": None})
            engine.tick(s.rt, run_id, "release", engine.NUDGE)
            servers = s.router.servers()
            restored = (servers["web1"].effective_weight == 50 and servers["web2"].effective_weight == 50
                        and servers["spare1"].admin == "maint")
            samples.append((time.perf_counter() - started) * 1000)
            if not restored:
                return report(False, f"stable not restored by the abort tick: {servers}")
            s.drive(lambda: s.state_of(run_id) == "aborted")
        for _ in range(50):
            started = time.perf_counter()
            s.router.apply([SetWeight("web1", 50), SetWeight("web2", 50), SetState("web1", "ready")])
            batch_ms.append((time.perf_counter() - started) * 1000)
    p50 = statistics.median(samples)
    print(f"  abort -> restored: p50 {p50:.1f} ms, max {max(samples):.1f} ms over {len(samples)} aborts "
          f"(one tick: lock, record, show stat, batch, save)")
    print(f"  one runtime-API batch (3 commands, one write): p50 {statistics.median(batch_ms):.2f} ms, "
          f"max {max(batch_ms):.2f} ms")
    return report(p50 <= 100, f"p50 {p50:.1f} ms <= 100 ms")


# -- split --------------------------------------------------------------------------------------


def get(conn_factory, path: str = "/") -> tuple[int, str]:
    conn = conn_factory()
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read().decode().strip()


def bench_split(requests: int) -> bool:
    print(f"split: observed canary share over {requests} requests vs requested weight")
    ok = True
    with site() as s:
        start_app(s.apps, "spare1", "v2", s.ports["spare1"])
        from deploy.routers.base import AddServer, Check

        s.router.apply([AddServer("spare1", f"127.0.0.1:{s.ports['spare1']}", 0, Check(300, 1, 2)),
                        SetState("spare1", "ready")])
        s.wait(lambda: s.router.servers()["spare1"].up)
        conn = http.client.HTTPConnection("127.0.0.1", s.frontend, timeout=5)
        worst = 0.0
        for weight in (5, 10, 25, 50):
            stable = weight_shares(["web1", "web2"], 100 - weight)
            s.router.apply([SetWeight("spare1", weight), *[SetWeight(n, w) for n, w in stable.items()]])
            canary = 0
            for _ in range(requests):
                status, body = get(lambda: conn)
                canary += body == "v2"
            observed = 100 * canary / requests
            worst = max(worst, abs(observed - weight))
            print(f"  requested {weight:>2} %  observed {observed:5.1f} %  (off by {observed - weight:+.1f} points)")
        conn.close()
    return report(worst <= 2, f"worst deviation {worst:.1f} points <= 2") and ok


# -- switch -------------------------------------------------------------------------------------


class Load:
    """N threads of keep-alive clients hammering the frontend; every non-200 or error is a failure."""

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    with self.lock:
                        self.ok += 1
                else:
                    with self.lock:
                        self.failed.append(f"HTTP {response.status}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.close()

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def bench_switch(threads: int | None) -> bool:
    print("switch: failed requests during a blue-green switch under the highest sustainable rate")
    with site() as s:
        best, best_threads = 0.0, 1
        for n in ([threads] if threads else [1, 2, 4, 8, 16, 32]):
            with Load(s.frontend, n) as probe:
                time.sleep(1.5)
                started_ok = probe.ok
                time.sleep(2.0)
                rate = (probe.ok - started_ok) / 2.0
            print(f"  {n:>2} client threads: {rate:7.0f} req/s")
            if rate > best * 1.05:
                best, best_threads = rate, n
        print(f"  using {best_threads} threads (~{best:.0f} req/s)")
        with Load(s.frontend, best_threads) as load:
            started = time.monotonic()
            run_id = s.deploy("{version: v2, strategy: blue_green, blue_green: {keep_old_for: 600}}")
            s.drive(lambda: s.state_of(run_id) == "promoted")
            time.sleep(1.0)
            elapsed = time.monotonic() - started
        weights = {n: srv.effective_weight for n, srv in s.router.servers().items() if srv.effective_weight}
    total = load.ok + len(load.failed)
    print(f"  {total} requests in {elapsed:.1f} s ({total / elapsed:.0f} req/s) across the switch; "
          f"failed {len(load.failed)}; weights after: {weights}")
    if load.failed:
        print(f"  failures: {sorted(set(load.failed))[:5]}")
    return report(not load.failed and weights == {"spare1": 50, "spare2": 50}, f"{len(load.failed)} failed requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["abort", "split", "switch", "all"])
    parser.add_argument("--repeat", type=int, default=5, help="aborts to time (abort)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per weight (split)")
    parser.add_argument("--threads", type=int, default=None, help="client threads (switch; default: search)")
    args = parser.parse_args()
    ok = True
    if args.what in ("abort", "all"):
        ok &= bench_abort(args.repeat)
    if args.what in ("split", "all"):
        ok &= bench_split(args.requests)
    if args.what in ("switch", "all"):
        ok &= bench_switch(args.threads)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
