"""Fixtures for the deployment tests: HAProxy and demo-app processes, cleaned up after each test."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.deploy.services import HAProxy, start_haproxy, stop_apps
from tests.services import free_port


@pytest.fixture
def app_state(tmp_path: Path) -> Iterator[Path]:
    """DEMO_STATE_DIR for demo-app instances; every instance started there is stopped afterwards."""
    state = tmp_path / "apps"
    state.mkdir()
    yield state
    stop_apps(state)


@pytest.fixture
def ports() -> dict[str, int]:
    """Free ports for two instances and two spares."""
    return {name: free_port() for name in ("web1", "web2", "spare1", "spare2")}


@pytest.fixture
def haproxy(tmp_path: Path, ports: dict[str, int]) -> Iterator[HAProxy]:
    """HAProxy with web1 and web2 in backend `web` (nothing listening there until a test starts them)."""
    proxy = start_haproxy(tmp_path / "haproxy", {n: f"127.0.0.1:{ports[n]}" for n in ("web1", "web2")})
    yield proxy
    proxy.stop()
