"""Which of a worker's variables are credentials, and masking them out of stored text."""
from __future__ import annotations

from shared.redaction import MASK, redact, sensitive_values


def test_secrets_passwords_in_urls_and_keys_are_sensitive_and_plain_settings_are_not() -> None:
    environ = {
        "CONVEYOR_SECRET_API_TOKEN": "tok-123456",
        "CONVEYOR_BROKER_URL": "redis://:p%40ss-word@redis:6379/0",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-xyz",
        "CONVEYOR_FLOWER_AUTH": "admin:flower-pw",
        "CONVEYOR_DATA_DIR": "/var/lib/conveyor",
        "PATH": "/usr/bin:/bin",
        "CONVEYOR_EXECUTOR": "docker",
    }
    values = sensitive_values(environ)
    for expected in ("tok-123456", "p%40ss-word", "p@ss-word", "aws-secret-xyz", "flower-pw"):
        assert expected in values
    assert "/var/lib/conveyor" not in values and "docker" not in values and "/usr/bin:/bin" not in values


def test_redact_masks_every_occurrence_longest_first() -> None:
    environ = {"CONVEYOR_SECRET_A": "abcd", "CONVEYOR_SECRET_B": "abcdefgh"}
    text = redact("x=abcdefgh y=abcd abcd", sensitive_values(environ))
    assert text == f"x={MASK} y={MASK} {MASK}"


def test_values_too_short_to_mask_safely_are_left() -> None:
    assert sensitive_values({"CONVEYOR_SECRET_FLAG": "1"}) == []
