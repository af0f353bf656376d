"""Which values of a process environment are credentials, and how to keep them out of text.

Used where text that a pipeline's code produced is stored by a worker outside a job's
masked log (deployment provider output, health command output): a worker's own
credentials (broker and store passwords, cloud keys, every CONVEYOR_SECRET_*) must not
come back through it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

MASK = "***"
# Shorter values are left alone: masking "1" or "on" would garble every line.
MIN_LENGTH = 4
_SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|PRIVATE|_KEY$|_AUTH$)", re.IGNORECASE)


def sensitive_values(environ: Mapping[str, str]) -> list[str]:
    """The values of ``environ`` that are, or contain, credentials; longest first."""
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if name.startswith("CONVEYOR_SECRET_") or _SECRET_NAME.search(name):
            found.add(value)
            if ":" in value and name.endswith("_AUTH"):  # user:password
                found.add(value.split(":", 1)[1])
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.update({password, unquote(password)})
    return sorted((v for v in found if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each value replaced by ``***``."""
    for value in values:
        if value:
            text = text.replace(value, MASK)
    return text
