"""A Docker engine of the test's own, so that restarting it disturbs nobody else's tests."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.services import ensure_busybox_image


class OwnDockerd:
    """`dockerd` on a private socket, data root and exec root; no bridge, no iptables.

    It runs in a network namespace of its own (`unshare --net`): a second engine started with `--bridge none`
    in the host namespace deletes the host's `docker0`, breaking every other engine user.
    """

    def __init__(self) -> None:
        # Short: unix socket paths (ours and containerd's, under the exec root) max 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="cvd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "dockerd.log"

    def start(self, timeout: float = 60) -> None:
        """Start the engine and wait until it answers; FAIL the test if it does not."""
        import docker

        # `unshare --net`, not `ip netns exec`: the latter remounts /sys, hiding the cgroups.
        command = ["unshare", "--net", "dockerd", "-H", self.host, "--data-root", str(self.root / "data"),
                   "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"),
                   "--bridge", "none", "--iptables=false", "--ip-masq=false"]
        try:
            self.proc = subprocess.Popen(command, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                         start_new_session=True)
        except OSError as exc:
            pytest.fail(f"cannot start dockerd: {exc}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dockerd exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                docker.DockerClient(base_url=self.host, timeout=5).ping()
                return
            except Exception:
                time.sleep(0.2)
        pytest.fail(f"dockerd did not answer within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Stop the engine as `systemctl stop docker` does (SIGTERM: it stops its containers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def import_busybox(self) -> str:
        """The test image, imported into this engine (never pulled)."""
        import docker

        saved = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = self.host  # ensure_busybox_image runs `docker import`
        try:
            return ensure_busybox_image(docker.DockerClient(base_url=self.host, timeout=60))
        finally:
            if saved is None:
                del os.environ["DOCKER_HOST"]
            else:
                os.environ["DOCKER_HOST"] = saved

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
