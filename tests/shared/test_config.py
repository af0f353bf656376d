"""Settings from the environment and conveyor.toml."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings


def test_artifact_expiry_and_gc_interval_from_the_environment(tmp_path: Path) -> None:
    missing = tmp_path / "conveyor.toml"
    missing.write_text("")  # an empty file: only the environment speaks
    settings = load_settings({"CONVEYOR_ARTIFACTS_EXPIRE_IN": "2d", "CONVEYOR_GC_INTERVAL": "90"}, missing)
    assert (settings.artifacts_expire_in, settings.gc_interval) == (2 * 86400, 90.0)
    assert load_settings({"CONVEYOR_ARTIFACTS_EXPIRE_IN": "0"}, missing).artifacts_expire_in == 0
    with pytest.raises(ConfigError, match="CONVEYOR_ARTIFACTS_EXPIRE_IN: '2x' is not a duration"):
        load_settings({"CONVEYOR_ARTIFACTS_EXPIRE_IN": "2x"}, missing)


def test_retention_tables_come_from_the_file_only(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('[[retention]]\npipeline = "web-*"\nmax_age = "7d"\n')
    assert load_settings({}, path).retention == ({"pipeline": "web-*", "max_age": "7d"},)
    path.write_text('retention = "7d"\n')
    with pytest.raises(ConfigError, match=r"\[\[retention\]\]"):
        load_settings({}, path)


# -- credentials never in a repr (Celery's `inspect conf` and Flower print it) -------------

def test_settings_repr_shows_no_password_flower_auth_or_deploy_target(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('[environments.prod]\nadmin_url = "http://admin:t0p-deploy@lb:9000"\n')
    settings = load_settings({
        "CONVEYOR_BROKER_URL": "rediss://:br0ker-pw@redis:6380/0?ssl_cert_reqs=none",
        "CONVEYOR_STATE_URL": "redis://conveyor:st4te-pw@redis:6379/3",
        "CONVEYOR_S3_ENDPOINT_URL": "https://key:s3-s3cret@minio:9000",
        "CONVEYOR_FLOWER_AUTH": "admin:fl0wer-pw",
    }, path)
    shown = repr(settings)
    for secret in ("br0ker-pw", "st4te-pw", "s3-s3cret", "fl0wer-pw", "t0p-deploy"):
        assert secret not in shown
    # still useful for an operator: hosts, users and the TLS mode stay
    assert "rediss://:***@redis:6380/0?ssl_cert_reqs=none" in shown
    assert "conveyor:***@redis:6379/3" in shown and "admin:***" in shown and "prod" in shown


def test_redact_url_cuts_credentials_even_from_unparsable_urls() -> None:
    from shared.config import redact_url

    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://user:p@ss@h/0") == "redis://user:***@h/0"  # an unencoded '@'
    assert redact_url("redis://justapassword@h:notaport/0") == "redis://***@h:notaport/0"
    assert redact_url("sqlite:////var/lib/state.db") == "sqlite:////var/lib/state.db"
    assert redact_url("not a url") == "not a url"


def test_celery_conf_dump_and_report_carry_no_credential() -> None:
    """What `celery inspect conf` / `inspect report` (and Flower) would send, built locally."""
    import json

    from celery.utils.saferepr import saferepr
    from celery.utils.serialization import jsonify

    from shared.celery_app import create_app, settings_of

    settings = load_settings({"CONVEYOR_BROKER_URL": "redis://:br0ker-pw@127.0.0.1:1/0",
                              "CONVEYOR_FLOWER_AUTH": "admin:fl0wer-pw"}, "/dev/null")
    app = create_app(settings)
    dumped = json.dumps(jsonify(app.conf.table(with_defaults=True), unknown_type_filter=saferepr))
    report = app.bugreport()
    for text in (dumped, report):
        assert "br0ker-pw" not in text and "fl0wer-pw" not in text
    assert settings_of(app) is settings  # the real object, for code that needs the URL


# -- job limits -------------------------------------------------------------------------

def test_job_limits_default_sanely_when_the_operator_sets_none() -> None:
    from shared.config import GIB, MIB, Settings, job_policy

    policy = job_policy(Settings(), concurrency=4, memory=16 * GIB, cpus=8.0)
    assert policy.memory_bytes == 4 * GIB  # host memory / concurrency
    assert (policy.memory_max_bytes, policy.cpus, policy.cpus_max) == (16 * GIB, 8.0, 8.0)
    assert (policy.pids, policy.workspace_bytes, policy.log_bytes) == (1024, 10 * GIB, 100 * MIB)
    assert (policy.network, policy.user, policy.read_only_root) == ("isolated", None, False)
    assert job_policy(Settings(), concurrency=1, memory=256 * GIB, cpus=64).memory_bytes == 8 * GIB  # capped
    assert job_policy(Settings(), concurrency=512, memory=2 * GIB, cpus=1).memory_bytes == 64 * MIB  # floor


def test_job_limits_from_environment_and_file(tmp_path: Path) -> None:
    from shared.config import GIB, MIB, job_policy

    path = tmp_path / "conveyor.toml"
    path.write_text('job_memory = "2g"\njob_memory_max = "6g"\njob_cpus = 1.5\njob_pids = 256\n'
                    'job_network = "none"\njob_user = "1000:1000"\njob_read_only_root = true\n')
    settings = load_settings({"CONVEYOR_JOB_WORKSPACE_SIZE": "500m", "CONVEYOR_JOB_LOG_SIZE": "8m",
                              "CONVEYOR_JOB_CPUS_MAX": "3"}, path)
    policy = job_policy(settings, concurrency=2, memory=64 * GIB, cpus=16)
    assert (policy.memory_bytes, policy.memory_max_bytes) == (2 * GIB, 6 * GIB)
    assert (policy.cpus, policy.cpus_max, policy.pids) == (1.5, 3.0, 256)
    assert (policy.workspace_bytes, policy.log_bytes) == (500 * MIB, 8 * MIB)
    assert (policy.network, policy.user, policy.read_only_root, policy.allows_root) == ("none", "1000:1000", True, False)


@pytest.mark.parametrize("environ, named", [
    ({"CONVEYOR_JOB_MEMORY": "lots"}, "CONVEYOR_JOB_MEMORY"),
    ({"CONVEYOR_JOB_CPUS": "0"}, "CONVEYOR_JOB_CPUS"),
    ({"CONVEYOR_JOB_PIDS": "-5"}, "CONVEYOR_JOB_PIDS"),
    ({"CONVEYOR_JOB_MEMORY": "4g", "CONVEYOR_JOB_MEMORY_MAX": "2g"}, "CONVEYOR_JOB_MEMORY_MAX"),
    ({"CONVEYOR_JOB_NETWORK": "bridge"}, "CONVEYOR_JOB_NETWORK"),
    ({"CONVEYOR_JOB_USER": "builder"}, "CONVEYOR_JOB_USER"),
    ({"CONVEYOR_JOB_READ_ONLY_ROOT": "maybe"}, "CONVEYOR_JOB_READ_ONLY_ROOT"),
])
def test_bad_job_limits_are_refused_naming_the_variable(environ: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(environ, "/dev/null")


def test_a_default_above_a_maximum_the_host_implies_is_refused() -> None:
    from shared.config import GIB, Settings, job_policy

    with pytest.raises(ConfigError, match="CONVEYOR_JOB_CPUS_MAX"):
        job_policy(Settings(job_cpus=4.0, job_cpus_max=2.0), concurrency=1, memory=8 * GIB, cpus=8)
    assert job_policy(Settings(job_memory=32 * GIB), concurrency=1, memory=8 * GIB, cpus=1).memory_bytes == 32 * GIB
