#!/usr/bin/env python3
"""Start and stop demo-app instances: the `command` provider's scripts in the examples.

    ctl.py start INSTANCE VERSION PORT [HOST]   replace INSTANCE with VERSION on PORT; return once it listens
    ctl.py stop INSTANCE                        stop INSTANCE (success when it is not running)

State (pid and log per instance) lives in $DEMO_STATE_DIR (default /tmp/conveyor-demo).
Exit 75 (temporary failure) when the port is still held by something else: the
deployment engine retries that with backoff.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EX_TEMPFAIL = 75


def state_dir() -> Path:
    path = Path(os.environ.get("DEMO_STATE_DIR", "/tmp/conveyor-demo"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie we are not the parent of would linger; /proc tells
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def stop(instance: str) -> int:
    pidfile = state_dir() / f"{instance}.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return 0
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return 0


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def start(instance: str, version: str, port: int, host: str = "127.0.0.1") -> int:
    stop(instance)
    deadline = time.monotonic() + 5
    while _listening(host, port):
        if time.monotonic() > deadline:
            print(f"port {port} is still in use by something else", file=sys.stderr)
            return EX_TEMPFAIL
        time.sleep(0.05)
    log = open(state_dir() / f"{instance}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "app.py"), "--host", host, "--port", str(port), "--version", version,
         "--instance", instance],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    (state_dir() / f"{instance}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"{instance} exited with {proc.returncode}; see {state_dir() / (instance + '.log')}", file=sys.stderr)
            return 1
        if _listening(host, port):
            print(f"{instance} {version} listening on {host}:{port} (pid {proc.pid})")
            return 0
        time.sleep(0.05)
    print(f"{instance} did not listen on {port} within 10 s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "start":
        return start(argv[1], argv[2], int(argv[3]), *(argv[4:5]))
    if len(argv) == 2 and argv[0] == "stop":
        return stop(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
