"""The pipeline front end: YAML text in, an immutable Plan (or diagnostics) out.

parse (yaml_source) -> schema (cerberus) -> semantics -> compile (matrix, variables, DAG).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from coordinator.frontend.diagnostics import Diagnostic, Diagnostics, Position

MAX_FILE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class LoadResult:
    plan: object | None  # shared.plan.Plan when valid
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.severity == "error" for d in self.diagnostics)


def load_text(text: str | bytes, file: str, parameters: Mapping[str, str] | None = None,
              run_id: str | None = None) -> LoadResult:
    """Validate and compile one pipeline from its text; never raises for bad input."""

    # The front end allocates many small objects and frees none of them until it is done:
    # cyclic GC passes over them are pure cost (about a third of the time on big files).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_text(text, file, parameters, run_id)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load_text(text: str | bytes, file: str, parameters: Mapping[str, str] | None, run_id: str | None) -> LoadResult:
    from coordinator.frontend.compiler import RUN_ID_PLACEHOLDER, compile_plan
    from coordinator.frontend.schema import validate_schema
    from coordinator.frontend.semantic import check_semantics
    from coordinator.frontend.yaml_source import load_yaml

    out = Diagnostics(file)
    loaded = load_yaml(text, out)
    plan = None
    if loaded is not None:
        schema_ok = validate_schema(loaded.data, loaded.source_map, out)
        check_semantics(loaded.data, loaded.source_map, out)
        if schema_ok and not out.has_errors:
            plan = compile_plan(loaded.data, loaded.source_map, out, parameters, run_id or RUN_ID_PLACEHOLDER)
    return LoadResult(plan if not out.has_errors else None, out.sorted())


def load_file(path: str | Path, parameters: Mapping[str, str] | None = None, run_id: str | None = None) -> LoadResult:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise OSError(f"file is {size} bytes, more than the {MAX_FILE_BYTES} allowed")
        data = path.read_bytes()
    except OSError as exc:
        out = Diagnostics(str(path))
        out.error(Position(1, 1), f"cannot read pipeline file: {exc.strerror or exc}")
        return LoadResult(None, out.items)
    return load_text(data, str(path), parameters, run_id)
