"""The router contract: what the deployment engine asks of a traffic splitter.

A router holds named servers in one backend, each with an address, a weight and an admin
state (`ready`, `drain`, `maint`). The engine reads them all at once (`servers`) and
changes them with one batch of actions (`apply`), which a router must send as one unit
where it can (HAProxy: one socket write), so that a traffic switch is never half done.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, TypedDict, Union

READY = "ready"
DRAIN = "drain"
MAINT = "maint"
ABSENT = "absent"  # desired only: the server should not exist
ADMIN_STATES = (READY, DRAIN, MAINT)

# Health as the router sees it; `no check` means the router does not check that server.
UP_STATUSES = frozenset({"UP", "no check"})


class RouterError(Exception):
    """The router answered but refused or failed a command."""


class RouterUnavailable(RouterError):
    """The router could not be reached (a transient error: retried with backoff)."""


class CountersDict(TypedDict):
    """Counters as JSON (a canary analysis window's baseline in the deployment record)."""

    responses: int
    errors_5xx: int
    rtime_ms: float


@dataclass(frozen=True)
class Counters:
    """Cumulative per-server response counters (they only grow, until the server is re-created)."""

    responses: int = 0  # every HTTP response (1xx..5xx and other)
    errors_5xx: int = 0
    rtime_ms: float = 0.0  # the router's average response time over its recent requests

    def to_dict(self) -> CountersDict:
        return {"responses": self.responses, "errors_5xx": self.errors_5xx, "rtime_ms": self.rtime_ms}

    @classmethod
    def from_dict(cls, data: CountersDict) -> "Counters":
        return cls(int(data.get("responses", 0)), int(data.get("errors_5xx", 0)), float(data.get("rtime_ms", 0.0)))


@dataclass(frozen=True)
class ServerState:
    """One server as the router reports it."""

    name: str
    address: str
    weight: int  # the weight the user set (not scaled by drain/maint)
    admin: str  # ready | drain | maint
    status: str  # UP, DOWN, MAINT, DRAIN, no check, ...
    sessions: int = 0  # current sessions (HAProxy `scur`)
    counters: Counters = field(default_factory=Counters)

    @property
    def up(self) -> bool:
        """Taking traffic by the router's own checks (`UP`, `UP 1/3` while failing towards down, `no check`)."""
        return self.status in UP_STATUSES or self.status.startswith("UP ")

    @property
    def checks_pass(self) -> bool:
        """Up, or drained with passing checks: it would serve the moment it is set ready."""
        return self.up or self.status.split(" ")[0] in ("DRAIN", "NOLB")

    @property
    def effective_weight(self) -> int:
        return self.weight if self.admin == READY else 0


@dataclass(frozen=True)
class Check:
    """How the router itself should health-check a server it adds (None: it does not)."""

    interval_ms: int
    rise: int
    fall: int


@dataclass(frozen=True)
class AddServer:
    name: str
    address: str
    weight: int
    check: Check | None = None


@dataclass(frozen=True)
class DelServer:
    name: str


@dataclass(frozen=True)
class SetAddress:
    name: str
    address: str


@dataclass(frozen=True)
class SetWeight:
    name: str
    weight: int


@dataclass(frozen=True)
class SetState:
    name: str
    state: str  # ready | drain | maint


Action = Union[AddServer, DelServer, SetAddress, SetWeight, SetState]


@dataclass(frozen=True)
class Outcome:
    """What happened to one action of a batch; `error` is None when the router accepted it."""

    action: Action
    error: str | None = None


class Router(Protocol):
    """A traffic splitter with a runtime API (no reloads)."""

    def servers(self) -> dict[str, ServerState]:
        """Every server of the backend, by name. Raises RouterUnavailable when unreachable."""
        ...

    def apply(self, actions: Sequence[Action]) -> list[Outcome]:
        """Send every action as one batch; per-action outcomes. Raises RouterUnavailable."""
        ...


def describe(action: Action) -> str:
    """A short human form for logs and events."""
    if isinstance(action, AddServer):
        return f"add {action.name} {action.address} weight {action.weight}"
    if isinstance(action, DelServer):
        return f"del {action.name}"
    if isinstance(action, SetAddress):
        return f"addr {action.name} {action.address}"
    if isinstance(action, SetWeight):
        return f"weight {action.name} {action.weight}"
    return f"state {action.name} {action.state}"
