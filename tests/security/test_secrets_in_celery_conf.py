"""Nothing secret in Celery's configuration, so nothing secret in Flower.

Attack: any Flower user opens `/api/workers?refresh=1` (or the worker's page), or anyone
on the broker runs `celery inspect conf` / `inspect report`: every key of the worker's
Celery configuration comes back, Conveyor's settings object included, which used to show
`broker_url='redis://:PASSWORD@...'`. Now none of the Redis password, the Flower password
or a worker's CONVEYOR_SECRET_* value appears in any of them; the settings are still
there, with `***` for the credentials.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from shared.celery_app import create_app
from shared.config import load_settings
from tests.cluster import Cluster
from tests.services import free_port, start_redis, wait_for_port

pytestmark = [pytest.mark.services, pytest.mark.slow]

PASSWORD = "redis-pw-conf-8a7b6c"
FLOWER_PASSWORD = "flower-pw-conf-3d4e5f"
SECRET = "worker-secret-conf-0f9e8d"
ROOT = Path(__file__).resolve().parents[2]
NODE = "celery@conf-w1"  # Celery's node name for `--name conf-w1`


def _get(url: str, auth: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read().decode()


def test_flower_and_inspect_show_no_credential(tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    redis, port = start_redis(tmp_path / "redis", "--requirepass", PASSWORD)
    cluster = Cluster(tmp_path, port, "local")
    broker = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    cluster.env["CONVEYOR_BROKER_URL"] = broker
    auth = f"admin:{FLOWER_PASSWORD}"
    flower = None
    try:
        # The worker holds every kind of credential an operator's worker has.
        cluster.worker("conf-w1", CONVEYOR_SECRET_API_TOKEN=SECRET, CONVEYOR_FLOWER_AUTH=auth,
                       CONVEYOR_STATE_URL=broker, AWS_SECRET_ACCESS_KEY=SECRET + "-aws")
        flower_port = free_port()
        flower = subprocess.Popen(
            [sys.executable, "-m", "coordinator", "flower", "--port", str(flower_port)],
            env={**cluster.env, "CONVEYOR_FLOWER_AUTH": auth}, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        assert wait_for_port(flower_port, timeout=60), "flower did not listen"
        base = f"http://127.0.0.1:{flower_port}"
        shown: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = json.loads(_get(f"{base}/api/workers?refresh=1", auth) or "{}")
            conf = (workers.get(NODE) or {}).get("conf") or {}
            if "broker_url" in conf:  # the conf arrived (Celery masks the URL's password itself)
                shown.append(json.dumps(workers))
                break
            time.sleep(1)
        assert shown, "Flower never showed the worker's configuration"
        shown.append(_get(f"{base}/worker/{NODE}", auth))

        app = create_app(load_settings({"CONVEYOR_BROKER_URL": broker}, "/dev/null"))
        inspect = app.control.inspect(destination=[NODE], timeout=10)
        for answer in (inspect.conf(with_defaults=True), inspect.report(), inspect.stats()):
            assert answer and NODE in answer
            shown.append(json.dumps(answer, default=repr))
        cli = subprocess.run([sys.executable, "-m", "celery", "-b", broker, "inspect", "conf", "--timeout", "10"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert "broker_url" in cli.stdout, cli.stdout + cli.stderr
        shown.append(cli.stdout + cli.stderr)
    finally:
        if flower is not None:
            flower.terminate()
            flower.wait(timeout=30)
        cluster.stop()
        redis.terminate()
        redis.wait(timeout=10)
    text = "\n".join(shown)
    for credential in (PASSWORD, FLOWER_PASSWORD, SECRET):
        assert credential not in text, f"{credential!r} is shown"
    assert f"@127.0.0.1:{port}/0" in text  # the broker URL is shown, without its password
