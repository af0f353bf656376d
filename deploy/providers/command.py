"""The `command` provider: user commands start and stop instances.

Commands are split like a POSIX shell would split them (shlex) and run without a shell;
`${INSTANCE}`, `${VERSION}`, `${PORT}` and `${ADDRESS}` are substituted inside each
argument after splitting, so a value can never add arguments or shell syntax. Exit 0 is
success, exit 75 (EX_TEMPFAIL) a transient failure, anything else a permanent one.

Each command runs in its own session: the instance it starts must outlive the worker
that started it (a worker restart must not take production down with it). Output goes to
a file, not a pipe, so a backgrounded instance holding the output open cannot block us.

Commands never see the worker's environment (its broker and store passwords, its
secrets): only PATH and the locale, the `CONVEYOR_DEPLOY_*` values, the environment's
literal `env` and the worker variables its operator lists in `pass_env`. Their output is
capped and stripped of the worker's credentials before it is stored in a deployment event.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

from deploy.providers.base import Instance, ProviderError, TransientProviderError
from shared.redaction import redact, sensitive_values

EX_TEMPFAIL = 75
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
OUTPUT_LIMIT = 4000
_VARIABLE = re.compile(r"\$\{(INSTANCE|VERSION|PORT|ADDRESS)\}")
# What a command gets of the worker's environment: finding programs and the locale.
BASE_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def command_environment(values: Mapping[str, str], env: tuple[tuple[str, str], ...] = (),
                        pass_env: tuple[str, ...] = (), environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a provider or health command (see the module docstring)."""
    environ = os.environ if environ is None else environ
    result = {name: environ[name] for name in BASE_VARIABLES if name in environ}
    result.setdefault("PATH", DEFAULT_PATH)
    result.update(dict(env))
    result.update({name: environ[name] for name in pass_env if name in environ})
    result.update({f"CONVEYOR_DEPLOY_{key}": value for key, value in values.items()})
    return result


def stored_text(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Text about a command as a deployment event keeps it: the worker's credentials masked
    (a command may have found them elsewhere than its environment, e.g. in /proc)."""
    return redact(text, sensitive_values(os.environ if environ is None else environ))


def render(template: str, values: Mapping[str, str]) -> list[str]:
    """argv of a command template: shlex-split first, then each `${NAME}` replaced."""
    try:
        argv = shlex.split(template)
    except ValueError as exc:
        raise ProviderError(f"cannot split command {template!r}: {exc}") from None
    if not argv:
        raise ProviderError("empty command")
    return [_VARIABLE.sub(lambda m: values[m.group(1)], arg) for arg in argv]


class CommandProvider:
    """Runs `start`/`stop` templates in `workdir` (the run's source directory)."""

    def __init__(self, start: str, stop: str | None, workdir: Path | None = None,
                 start_timeout: float = START_TIMEOUT_S, stop_timeout: float = STOP_TIMEOUT_S,
                 env: tuple[tuple[str, str], ...] = (), pass_env: tuple[str, ...] = ()) -> None:
        self.start_template = start
        self.stop_template = stop
        self.workdir = workdir
        self.env = env
        self.pass_env = pass_env
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

    def start(self, instance: Instance, version: str) -> str:
        return self._run(self.start_template, instance, version, self.start_timeout)

    def stop(self, instance: Instance) -> str:
        if not self.stop_template:
            return ""
        return self._run(self.stop_template, instance, "", self.stop_timeout)

    def _run(self, template: str, instance: Instance, version: str, timeout: float) -> str:
        values = {"INSTANCE": instance.name, "VERSION": version, "PORT": str(instance.port), "ADDRESS": instance.address}
        argv = render(template, values)
        env = command_environment(values, self.env, self.pass_env)
        cwd = self.workdir if self.workdir is not None and self.workdir.is_dir() else None
        with tempfile.TemporaryFile() as output:
            try:
                proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True)
            except FileNotFoundError as exc:
                raise ProviderError(f"{argv[0]}: command not found ({exc.strerror})") from None
            except PermissionError as exc:
                raise ProviderError(f"{argv[0]}: not executable ({exc.strerror})") from None
            except subprocess.TimeoutExpired:
                raise ProviderError(f"{shlex.join(argv)} did not finish within {timeout:.0f}s") from None
            output.seek(0)
            text = output.read()[-OUTPUT_LIMIT:].decode("utf-8", "replace").strip()
        if proc.returncode == EX_TEMPFAIL:
            raise TransientProviderError(stored_text(f"{shlex.join(argv)} exited 75 (temporary failure): {text}"))
        if proc.returncode != 0:
            raise ProviderError(stored_text(f"{shlex.join(argv)} exited {proc.returncode}: {text}"))
        return stored_text(text)
