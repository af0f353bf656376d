"""Local stand-ins for the public images docker-compose.yml names, built without a registry.

This machine reaches package registries only, so ``docker-compose up`` cannot pull
``redis:7`` or ``minio/minio``. ``ensure_standins()`` builds images under those names:

- ``conveyor-standin/debian:bookworm``: ``debootstrap --variant=minbase bookworm``
  imported with ``docker import`` (the rootfs tarball is cached in ``CACHE_DIR``), with the
  host's CA certificates so apt and pip work behind this machine's TLS proxy;
- ``python:3.12-slim``, ``redis:7``, ``haproxy:2.8`` (Debian's packages on that base),
  ``minio/minio`` (moto's S3 server) and ``minio/mc`` (the few ``mc`` commands compose
  runs), from the Dockerfiles in ``images/``;
- ``busybox:1.36``, the job image of the cluster examples, from the host's static busybox.

Each image carries a label with a digest of its inputs; one that is present with the
current digest is not rebuilt, so only the first run on a machine pays for the builds. A
tag present WITHOUT the label is a real upstream image and is left alone. A build that
fails raises RuntimeError with the last lines of its log: a failing test, never a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.services import ensure_busybox_image

IMAGES = Path(__file__).resolve().parent / "images"
CACHE_DIR = Path(os.environ.get("CONVEYOR_STANDIN_CACHE", "/var/cache/conveyor-standins"))
BASE = "conveyor-standin/debian:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
LABEL = "conveyor.standin.digest"
# tag -> directory under images/, in build order (later ones build FROM earlier ones)
STANDINS: dict[str, str] = {
    "python:3.12-slim": "python",
    "redis:7": "redis",
    "haproxy:2.8": "haproxy",
    "minio/minio:latest": "minio",
    "minio/mc:latest": "mc",
}
JOB_IMAGE = "busybox:1.36"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _run(argv: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{_tail(result.stdout + result.stderr)}")
    return result


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _base_digest() -> str:
    return _digest(SUITE.encode(), MIRROR.encode(), HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b"")


def _dir_digest(directory: Path, parent: str) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return _digest(parent.encode(), *(f"{p.relative_to(directory)}:{p.stat().st_mode & 0o111}".encode() + p.read_bytes()
                                      for p in files))


def _label(tag: str) -> str | None:
    """The stand-in digest label of ``tag``; "" for a real image; None when absent."""
    result = subprocess.run(["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', tag],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return "" if value in ("", "<no value>") else value


def _add_host_certificates(root: Path) -> None:
    """Copy the host's CA bundle in, as one file per certificate so that the image's own
    update-ca-certificates (run when ca-certificates is installed) keeps them."""
    if not HOST_CA_BUNDLE.exists():
        return
    target = root / "usr/local/share/ca-certificates/host"
    target.mkdir(parents=True, exist_ok=True)
    marker = "-----END CERTIFICATE-----"
    for index, block in enumerate(HOST_CA_BUNDLE.read_text().split(marker)):
        body = block[block.find("-----BEGIN CERTIFICATE-----"):] if "-----BEGIN" in block else ""
        if body:
            (target / f"host-{index:04d}.crt").write_text(body + marker + "\n")
    (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOST_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")


def _rootfs_tarball(digest: str) -> Path:
    """The minbase rootfs as a tarball, from the cache or a fresh debootstrap."""
    tarball = CACHE_DIR / f"debian-{SUITE}-minbase-{digest}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "rootfs"
        _run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR], "debootstrap", timeout=900)
        _add_host_certificates(root)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True)
        partial = tarball.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], "tar of the rootfs")
        partial.rename(tarball)
    return tarball


def _ensure_base() -> str:
    digest = _base_digest()
    if _label(BASE) == digest:
        return digest
    tarball = _rootfs_tarball(digest)
    with open(tarball, "rb") as stream:
        _run(["docker", "import", "--change", f"LABEL {LABEL}={digest}", "--change", 'CMD ["bash"]',
              "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "-", BASE], f"docker import of {BASE}", stdin=stream, timeout=600)
    return digest


def ensure_standins(docker_client) -> list[str]:
    """Build (or find) every stand-in; returns the tags that were built this time."""
    built: list[str] = []
    parent = _ensure_base()
    for tag, name in STANDINS.items():
        directory = IMAGES / name
        digest = _dir_digest(directory, parent)
        current = _label(tag)
        if current == "":
            continue  # a real upstream image: keep it
        if current != digest:
            _run(["docker", "build", "--label", f"{LABEL}={digest}", "-t", tag, str(directory)],
                 f"docker build of the {tag} stand-in", env={**os.environ, "DOCKER_BUILDKIT": "0"}, timeout=1200)
            built.append(tag)
        if name == "python":
            parent = digest  # images built FROM it change with it
    if _label(JOB_IMAGE) is None:
        _run(["docker", "tag", ensure_busybox_image(docker_client), JOB_IMAGE], f"docker tag {JOB_IMAGE}")
        built.append(JOB_IMAGE)
    return built
