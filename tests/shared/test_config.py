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
