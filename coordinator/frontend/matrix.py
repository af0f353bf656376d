"""Matrix expansion: one job per combination of the matrix values."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping

MAX_EXPANSIONS = 256


@dataclass(frozen=True)
class Expansion:
    name: str  # e.g. test[PY=3.11,OS=linux]
    values: tuple[tuple[str, str], ...]  # in the matrix's declared key order


def scalar_text(value: Any) -> str:
    """How a YAML scalar becomes an environment value: `true`, `3`, `3.5`, text as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def expansion_count(matrix: Mapping[str, list]) -> int:
    count = 1
    for values in matrix.values():
        count *= max(len(values), 1)
    return count


def expand(base: str, matrix: Mapping[str, list] | None) -> list[Expansion]:
    """The jobs a (possibly matrix) job becomes; a job without a matrix stays itself."""
    if not matrix:
        return [Expansion(base, ())]
    keys = list(matrix)
    combos = itertools.product(*(matrix[k] for k in keys))
    out = []
    for combo in combos:
        values = tuple((k, scalar_text(v)) for k, v in zip(keys, combo))
        label = ",".join(f"{k}={v}" for k, v in values)
        out.append(Expansion(f"{base}[{label}]", values))
    return out
