"""Does the Docker engine see the worker's data directory at the same path?

Step containers get the job's workspace and scripts as bind mounts named by *host* path.
A worker that itself runs in a container (the compose cluster) talks to the host's
engine through ``docker.sock``, so its data directory must be bind-mounted at the same
path on both sides; otherwise every step fails with "cannot open
/conveyor/scripts/step-000.sh", which looks like the user's fault.

``check_engine_sees`` proves the mount at worker start: it writes a marker file with a
random token into the data directory, creates (never starts) a container of a tiny local
image with that directory bind-mounted read-only, and reads the marker back through the
engine's archive API. No image is pulled and nothing runs.
"""

from __future__ import annotations

import io
import secrets
import tarfile
from pathlib import Path

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount

from worker.executors.contract import InfrastructureError

# An image with a single empty directory, imported from memory when missing: the probe
# container is created, never started, so it needs no binary at all.
PROBE_IMAGE = "conveyor/engine-probe"
PROBE_TAG = "1"
_MARKER_PREFIX = ".conveyor-engine-probe-"
_ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def _probe_image_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        entry = tarfile.TarInfo("probe")
        entry.type = tarfile.DIRTYPE
        entry.mode = 0o755
        archive.addfile(entry)
    return buffer.getvalue()


def ensure_probe_image(api: docker.APIClient) -> str:
    """The probe image's reference, imported into the engine first if it lacks it."""
    reference = f"{PROBE_IMAGE}:{PROBE_TAG}"
    try:
        api.inspect_image(reference)
    except docker.errors.ImageNotFound:
        api.import_image_from_data(_probe_image_tar(), repository=PROBE_IMAGE, tag=PROBE_TAG)
    return reference


def _read_through_engine(api: docker.APIClient, image: str, directory: Path, name: str) -> bytes | None:
    """The file ``directory/name`` as a container with ``directory`` bind-mounted sees it."""
    host_config = api.create_host_config(
        mounts=[Mount(str(directory), str(directory), type="bind", read_only=True)],
        network_mode="none",
    )
    container = api.create_container(
        image, command=["/probe"], host_config=host_config, labels={"conveyor.probe": "engine-paths"}
    )
    try:
        try:
            stream, _ = api.get_archive(container["Id"], str(directory / name))
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            member = archive.extractfile(archive.getmembers()[0])
            return member.read() if member is not None else None
    finally:
        api.remove_container(container["Id"], force=True)


def check_engine_sees(api: docker.APIClient, data_dir: Path) -> None:
    """Raise InfrastructureError (one line: which path, why) unless the engine's view of
    ``data_dir`` is this process's ``data_dir``."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = data_dir / f"{_MARKER_PREFIX}{token}"
    hint = (
        "mount it at the same path in the worker's container and on the engine's host "
        "(compose: CONVEYOR_HOST_DATA_DIR), or set CONVEYOR_DATA_DIR to a path that is"
    )
    marker.write_text(token)
    try:
        image = ensure_probe_image(api)
        try:
            seen = _read_through_engine(api, image, data_dir, marker.name)
        except docker.errors.APIError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500:
                # e.g. "bind source path does not exist": the engine's host lacks the path.
                raise InfrastructureError(
                    f"the Docker engine cannot mount the data directory {data_dir}: "
                    f"{exc.explanation or exc}; {hint}"
                ) from exc
            raise
    except _ENGINE_ERRORS as exc:
        raise InfrastructureError(
            f"cannot check that the Docker engine sees the data directory {data_dir}: {exc}"
        ) from exc
    finally:
        marker.unlink(missing_ok=True)
    if seen != token.encode():
        raise InfrastructureError(
            f"the Docker engine sees a different directory at {data_dir} than this worker "
            f"(a probe file written here is {'missing' if seen is None else 'different'} there); {hint}"
        )
