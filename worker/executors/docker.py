"""The Docker executor: each step runs in its own hardened, labelled container.

The job workspace (a host directory) is bind-mounted at ``/workspace`` and the job's
scripts directory read-only at ``/conveyor/scripts``; the step runs
``/bin/sh -e /conveyor/scripts/step-NNN.sh`` with the step env as the container env.
The engine must see the worker's filesystem (a local socket, or a remote engine sharing
the same paths), since both mounts are host paths.

Every job gets a bridge network of its own (``JobSpec.network == "isolated"``), created
by ``prepare`` and labelled like the containers: Docker isolates user-defined bridges
from each other (its DOCKER-ISOLATION iptables chains), so a job cannot reach another
job's containers, not even by IP, while the steps (and later the sidecars) of one job
reach each other.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount, Ulimit

from shared.hardening import DEFAULT_CAP_DROP
from worker.executors import hand_over
from worker.executors.contract import (
    ISOLATED_NETWORK,
    InfrastructureError,
    JobSpec,
    LogLine,
    Reason,
    StepHandle,
    StepOutcome,
    StepSpec,
    Stream,
    classify,
)
from worker.executors.support import (
    DEFAULT_MAX_LINE_CHARS,
    JobDirectories,
    LogPump,
    resolve_working_directory,
)
from worker.executors.engine_paths import check_engine_sees
from worker.executors.scripts import SHELL, script_name, write_script
from worker import metrics

log = logging.getLogger(__name__)

WORKSPACE_MOUNT = "/workspace"
SCRIPTS_MOUNT = "/conveyor/scripts"

LABEL_RUN = "conveyor.run"
LABEL_JOB = "conveyor.job"
LABEL_STEP = "conveyor.step"
LABEL_STEP_INDEX = "conveyor.step_index"
LABEL_WORKER = "conveyor.worker"

DEFAULT_ENGINE_TIMEOUT = 60.0
# A log follower and a waiter per running step, plus kills and cleanups: more than
# docker-py's default pool of 10 connections for a worker running several jobs.
POOL_SIZE = 32
_ENGINE_DOWN = (requests.exceptions.ConnectionError, docker.errors.DockerException)
# How long cleanup waits for a removal another thread (or engine) already started, and
# for a network's last endpoint to go after its containers were removed.
REMOVAL_WAIT = 30.0


def connect(timeout: float | None = None) -> docker.DockerClient:
    """A client for the engine of ``DOCKER_HOST`` (or the local socket), pinged once.

    Raises InfrastructureError (one line) when no engine answers within ``timeout``
    seconds (default ``DEFAULT_ENGINE_TIMEOUT``).
    """
    try:
        client = docker.from_env(timeout=timeout or DEFAULT_ENGINE_TIMEOUT, max_pool_size=POOL_SIZE)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise InfrastructureError("no Docker engine answered: " + " ".join(str(exc).split())) from exc
    return client


@contextmanager
def _engine(action: str) -> Iterator[None]:
    """Turn engine failures into InfrastructureError; NotFound passes for callers to judge.

    Every call is also counted (`conveyor_container_operations_total{op,outcome}`), `op`
    being the action's verb (create, start, stop, remove, ...).
    """
    op = action.split()[0]
    try:
        yield
    except docker.errors.NotFound:
        metrics.container_op(op, "not_found")
        raise
    except _ENGINE_DOWN as exc:
        metrics.container_op(op, "error")
        raise InfrastructureError(f"docker engine failed to {action}: {exc}") from exc
    metrics.container_op(op, "ok")


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:limit]


def _key(job: JobSpec) -> tuple[str, str, str]:
    """What one executor keeps per job: two workers' jobs of the same run and name (two
    executors in one process, in tests) must not share a network or a cleanup."""
    return (job.worker_name, job.run_id, job.job)


def _container_user(user: str) -> str:
    """A bare uid with its own gid: the engine would give it gid 0 (root's group) unless
    the image lists the uid; the workspace is handed to the same pair."""
    return f"{user}:{user}" if user.isdigit() else user


def _message(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc)


class DockerStepHandle(StepHandle):
    """A step running in container ``container_id``."""

    def __init__(self, job: JobSpec, step: StepSpec) -> None:
        super().__init__(job, step)
        self.container_id: str | None = None


# Logs up to this size are re-read after the follow stream ends (see _follow).
_RECHECK_LIMIT = 8 * 1024 * 1024


class DockerExecutor:
    """Runs each step in a container of the step's image. Thread-safe per handle."""

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        scripts_root: Path | None = None,
        cap_drop: Sequence[str] = DEFAULT_CAP_DROP,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
    ) -> None:
        self._client = client if client is not None else connect()
        self._api = self._client.api
        self._dirs = JobDirectories(scripts_root)
        self._cap_drop = list(cap_drop)
        self._max_line_chars = max_line_chars
        self._containers: dict[tuple[str, str, str], set[str]] = {}
        # The job's own network: _key(job) -> (name, id).
        self._networks: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._handed_over: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._init: bool | None = None

    # -- job lifecycle -------------------------------------------------------------------

    def prepare(self, job: JobSpec) -> None:
        """Create the job's scripts directory and network; give the workspace to
        ``job.user``. Idempotent (``start`` calls it too)."""
        self._dirs.ensure(job)
        key = _key(job)
        with self._lock:
            fresh = key not in self._handed_over
            self._handed_over.add(key)
        if fresh and job.user is not None:
            user = _container_user(job.user)
            # A name is resolved in the image, which the host cannot know: the workspace
            # stays the worker's then (docs/executors.md).
            if re.fullmatch(r"[0-9]+:[0-9]+", user):
                hand_over(job.workspace, user)
        self._network_of(job)

    def _network_of(self, job: JobSpec) -> str:
        """The network the job's containers join, created on first use when isolated."""
        if job.network != ISOLATED_NETWORK:
            return job.network
        key = _key(job)
        with self._lock:
            known = self._networks.get(key)
        if known is not None:
            return known[0]
        # One thread per job calls this; two jobs never share a key.
        name = "-".join(["conveyor", _slug(job.run_id, 24), _slug(job.job, 24), secrets.token_hex(3)])
        try:
            with _engine("create a network"):
                created = self._api.create_network(name, driver="bridge", labels=self._job_labels(job),
                                                   check_duplicate=True)
        except InfrastructureError as exc:
            if "pool" in str(exc).lower():
                # Docker's default address pools hold about 30 bridge networks in all.
                raise InfrastructureError(
                    f"{exc} (each job has a network of its own: widen the engine's "
                    "default-address-pools in daemon.json or lower the worker's concurrency)") from exc
            raise
        except docker.errors.NotFound as exc:
            raise InfrastructureError(f"cannot create the job's network: {_message(exc)}") from exc
        with self._lock:
            self._networks[key] = (name, created["Id"])
        return name

    @staticmethod
    def _job_labels(job: JobSpec) -> dict[str, str]:
        return {LABEL_RUN: job.run_id, LABEL_JOB: job.job, LABEL_WORKER: job.worker_name}

    def cleanup(self, job: JobSpec) -> None:
        """Force-remove every container of the job, then its network and its scripts;
        keep the workspace.

        Something already gone (removed by a concurrent cleanup, the reaper, an operator)
        counts as removed. Goes on past individual failures so one bad container does not
        leak the others; raises InfrastructureError at the end if the engine failed.
        """
        key = _key(job)
        with self._lock:
            ids = self._containers.pop(key, set())
            network = self._networks.pop(key, None)
            self._handed_over.discard(key)
        networks = {network[1]} if network is not None else set()
        failures: list[str] = []
        for kind, listing, found in (("containers", self._labelled, ids),
                                     ("networks", self._labelled_networks, networks)):
            try:
                with _engine(f"list {kind}"):
                    for summary in listing(job.worker_name, job.run_id):
                        if (summary.get("Labels") or {}).get(LABEL_JOB) == job.job:
                            found.add(summary["Id"])
            except InfrastructureError as exc:
                failures.append(str(exc))
        failures.extend(f for f in map(self._remove_container, ids) if f)
        failures.extend(f for f in map(self._remove_network, networks) if f)
        self._dirs.remove(job)
        if failures:
            raise InfrastructureError("; ".join(failures))

    def _remove_container(self, container_id: str) -> str | None:
        """Force-remove a container; None when it is gone, else why not."""
        try:
            with _engine("remove a container"):
                self._api.remove_container(container_id, force=True, v=True)
            return None
        except docker.errors.NotFound:
            return None
        except InfrastructureError as exc:
            cause = exc.__cause__
            # 409: someone else's removal of it is under way (two cleanups, the reaper).
            if isinstance(cause, docker.errors.APIError) and cause.status_code == 409:
                if self._wait_gone(lambda: self._api.inspect_container(container_id)):
                    return None
            return str(exc)

    def _remove_network(self, network_id: str) -> str | None:
        """Remove a network; None when it is gone, else why not.

        Retried for a while: an engine can report an endpoint of a container it has
        just removed (a conflict), which goes away by itself.
        """
        deadline = time.monotonic() + REMOVAL_WAIT
        while True:
            try:
                with _engine("remove a network"):
                    self._api.remove_network(network_id)
                return None
            except docker.errors.NotFound:
                return None
            except InfrastructureError as exc:
                cause = exc.__cause__
                retryable = isinstance(cause, docker.errors.APIError) and cause.status_code in (403, 409)
                if not retryable or time.monotonic() > deadline:
                    return str(exc)
                time.sleep(0.2)

    @staticmethod
    def _wait_gone(inspect: Any) -> bool:
        """Poll ``inspect`` until it raises NotFound (True) or REMOVAL_WAIT passes."""
        deadline = time.monotonic() + REMOVAL_WAIT
        while time.monotonic() < deadline:
            try:
                inspect()
            except docker.errors.NotFound:
                return True
            except _ENGINE_DOWN:
                return False
            time.sleep(0.1)
        return False

    def check_data_dir(self, data_dir: Path) -> None:
        """Prove the engine bind-mounts ``data_dir`` as this process sees it (see
        ``worker.executors.engine_paths``); the worker refuses to start otherwise."""
        check_engine_sees(self._api, data_dir)

    def reap_orphans(self, worker_name: str) -> int:
        """Force-remove containers, then networks, labelled with this worker that this
        instance did not create; returns how many were removed."""
        with self._lock:
            ours = set().union(*self._containers.values()) if self._containers else set()
            our_networks = {network_id for _, network_id in self._networks.values()}
        removed = 0
        with _engine("list orphan containers"):
            orphans = [c["Id"] for c in self._labelled(worker_name) if c["Id"] not in ours]
        for container_id in orphans:
            # Gone meanwhile (a cleanup got there first) counts as removed.
            failure = self._remove_container(container_id)
            if failure is not None:
                raise InfrastructureError(failure)
            removed += 1
        with _engine("list orphan networks"):
            orphans = [n["Id"] for n in self._labelled_networks(worker_name) if n["Id"] not in our_networks]
        for network_id in orphans:
            failure = self._remove_network(network_id)
            if failure is not None:
                raise InfrastructureError(failure)
            removed += 1
        return removed

    def _labelled_networks(self, worker_name: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Summaries (``Id``, ``Labels``) of this worker's networks, one engine call."""
        labels = [f"{LABEL_WORKER}={worker_name}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN}={run_id}")
        return self._api.networks(filters={"label": labels})

    def _labelled(self, worker_name: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Summaries (``Id``, ``Labels``) of this worker's containers, one engine call.

        The low-level list on purpose: ``client.containers.list`` inspects each container
        afterwards, and one removed meanwhile by another job's cleanup (two jobs of a run
        finishing together) raised NotFound, which left this job's containers behind.
        """
        labels = [f"{LABEL_WORKER}={worker_name}"]
        if run_id is not None:
            labels.append(f"{LABEL_RUN}={run_id}")
        return self._api.containers(all=True, filters={"label": labels})

    # -- steps ---------------------------------------------------------------------------

    def start(self, job: JobSpec, step: StepSpec) -> DockerStepHandle:
        """Get the image, create the step's container and start it.

        Image and working-directory problems become the handle's outcome; engine failures
        raise InfrastructureError; a working_directory escaping the workspace ValueError.
        """
        handle = DockerStepHandle(job, step)
        # Checked first: a refused path must not leave a network for nobody to clean up.
        host_cwd = resolve_working_directory(job.workspace, step.working_directory)
        self.prepare(job)
        scripts = self._dirs.ensure(job) / "scripts"
        write_script(scripts, step.index, step.script)
        if not host_cwd.is_dir():
            handle.fail_early(
                "script_failure",
                f"working directory {step.working_directory!r} does not exist in the workspace",
            )
            return handle
        if not self._ensure_image(handle):
            return handle
        options = self._container_options(job, step, scripts, host_cwd)
        try:
            with _engine("create a container"):
                container = self._client.containers.create(**options)
        except docker.errors.ImageNotFound as exc:
            # Removed between the check and the create.
            handle.fail_early("image_pull_failure", f"cannot use image {step.image!r}: {_message(exc)}")
            return handle
        except docker.errors.NotFound as exc:
            # e.g. the configured network does not exist: the worker's setup, not the step.
            raise InfrastructureError(f"cannot create the step's container: {_message(exc)}") from exc
        handle.container_id = container.id
        with self._lock:
            self._containers.setdefault(_key(job), set()).add(container.id)
        try:
            with _engine("start a container"):
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    if not self._is_image_fault(exc):
                        raise
                    # e.g. the image has no /bin/sh: the step cannot run, retrying won't help.
                    handle.fail_early(
                        "script_failure", f"cannot run the step in {step.image!r}: {_message(exc)}", 127
                    )
                    return handle
        except docker.errors.NotFound as exc:
            raise InfrastructureError(f"cannot start the step's container: {_message(exc)}") from exc
        handle.started = time.monotonic()
        return handle

    def tail(self, handle: StepHandle) -> Iterator[LogLine]:
        """stdout and stderr lines as the engine logs them; ends when the container stops."""
        assert isinstance(handle, DockerStepHandle)
        if handle.early_outcome is not None:
            yield from handle.early_lines
            return
        pump = LogPump(self._max_line_chars)
        # One follow stream per output keeps them apart without attach's race (output
        # written between its log replay and its live attach is lost) or its back-pressure
        # (an attached client that reads slowly blocks the step's writes).
        for stream in ("stdout", "stderr"):
            pump.add(stream, self._follow(handle.container_id or "", stream))  # type: ignore[arg-type]
        yield from pump.lines()

    def _follow(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in self._api.logs(
                container_id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                stream=True,
                follow=True,
            ):
                received += len(chunk)
                yield chunk
            # The engine can end a follow stream before it has delivered a final line that
            # has no newline (seen with the json-file driver): read the stored log once
            # more and hand over whatever the stream missed, so nothing is silently cut.
            if received <= _RECHECK_LIMIT:
                stored = self._api.logs(
                    container_id, stdout=stream == "stdout", stderr=stream == "stderr", stream=False, follow=False
                )
                if len(stored) > received:
                    yield stored[received:]
        except docker.errors.NotFound:
            return  # removed by cleanup: nothing more will come

    def wait(self, handle: StepHandle) -> StepOutcome:
        """Wait for the container to exit, stopping it at the step timeout; map the result."""
        assert isinstance(handle, DockerStepHandle)
        if handle.outcome is not None:
            return handle.outcome
        container_id = handle.container_id
        assert container_id is not None
        result: dict[str, Any] | None = None
        while result is None:
            remaining = handle.remaining()
            if remaining <= 0:
                self.kill(handle, "timeout")
                result = self._wait_exit(container_id, None)
            else:
                result = self._wait_exit(container_id, remaining)
        exit_code: int | None = result.get("StatusCode")
        oom_killed = False
        try:
            with _engine("inspect a container"):
                state = self._api.inspect_container(container_id)["State"]
            exit_code = state.get("ExitCode", exit_code)
            oom_killed = bool(state.get("OOMKilled"))
        except docker.errors.NotFound:
            pass  # removed by a concurrent cleanup; the wait result is all there is
        if exit_code in (137, 143) and handle.kill_reason is None and not oom_killed:
            self._raise_if_killed_from_outside(handle, container_id)
        with handle.lock:
            handle.finished.set()
            if handle.outcome is None:
                handle.outcome = StepOutcome(
                    exit_code,
                    classify(exit_code, handle.kill_reason, oom_killed),
                    time.monotonic() - handle.started,
                )
            return handle.outcome

    def _raise_if_killed_from_outside(self, handle: DockerStepHandle, container_id: str) -> None:
        """A SIGTERM/SIGKILL exit we did not ask for: if the engine sent it (it stops every
        container when it shuts down; `docker stop` by an operator looks the same), the step
        did not fail, its machine did: raise InfrastructureError so the job is retried."""
        since = time.time() - (time.monotonic() - handle.started) - 1
        try:
            events = self._api.events(since=since, until=time.time() + 0.5, decode=True,
                                      filters={"container": container_id, "event": "kill"})
            killed = next(iter(events), None) is not None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise InfrastructureError(f"the step's container was stopped and the engine stopped answering: {exc}") from exc
        if killed:
            raise InfrastructureError("the step's container was stopped by the Docker engine "
                                      "(engine shutdown or `docker stop`), not by its script")

    def _wait_exit(self, container_id: str, timeout: float | None) -> dict[str, Any] | None:
        """The engine's wait result, or None when ``timeout`` passed first."""
        try:
            return self._api.wait(container_id, timeout=timeout)
        except requests.exceptions.ReadTimeout:
            return None
        except requests.exceptions.ConnectionError as exc:
            # Over a unix socket docker-py reports a read timeout as a ConnectionError.
            if timeout is not None and "timed out" in str(exc).lower():
                return None
            raise InfrastructureError(f"docker engine failed to wait for a container: {exc}") from exc
        except docker.errors.NotFound:
            return {"StatusCode": None}
        except docker.errors.DockerException as exc:
            raise InfrastructureError(f"docker engine failed to wait for a container: {exc}") from exc

    def kill(self, handle: StepHandle, reason: Reason = "cancelled") -> None:
        """``docker stop`` with the job's grace: SIGTERM, grace, SIGKILL; blocks until stopped."""
        assert isinstance(handle, DockerStepHandle)
        if not handle.claim_kill(reason) or handle.container_id is None:
            return
        # The engine takes whole seconds; round up so the step gets at least its grace.
        grace = math.ceil(handle.job.kill_grace)
        try:
            with _engine("stop a container"):
                self._api.stop(handle.container_id, timeout=grace)
        except docker.errors.NotFound:
            pass

    # -- helpers -------------------------------------------------------------------------

    def _ensure_image(self, handle: DockerStepHandle) -> bool:
        """Make the step's image present per the pull policy; False (and an outcome) if not."""
        image, policy = handle.step.image, handle.job.pull_policy
        if policy != "always":
            try:
                self._client.images.get(image)
                return True
            except docker.errors.NotFound:
                if policy == "never":
                    handle.fail_early(
                        "image_pull_failure",
                        f"image {image!r} is not on this worker and pull_policy is 'never'",
                    )
                    return False
            except docker.errors.APIError as exc:
                if self._is_server_error(exc):
                    raise InfrastructureError(f"docker engine failed to look up {image!r}: {exc}") from exc
                handle.fail_early("image_pull_failure", f"invalid image {image!r}: {_message(exc)}")
                return False
            except _ENGINE_DOWN as exc:
                raise InfrastructureError(f"docker engine failed to look up {image!r}: {exc}") from exc
        try:
            self._client.images.pull(image)
        except docker.errors.APIError as exc:
            # Registry failures (unknown repository, auth, network) reach us as API errors
            # of every status; they are the image's problem, not the engine's.
            handle.fail_early("image_pull_failure", f"cannot pull image {image!r}: {_message(exc)}")
            return False
        except _ENGINE_DOWN as exc:
            raise InfrastructureError(f"docker engine failed to pull {image!r}: {exc}") from exc
        return True

    @staticmethod
    def _is_server_error(exc: docker.errors.APIError) -> bool:
        return exc.status_code is None or exc.status_code >= 500

    @staticmethod
    def _is_image_fault(exc: docker.errors.APIError) -> bool:
        """The runtime could not exec the step's shell in the image (e.g. no /bin/sh)."""
        text = _message(exc).lower()
        return "executable file not found" in text or "no such file or directory" in text

    def _has_init(self) -> bool:
        """Whether the engine has docker-init (tini), so a step's shell is not PID 1.

        A shell as PID 1 ignores SIGTERM, which would turn every stop into a SIGKILL
        after the grace period.
        """
        if self._init is None:
            with _engine("report its version"):
                version = self._client.version()
                components = version.get("Components") or []
                found = any(c.get("Name") == "docker-init" for c in components)
                if not found:
                    commit = (self._client.info().get("InitCommit") or {}).get("ID", "N/A")
                    found = commit not in ("", "N/A")
            self._init = found
        return self._init

    def _container_options(
        self, job: JobSpec, step: StepSpec, scripts: Path, host_cwd: Path
    ) -> dict[str, Any]:
        workspace = job.workspace.resolve()
        relative = host_cwd.relative_to(workspace).as_posix()
        limits = step.limits
        options: dict[str, Any] = {
            "image": step.image,
            "entrypoint": [SHELL, "-e"],
            "command": [f"{SCRIPTS_MOUNT}/{script_name(step.index)}"],
            "environment": dict(step.env),
            "working_dir": str(PurePosixPath(WORKSPACE_MOUNT) / relative),
            # Mounts, not `volumes`: for a host path it cannot see, the engine then refuses
            # the container (an infrastructure error) instead of creating an empty
            # directory and letting the step fail as if the user's script were wrong.
            "mounts": [
                Mount(WORKSPACE_MOUNT, str(workspace), type="bind"),
                Mount(SCRIPTS_MOUNT, str(scripts.resolve()), type="bind", read_only=True),
            ],
            "labels": {
                LABEL_RUN: job.run_id,
                LABEL_JOB: job.job,
                LABEL_STEP: step.name,
                LABEL_STEP_INDEX: str(step.index),
                LABEL_WORKER: job.worker_name,
            },
            "name": "-".join(
                ["conveyor", _slug(job.run_id), _slug(job.job), str(step.index), secrets.token_hex(3)]
            ),
            "detach": True,
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "cap_drop": self._cap_drop,
            "network_mode": self._network_of(job),
            "read_only": job.read_only_root,
        }
        if self._has_init():
            options["init"] = True
        if limits.pids is not None:
            options["pids_limit"] = limits.pids
        if limits.memory_bytes is not None:
            # memswap equal to memory: no swap, so a step over its limit is OOM-killed
            # (and reported as `oom`) instead of crawling through swap until its timeout.
            options["mem_limit"] = limits.memory_bytes
            options["memswap_limit"] = limits.memory_bytes
        if limits.cpus is not None:
            options["nano_cpus"] = int(limits.cpus * 1e9)
        if job.read_only_root:
            options["tmpfs"] = {"/tmp": "rw,nosuid,nodev"}
        if job.user is not None:
            # A uid without a group would get gid 0 (root's group) from the engine unless
            # the image lists it; the group is the uid's own, as the workspace's is.
            options["user"] = _container_user(job.user)
        if job.max_file_bytes is not None:
            # No single file past the workspace's size, anywhere in the container: caught
            # at once by the kernel (SIGXFSZ), where the job runner's size check is periodic.
            options["ulimits"] = [Ulimit(name="fsize", soft=job.max_file_bytes, hard=job.max_file_bytes)]
        return options
