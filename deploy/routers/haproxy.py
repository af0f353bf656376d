"""HAProxy through its runtime API (the admin socket): no reloads, no config file edits.

Every batch of actions is ONE write of `;`-separated commands on one connection, so a
traffic switch lands in HAProxy as a unit. Reads use `show stat` (status, sessions,
response counters, response time) and `show servers state` (address, user weight, admin
state) in one write too, so both describe the same instant.

Dynamic servers (`add server`) start in maintenance, as HAProxy creates them; the engine
sets their state explicitly. Only servers in maintenance without connections can be
deleted: the engine drains first and deletes on a later tick.
"""
from __future__ import annotations

import csv
import io
import re
import socket
from typing import Sequence

from deploy.routers.base import (
    DRAIN,
    MAINT,
    READY,
    Action,
    AddServer,
    Counters,
    DelServer,
    Outcome,
    RouterError,
    RouterUnavailable,
    ServerState,
    SetAddress,
    SetState,
    SetWeight,
)

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 5.0
# HAProxy reads one command line into its buffer (tune.bufsize, 16 kB by default).
MAX_LINE = 15000
# Anything that reaches a command line: no spaces or `;`, which would start another command.
_TOKEN = re.compile(r"[A-Za-z0-9_.:\-\[\]]+")

# srv_admin_state bits (HAProxy's SRV_ADMF_*): forced/inherited/config/resolution/hostname maint, and drain.
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10
_HRSP = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


def _safe(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise RouterError(f"refusing {what} {value!r}: only letters, digits and . _ : - [ ] may reach the admin socket")
    return value


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) as (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RouterError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


class HAProxyRouter:
    """One backend of one HAProxy, through its admin socket (`unix:///path` or `tcp://host:port`)."""

    def __init__(self, admin: str, backend: str, timeout: float = READ_TIMEOUT_S) -> None:
        self.admin = admin
        self.backend = _safe(backend, "backend name")
        self.timeout = timeout
        if admin.startswith("unix://"):
            self._family, self._target = socket.AF_UNIX, admin[len("unix://"):]
        elif admin.startswith("tcp://"):
            host, port = split_address(admin[len("tcp://"):])
            self._family, self._target = socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port)
        else:
            raise RouterError(f"unsupported admin address {admin!r}: expected unix:///PATH or tcp://HOST:PORT")

    # -- transport -----------------------------------------------------------------------

    def send(self, commands: Sequence[str]) -> list[str]:
        """Send the commands in one write; one response text per command."""
        line = ";".join(commands) + "\n"
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(self._target)
            sock.settimeout(self.timeout)
            sock.sendall(line.encode())
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError as exc:
            raise RouterUnavailable(f"HAProxy admin socket {self.admin}: {exc}") from exc
        finally:
            sock.close()
        return _responses(b"".join(chunks).decode("utf-8", "replace"), len(commands))

    # -- reads ---------------------------------------------------------------------------

    def servers(self) -> dict[str, ServerState]:
        # `show stat NAME` would pick a frontend of the same name; every server's row, filtered here, cannot.
        stat, state = self.send(["show stat -1 4 -1", f"show servers state {self.backend}"])
        if not stat.startswith("#") or not state.lstrip("0123456789\n").startswith("#"):
            raise RouterError(f"HAProxy has no backend {self.backend!r}: {(stat or state).strip()[:200]}")
        stats = {row["svname"]: row for row in csv.DictReader(io.StringIO(stat[1:].lstrip()))
                 if row.get("pxname") == self.backend}
        out: dict[str, ServerState] = {}
        header: list[str] = []
        for line in state.splitlines():
            if line.startswith("#"):
                header = line[1:].split()
                continue
            if not header or not line.strip() or line.strip().isdigit():
                continue
            row = dict(zip(header, line.split()))
            name = row.get("srv_name", "")
            admin_bits = _int(row.get("srv_admin_state"))
            admin = MAINT if admin_bits & _MAINT_BITS else DRAIN if admin_bits & _DRAIN_BITS else READY
            stat_row = stats.get(name, {})
            out[name] = ServerState(
                name=name,
                address=f"{row.get('srv_addr')}:{row.get('srv_port')}",
                weight=_int(row.get("srv_uweight")),
                admin=admin,
                status=stat_row.get("status", "unknown"),
                sessions=_int(stat_row.get("scur")),
                counters=Counters(
                    responses=sum(_int(stat_row.get(col)) for col in _HRSP),
                    errors_5xx=_int(stat_row.get("hrsp_5xx")),
                    rtime_ms=float(_int(stat_row.get("rtime"))),
                ),
            )
        return out

    # -- writes --------------------------------------------------------------------------

    def commands_for(self, action: Action) -> list[str]:
        """The runtime API commands of one action (an added, checked server also needs `enable health`)."""
        server = f"{self.backend}/{_safe(action.name, 'server name')}"
        if isinstance(action, AddServer):
            host, port = split_address(action.address)
            text = f"add server {server} {_safe(host, 'address')}:{port} weight {int(action.weight)}"
            if action.check is None:
                return [text]
            check = action.check
            text += f" check inter {int(check.interval_ms)} rise {int(check.rise)} fall {int(check.fall)}"
            return [text, f"enable health {server}"]
        if isinstance(action, DelServer):
            return [f"del server {server}"]
        if isinstance(action, SetAddress):
            host, port = split_address(action.address)
            return [f"set server {server} addr {_safe(host, 'address')} port {port}"]
        if isinstance(action, SetWeight):
            return [f"set weight {server} {int(action.weight)}"]
        if isinstance(action, SetState):
            if action.state not in (READY, DRAIN, MAINT):
                raise RouterError(f"unknown server state {action.state!r}")
            return [f"set server {server} state {action.state}"]
        raise RouterError(f"unknown action {action!r}")

    def apply(self, actions: Sequence[Action]) -> list[Outcome]:
        if not actions:
            return []
        planned = [(index, command) for index, action in enumerate(actions) for command in self.commands_for(action)]
        errors: dict[int, str] = {}
        for batch in _batches(planned):
            responses = self.send([command for _, command in batch])
            for (index, command), response in zip(batch, responses):
                if not _accepted(command, response):
                    errors.setdefault(index, response.strip() or "no answer")
        return [Outcome(action, errors.get(index)) for index, action in enumerate(actions)]


def _batches(planned: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """One batch unless the line would overflow HAProxy's buffer."""
    batches: list[list[tuple[int, str]]] = [[]]
    size = 0
    for item in planned:
        if batches[-1] and size + len(item[1]) + 1 > MAX_LINE:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item[1]) + 1
    return batches


def _responses(text: str, count: int) -> list[str]:
    """Split a batch's output: each command's answer ends with an empty line."""
    answers: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line == "":
            answers.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        answers.append("\n".join(current))
    answers = answers[:count]
    return answers + [""] * (count - len(answers)) if len(answers) < count else answers


def _accepted(command: str, response: str) -> bool:
    text = response.strip()
    if command.startswith("add server"):
        return text.startswith("New server registered")
    if command.startswith("del server"):
        return text.startswith("Server deleted")
    if " addr " in command:
        return "changed from" in text or "no need to change" in text
    return text == ""
