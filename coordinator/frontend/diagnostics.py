"""Diagnostics: every problem found in a pipeline file, pointing at file, line and column.

Validation collects diagnostics instead of raising, so one pass reports every error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, order=True)
class Position:
    """A 1-based line and column in a source file."""

    line: int
    col: int


@dataclass(frozen=True)
class Diagnostic:
    file: str
    position: Position
    message: str
    severity: str = ERROR
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.file}:{self.position.line}:{self.position.col}: {self.severity}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.position.line,
            "col": self.position.col,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class Diagnostics:
    """An ordered collector of diagnostics for one file."""

    file: str
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, position: Position, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(self.file, position, message, ERROR, hint))

    def warning(self, position: Position, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(self.file, position, message, WARNING, hint))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == ERROR]

    @property
    def has_errors(self) -> bool:
        return any(d.severity == ERROR for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        # Stable sort keeps discovery order for diagnostics on the same spot.
        return sorted(self.items, key=lambda d: (d.position.line, d.position.col))


class PipelineError(Exception):
    """Raised by entry points that need a valid pipeline; carries every diagnostic."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))
