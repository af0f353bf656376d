"""The pipeline front end: YAML text in, an immutable Plan (or diagnostics) out.

parse (yaml_source) -> schema (cerberus) -> semantics -> compile (matrix, variables, DAG).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from coordinator.frontend.diagnostics import Diagnostic, Diagnostics, Position

if TYPE_CHECKING:  # imported with the rest of the front end, on first load, not at CLI start-up
    from coordinator.triggers.filters import OnConfig

MAX_FILE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class LoadResult:
    """What loading a pipeline gave.

    `on` is the pipeline's parsed `on:` (`filters.DEFAULT_ON` when it has none), for the
    server's `match(result.on, event, changed_paths)`. It is set whenever `on:` itself is
    valid, even when the rest of the file is not, so the server can still tell whether an
    event concerns an invalid pipeline; None when `on:` is invalid or the file is not
    readable YAML.
    """

    plan: object | None  # shared.plan.Plan when valid
    diagnostics: list[Diagnostic]
    on: OnConfig | None = None

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.severity == "error" for d in self.diagnostics)


def load_text(text: str | bytes, file: str, parameters: Mapping[str, str] | None = None,
              run_id: str | None = None, *, trigger: Mapping[str, Any] | None = None) -> LoadResult:
    """Validate and compile one pipeline from its text; never raises for bad input.

    `trigger` is what started the run: the `TriggerEvent.to_dict()` document of
    coordinator/triggers/events.py. It gives the jobs their `CONVEYOR_EVENT` ...
    `CONVEYOR_PR_NUMBER` variables and expressions their `git` root; None (`conveyor run`
    on a local file) makes every one of them `""` (and `git.pr` null).
    """

    # The front end allocates many small objects and frees none of them until it is done:
    # cyclic GC passes over them are pure cost (about a third of the time on big files).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_text(text, file, parameters, run_id, trigger)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load_text(text: str | bytes, file: str, parameters: Mapping[str, str] | None, run_id: str | None,
               trigger: Mapping[str, Any] | None) -> LoadResult:
    from coordinator.frontend.compiler import RUN_ID_PLACEHOLDER, compile_plan
    from coordinator.frontend.on_section import check_on
    from coordinator.frontend.schema import validate_schema
    from coordinator.frontend.semantic import check_semantics
    from coordinator.frontend.yaml_source import load_yaml

    out = Diagnostics(file)
    loaded = load_yaml(text, out)
    plan = on = None
    if loaded is not None:
        schema_ok = validate_schema(loaded.data, loaded.source_map, out)
        check_semantics(loaded.data, loaded.source_map, out)
        on = check_on(loaded.data, loaded.source_map, out)
        if schema_ok and not out.has_errors:
            plan = compile_plan(loaded.data, loaded.source_map, out, parameters, run_id or RUN_ID_PLACEHOLDER,
                                trigger)
    return LoadResult(plan if not out.has_errors else None, out.sorted(), on)


def load_file(path: str | Path, parameters: Mapping[str, str] | None = None, run_id: str | None = None, *,
              trigger: Mapping[str, Any] | None = None) -> LoadResult:
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
    return load_text(data, str(path), parameters, run_id, trigger=trigger)
