#!/usr/bin/env python3
"""A tiny web app to deploy in the Conveyor examples: `/` answers its version, `/healthz` its health.

It can misbehave on purpose, to show what the deployment strategies do about it, through
flags, environment variables, or tags in the version string itself (so that a pipeline
variable alone picks the behaviour):

    --fail-health [INSTANCE]   DEMO_FAIL_HEALTH=1|INSTANCE   version tag +fail-health or +fail-health=INSTANCE
    --error-percent N          DEMO_ERROR_PERCENT=N          version tag +errors=N   (exactly N % of `/` answer 500)
    --latency-ms N             DEMO_LATENCY_MS=N             version tag +latency=N

e.g. `app.py --port 8081 --version v2+errors=5` serves version `v2+errors=5` and fails
every twentieth request. Standard library only.
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Behaviour:
    """What this instance does wrong, and a counter that spreads errors exactly."""

    def __init__(self, instance: str, fail_health: str | None, error_percent: float, latency_ms: float) -> None:
        # fail_health: None (healthy), "" (this instance fails), or the one instance name that fails
        self.unhealthy = fail_health is not None and fail_health in ("", "1", instance)
        self.error_percent = error_percent
        self.latency_s = latency_ms / 1000
        self.count = 0
        self.lock = threading.Lock()

    def next_is_error(self) -> bool:
        """Exactly error_percent % of requests, evenly spread (request n fails when the running total of
        errors owed crosses an integer)."""
        with self.lock:
            self.count += 1
            n = self.count
        return int(n * self.error_percent / 100) != int((n - 1) * self.error_percent / 100)


def parse_tags(version: str) -> dict[str, str]:
    """`v2+errors=5+fail-health=web2` -> {"errors": "5", "fail-health": "web2"}."""
    tags = {}
    for part in version.split("+")[1:]:
        key, _, value = part.partition("=")
        tags[key] = value
    return tags


def make_handler(version: str, instance: str, behaviour: Behaviour):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "demo-app"
        # one write per response, sent at once: headers and body in separate small writes
        # would meet Nagle and delayed ACKs on keep-alive connections (40 ms per request)
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def _send(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Version", version)
            self.send_header("X-Instance", instance)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.startswith("/healthz"):
                self._send(503 if behaviour.unhealthy else 200, "unhealthy\n" if behaviour.unhealthy else "ok\n")
                return
            if behaviour.latency_s:
                time.sleep(behaviour.latency_s)
            if behaviour.next_is_error():
                self._send(500, f"{version} failed on purpose\n")
                return
            self._send(200, f"{version}\n")

        def log_message(self, fmt: str, *args) -> None:
            if os.environ.get("DEMO_ACCESS_LOG"):
                super().log_message(fmt, *args)

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--instance", default=os.environ.get("CONVEYOR_DEPLOY_INSTANCE", "demo"))
    parser.add_argument("--fail-health", nargs="?", const="", default=None)
    parser.add_argument("--error-percent", type=float, default=None)
    parser.add_argument("--latency-ms", type=float, default=None)
    args = parser.parse_args()
    tags = parse_tags(args.version)
    fail_health = args.fail_health if args.fail_health is not None else tags.get("fail-health",
                                                                                  os.environ.get("DEMO_FAIL_HEALTH"))
    errors = args.error_percent if args.error_percent is not None else float(
        tags.get("errors") or os.environ.get("DEMO_ERROR_PERCENT") or 0)
    latency = args.latency_ms if args.latency_ms is not None else float(
        tags.get("latency") or os.environ.get("DEMO_LATENCY_MS") or 0)
    behaviour = Behaviour(args.instance, fail_health, errors, latency)
    server = Server((args.host, args.port), make_handler(args.version, args.instance, behaviour))
    # SIGTERM: stop accepting, let requests in flight finish, then exit.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"demo-app {args.version} ({args.instance}) on {args.host}:{args.port}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()


if __name__ == "__main__":
    main()
