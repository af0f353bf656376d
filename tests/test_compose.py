"""The compose cluster definition: valid for Compose, and never without auth."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compose_config_passes_and_demands_secrets() -> None:
    env = {**os.environ, "CONVEYOR_REDIS_PASSWORD": "pw", "CONVEYOR_FLOWER_AUTH": "admin:pw"}
    ok = subprocess.run(["docker-compose", "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    config = yaml.safe_load(ok.stdout)
    assert {"redis", "worker", "flower", "cli"} <= set(config["services"])
    assert config["services"]["flower"]["environment"]["CONVEYOR_FLOWER_AUTH"] == "admin:pw"
    assert "--requirepass" in config["services"]["redis"]["command"]
    bare = {k: v for k, v in env.items() if k not in ("CONVEYOR_REDIS_PASSWORD", "CONVEYOR_FLOWER_AUTH")}
    refused = subprocess.run(["docker-compose", "config"], cwd=ROOT, env=bare, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "CONVEYOR_REDIS_PASSWORD" in refused.stderr
