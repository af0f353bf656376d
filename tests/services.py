"""Real services for tests: redis-server on a free port, the locally built busybox image.

Every helper FAILS the test when its service is missing; nothing here skips.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


REDIS_SERVER = "/usr/bin/redis-server"
BUSYBOX_IMAGE = "conveyor-test/busybox"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start_redis(tmp: Path, *extra: str, port: int | None = None) -> tuple[subprocess.Popen, int]:
    """Start a throwaway redis-server in its own session; RuntimeError (a failing test, never a
    skip) if it does not answer. Benchmarks use it too."""
    port = port or free_port()
    try:
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        raise RuntimeError(f"cannot start {REDIS_SERVER}: {exc}") from None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 10 s")


def ensure_busybox_image(docker_client) -> str:
    """`conveyor-test/busybox`, built from the host's static busybox, never pulled."""
    import docker.errors

    try:
        docker_client.images.get(BUSYBOX_IMAGE)
        return BUSYBOX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        (root / "tmp").mkdir()
        os.chmod(root, 0o755)
        os.chmod(root / "bin", 0o755)
        os.chmod(root / "tmp", 0o1777)
        shutil.copy2(busybox, root / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "--change", "ENV PATH=/bin", "-", BUSYBOX_IMAGE],
                       stdin=tar.stdout, check=True, capture_output=True)
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0
    return BUSYBOX_IMAGE


# Small parts keep the streaming tests quick and make "bounded memory" measurable; moto
# enforces S3's 5 MiB minimum part size unless told otherwise (S3_UPLOAD_PART_MIN_SIZE).
TEST_PART_SIZE = 256 * 1024


def start_moto(tmp: Path, port: int | None = None, host: str = "127.0.0.1") -> tuple[subprocess.Popen, int]:
    """A moto S3 server (the real S3 API over HTTP) on `port` (a free one by default)."""
    exe = shutil.which("moto_server")
    if exe is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    port = port or free_port()
    env = dict(os.environ, S3_UPLOAD_PART_MIN_SIZE=str(TEST_PART_SIZE))
    log = open(tmp / f"moto-{port}.log", "ab")
    proc = subprocess.Popen([exe, "-H", host, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    if not wait_for_port(port, timeout=20, host=host):
        proc.kill()
        raise RuntimeError(f"moto_server did not listen on port {port} (exit code {proc.poll()})")
    return proc, port
