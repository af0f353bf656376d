"""The `docker` provider: an instance is a container of the version's image, published on the instance's address.

On a bridge network (the default) the container's `port` is published on the instance's
address; on the host network (`network: host`) the app must listen on the instance's
port itself, which it gets in `$PORT` (as on Heroku or Cloud Run). `$PORT` is the
container port otherwise.

Containers are named after the environment and the instance (`conveyor-dep-<env>-<name>`)
so that `start` replaces a previous container deterministically and `stop` finds it
again after a worker restart. They are hardened like step containers (no new
privileges, the same dropped capabilities, an init process) and labelled with the
instance and version. `start` returns only once the container runs and its published
port accepts connections.
"""
from __future__ import annotations

import re
import socket
import time
from typing import Any

import docker
import docker.errors
import requests.exceptions

from deploy.providers.base import Instance, ProviderError, TransientProviderError
from shared.hardening import DEFAULT_CAP_DROP

LABEL_INSTANCE = "conveyor.deploy.instance"
LABEL_VERSION = "conveyor.deploy.version"
LABEL_SCOPE = "conveyor.deploy.environment"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10
_ENGINE_DOWN = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60]


class DockerProvider:
    """Containers of `image` (with `${VERSION}` substituted) exposing `port`."""

    def __init__(self, image: str, port: int, scope: str, docker_host: str | None = None,
                 client: docker.DockerClient | None = None, ready_timeout: float = READY_TIMEOUT_S,
                 network: str = "bridge") -> None:
        self.image_template = image
        self.port = port
        self.network = network
        self.scope = scope
        self.ready_timeout = ready_timeout
        self._client = client
        self._docker_host = docker_host

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = (docker.DockerClient(base_url=self._docker_host, timeout=60) if self._docker_host
                                else docker.from_env(timeout=60))
            except docker.errors.DockerException as exc:
                raise TransientProviderError(f"no Docker engine answered: {exc}") from exc
        return self._client

    def container_name(self, instance: Instance) -> str:
        return f"conveyor-dep-{_slug(self.scope)}-{_slug(instance.name)}"

    def image(self, version: str) -> str:
        return self.image_template.replace("${VERSION}", version)

    def start(self, instance: Instance, version: str) -> str:
        image = self.image(version)
        self._remove(instance)
        self._ensure_image(image)
        options: dict[str, Any] = {
            "image": image,
            "name": self.container_name(instance),
            "detach": True,
            "labels": {LABEL_INSTANCE: instance.name, LABEL_VERSION: version, LABEL_SCOPE: self.scope},
            "environment": {"CONVEYOR_DEPLOY_INSTANCE": instance.name, "CONVEYOR_DEPLOY_VERSION": version,
                            "PORT": str(self.port)},
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "cap_drop": list(DEFAULT_CAP_DROP),
            "init": True,
            # An instance that crashes comes back on its own; the health checks judge it meanwhile.
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
        }
        if self.network == "host":
            # No port mapping on the host network: the app listens on the instance's port, told by $PORT.
            options["network_mode"] = "host"
            options["environment"]["PORT"] = str(instance.port)
        else:
            options["network"] = self.network
            options["ports"] = {f"{self.port}/tcp": (_host_ip(instance.host), instance.port)}
        container = self._call("start a container", lambda: self.client.containers.run(**options))
        self._wait_ready(container, instance)
        return f"container {container.name} ({image}) listening on {instance.address}"

    def stop(self, instance: Instance) -> str:
        return "removed" if self._remove(instance) else ""

    # -- helpers -----------------------------------------------------------------------

    def _call(self, what: str, fn):
        try:
            return fn()
        except docker.errors.ImageNotFound as exc:
            raise ProviderError(f"cannot {what}: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            if exc.status_code is None or exc.status_code >= 500:
                raise TransientProviderError(f"docker engine failed to {what}: {exc.explanation or exc}") from exc
            raise ProviderError(f"cannot {what}: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, *_ENGINE_DOWN) as exc:
            raise TransientProviderError(f"docker engine failed to {what}: {exc}") from exc

    def _ensure_image(self, image: str) -> None:
        try:
            self._call("look up the image", lambda: self.client.images.get(image))
            return
        except ProviderError as exc:
            if isinstance(exc, TransientProviderError):
                raise
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            # Registry failures (unknown tag, auth, unreachable registry) reach us as API errors of every
            # status; like the step executor, count them against the image, not the engine.
            raise ProviderError(f"cannot pull {image}: {exc.explanation or exc}") from exc
        except (docker.errors.DockerException, *_ENGINE_DOWN) as exc:
            raise TransientProviderError(f"docker engine failed to pull {image}: {exc}") from exc

    def _remove(self, instance: Instance) -> bool:
        name = self.container_name(instance)
        try:
            container = self._call("find a container", lambda: self.client.containers.get(name))
        except ProviderError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return False
            raise
        try:
            self._call("stop a container", lambda: container.stop(timeout=STOP_GRACE_S))
            self._call("remove a container", lambda: container.remove(force=True, v=True))
        except ProviderError as exc:
            if isinstance(exc.__cause__, docker.errors.NotFound):
                return True
            raise
        return True

    def _wait_ready(self, container, instance: Instance) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self._call("inspect a container", container.reload)
            if container.status in ("exited", "dead"):
                logs = self._call("read logs", lambda: container.logs(tail=20)).decode("utf-8", "replace")
                raise ProviderError(f"container {container.name} exited at start: {logs.strip()[-1000:]}")
            if container.status == "running":
                try:
                    with socket.create_connection((instance.host, instance.port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.2)
        raise ProviderError(f"container {container.name} did not accept connections on {instance.address} "
                            f"within {self.ready_timeout:.0f}s")


def _host_ip(host: str) -> str:
    """Docker publishes on an IP; resolve a host name once."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host
