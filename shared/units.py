"""Durations and sizes as people write and read them, shared by config, pipelines and retention."""
from __future__ import annotations

import re
from typing import Any

KIB = 1024
MIB = 1024 * KIB

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Binary units, as Docker and most storage tools count: 1k = 1024 bytes.
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_DURATION_HINT = "write e.g. 90s, 30m, 12h, 7d, 2w or a number of seconds"
_SIZE_HINT = "write e.g. 500m, 10g, 1024 (bytes; k/m/g/t are powers of 1024)"


def parse_duration(value: Any, where: str = "duration") -> float:
    """Seconds from `90s`, `30m`, `12h`, `7d`, `2w` or a number of seconds; must be positive."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match[1]) * DURATION_UNITS[(match[2] or "s").lower()]
    if seconds is None:
        raise ValueError(f"{where}: {value!r} is not a duration; {_DURATION_HINT}")
    if not seconds > 0:
        raise ValueError(f"{where}: {value!r} must be longer than zero; {_DURATION_HINT}")
    return seconds


def parse_size(value: Any, where: str = "size") -> int:
    """Bytes from `500m`, `10g`, `10GiB`, `1024` or an integer; must be positive."""
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.fullmatch(value)):
        size = int(float(match[1]) * SIZE_UNITS[match[2].lower()])
    if size is None:
        raise ValueError(f"{where}: {value!r} is not a size; {_SIZE_HINT}")
    if size <= 0:
        raise ValueError(f"{where}: {value!r} must be more than zero bytes; {_SIZE_HINT}")
    return size


def format_duration(seconds: float) -> str:
    """A duration in its largest whole unit: `45s`, `1.5m`, `12h`, `3.2d`."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            amount = seconds / size
            return f"{amount:.0f}{unit}" if amount == int(amount) else f"{amount:.1f}{unit}"
    return f"{seconds:.0f}s"


def format_size(size: int) -> str:
    """Bytes for people: `512 B`, `1.5 KiB`, `10.0 GiB`."""
    if size < 1024:
        return f"{size} B"
    amount = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if amount < 1024 or unit == "TiB":
            break
    return f"{amount:.1f} {unit}"


def human_size(n: int) -> str:
    """`n` bytes for a message: `4 MiB`, `1.5 MiB`, `512 KiB`, `1000 bytes`."""
    for unit, size in (("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n // size} {unit}" if n % size == 0 else f"{n / size:.1f} {unit}"
    return f"{n} bytes"
