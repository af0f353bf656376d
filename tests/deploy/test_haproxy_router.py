"""The HAProxy router against a real haproxy: reads, batches, states, counters, errors."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from deploy.routers.base import (
    AddServer, Check, DelServer, RouterError, RouterUnavailable, SetAddress, SetState, SetWeight,
)
from deploy.routers.haproxy import HAProxyRouter, _responses
from tests.deploy.services import get, start_app


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# -- fast: parsing and safety -------------------------------------------------------------------


def test_batch_output_is_split_per_command() -> None:
    text = "\n\n\n50 (initial 0)\n\nNo such server.\n\nNew server registered.\n"
    assert _responses(text, 5) == ["", "", "", "50 (initial 0)", "No such server."]
    assert _responses("New server registered.\n\n", 1) == ["New server registered."]


@pytest.mark.parametrize("name", ["web1;shutdown sessions", "a b", "x\ny", ""])
def test_names_that_could_inject_commands_are_refused(name: str) -> None:
    router = HAProxyRouter("unix:///nonexistent.sock", "web")
    with pytest.raises(RouterError):
        router.commands_for(SetWeight(name, 1))
    with pytest.raises(RouterError):
        router.commands_for(AddServer("ok", f"{name or ';'}:80", 1))


def test_a_batch_is_one_connection_and_one_write(tmp_path: Path) -> None:
    path = str(tmp_path / "fake.sock")
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(5)

    def serve() -> None:
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(65536)
        received.append(data)
        conn.sendall(b"\n" * 4 + b"New server registered.\n\n")
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    router = HAProxyRouter(f"unix://{path}", "web")
    outcomes = router.apply([SetWeight("a", 10), SetWeight("b", 90), SetState("a", "ready"), SetState("b", "drain"),
                             AddServer("c", "127.0.0.1:9", 0)])
    thread.join(5)
    server.close()
    assert len(received) == 1
    line = received[0].decode()
    assert line.count("\n") == 1 and line.count(";") == 4
    assert line.startswith("set weight web/a 10;set weight web/b 90;")
    assert [o.error for o in outcomes] == [None] * 5


def test_an_unreachable_socket_is_transient(tmp_path: Path) -> None:
    router = HAProxyRouter(f"unix://{tmp_path / 'missing.sock'}", "web")
    with pytest.raises(RouterUnavailable):
        router.servers()
    with pytest.raises(RouterUnavailable):
        HAProxyRouter("tcp://127.0.0.1:1", "web").apply([SetWeight("web1", 1)])


# -- slow: a real haproxy -------------------------------------------------------------------------


def test_reads_servers_with_state_weight_and_health(haproxy, app_state, ports) -> None:
    router = HAProxyRouter(haproxy.admin, "web")
    servers = router.servers()
    assert set(servers) == {"web1", "web2"}
    assert servers["web1"].address == f"127.0.0.1:{ports['web1']}"
    assert servers["web1"].admin == "ready" and servers["web1"].weight == 1
    assert not servers["web1"].up  # nothing listens yet
    start_app(app_state, "web1", "v1", ports["web1"])
    wait_until(lambda: router.servers()["web1"].up)
    assert not router.servers()["web2"].up


def test_unknown_backend_is_an_error(haproxy) -> None:
    with pytest.raises(RouterError, match="no backend"):
        HAProxyRouter(haproxy.admin, "nope").servers()


def test_add_weight_state_counters_and_delete(haproxy, app_state, ports) -> None:
    router = HAProxyRouter(haproxy.admin, "web")
    start_app(app_state, "web1", "v1", ports["web1"])
    start_app(app_state, "web2", "v1", ports["web2"])
    start_app(app_state, "spare1", "v2+errors=50", ports["spare1"])
    wait_until(lambda: all(s.up for s in router.servers().values()))
    outcomes = router.apply([
        AddServer("spare1", f"127.0.0.1:{ports['spare1']}", 0, Check(200, 1, 2)),
        SetWeight("web1", 45), SetWeight("web2", 45), SetWeight("spare1", 10), SetState("spare1", "ready"),
    ])
    assert [o.error for o in outcomes] == [None] * 5
    servers = wait_until(lambda: (s := router.servers())["spare1"].up and s)
    assert (servers["spare1"].admin, servers["spare1"].weight) == ("ready", 10)
    assert servers["spare1"].address == f"127.0.0.1:{ports['spare1']}"
    before = servers["spare1"].counters
    statuses = [get(haproxy.url)[0] for _ in range(100)]
    after = router.servers()["spare1"].counters
    # weighted round robin: about 10 of 100 went to the canary, and every 5xx the client saw is counted on it
    responses, errors = after.responses - before.responses, after.errors_5xx - before.errors_5xx
    assert 8 <= responses <= 12
    assert errors == statuses.count(500) and abs(errors - responses / 2) <= 1
    assert statuses.count(200) + statuses.count(500) == 100
    # a server in service cannot be deleted; in maintenance it can
    refused = router.apply([DelServer("spare1")])
    assert refused[0].error and "maintenance" in refused[0].error
    router.apply([SetState("spare1", "maint")])
    assert router.servers()["spare1"].admin == "maint"
    assert router.apply([DelServer("spare1")])[0].error is None
    assert "spare1" not in router.servers()


def test_drain_keeps_the_server_but_sends_it_nothing(haproxy, app_state, ports) -> None:
    router = HAProxyRouter(haproxy.admin, "web")
    start_app(app_state, "web1", "v1", ports["web1"])
    start_app(app_state, "web2", "v2", ports["web2"])
    wait_until(lambda: all(s.up for s in router.servers().values()))
    router.apply([SetState("web2", "drain")])
    server = router.servers()["web2"]
    assert server.admin == "drain" and server.effective_weight == 0
    assert {get(haproxy.url)[1].strip() for _ in range(20)} == {"v1"}
    router.apply([SetState("web2", "ready")])
    assert {get(haproxy.url)[1].strip() for _ in range(20)} == {"v1", "v2"}


def test_set_address_moves_a_server(haproxy, app_state, ports) -> None:
    router = HAProxyRouter(haproxy.admin, "web")
    start_app(app_state, "spare2", "moved", ports["spare2"])
    outcomes = router.apply([SetState("web2", "maint"), SetAddress("web2", f"127.0.0.1:{ports['spare2']}"),
                             SetState("web2", "ready"), SetState("web1", "maint")])
    assert [o.error for o in outcomes] == [None] * 4
    assert router.servers()["web2"].address == f"127.0.0.1:{ports['spare2']}"
    wait_until(lambda: router.servers()["web2"].up)
    assert get(haproxy.url)[1].strip() == "moved"


def test_errors_are_reported_per_action(haproxy) -> None:
    router = HAProxyRouter(haproxy.admin, "web")
    outcomes = router.apply([SetWeight("web1", 7), SetWeight("ghost", 3), SetState("web2", "drain")])
    assert outcomes[0].error is None and outcomes[2].error is None
    assert outcomes[1].error and "No such server" in outcomes[1].error
    servers = router.servers()
    assert servers["web1"].weight == 7 and servers["web2"].admin == "drain"
