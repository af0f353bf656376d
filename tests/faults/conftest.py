"""Fault-injection suite: a real cluster per test, and one table of what was injected and survived.

Every test takes `fault` (a row of the table), says what it injected and how many times,
and adds details; whether the system survived is the test's own outcome. The table is
printed at the end of the session (`pytest tests/faults -m slow`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.faults.cluster import ReapingCluster
from tests.cluster import running_cluster

_ROWS: list["FaultRow"] = []


@dataclass
class FaultRow:
    """One line of the fault table."""

    fault: str
    injected: int = 0
    detail: str = ""
    survived: bool | None = None

    def note(self, text: str) -> None:
        self.detail = f"{self.detail}; {text}" if self.detail else text


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> Iterator[FaultRow]:
    row = FaultRow(fault=request.node.name)
    yield row
    row.survived = request.node.stash.get(_CALL_PASSED, False)
    _ROWS.append(row)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _ROWS:
        return
    headers = ("fault", "injected", "survived", "detail")
    rows = [(r.fault, str(r.injected), "yes" if r.survived else "no", r.detail) for r in _ROWS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers[:3])]
    terminalreporter.section("fault injection")
    line = " | ".join(h.ljust(w) for h, w in zip(headers[:3], widths)) + " | detail"
    terminalreporter.write_line(line)
    terminalreporter.write_line("-" * len(line))
    for row in rows:
        terminalreporter.write_line(" | ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + " | " + row[3])


@pytest.fixture
def fault_cluster(tmp_path: Path) -> Iterator[ReapingCluster]:
    """Redis of its own, local executor, workers (with their reaper) added with `.worker()`."""
    with running_cluster(tmp_path, "local", ReapingCluster) as cluster:
        yield cluster  # type: ignore[misc]
