"""A fast yes/no check of a document against a cerberus schema of the rules we use.

Cerberus builds a child validator per nested mapping and is slow on thousands of jobs.
Nearly every document is valid, so validation asks this compiled-free interpreter first
and runs cerberus (the source of every error message) only when it says "no". Both read
the same schema dicts; a property test keeps their verdicts identical.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
}
SUPPORTED = {"type", "required", "nullable", "min", "max", "regex", "allowed", "empty", "minlength", "maxlength",
             "schema", "keysrules", "valuesrules"}


@lru_cache(maxsize=None)
def _pattern(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def _value_ok(rules: dict, value: Any) -> bool:
    if value is None:
        return rules.get("nullable") is True  # cerberus: nullable defaults to False
    wanted = rules.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        if not any(_TYPES[name](value) for name in names):
            return False
    if isinstance(value, (str, list, dict)) and len(value) == 0:
        if rules.get("empty") is False:
            return False
    if "allowed" in rules and isinstance(value, (str, int, float)) and value not in rules["allowed"]:
        return False
    for rule, bad in (("min", lambda v, lim: v < lim), ("max", lambda v, lim: v > lim)):
        if rule in rules:
            try:
                if bad(value, rules[rule]):
                    return False
            except TypeError:
                pass  # cerberus skips comparisons between unlike types
    if "regex" in rules and isinstance(value, str) and not _pattern(rules["regex"]).fullmatch(value):
        return False
    if isinstance(value, (list, dict, str)):
        if "minlength" in rules and len(value) < rules["minlength"]:
            return False
        if "maxlength" in rules and len(value) > rules["maxlength"]:
            return False
    if isinstance(value, dict):
        keys, values = rules.get("keysrules"), rules.get("valuesrules")
        if keys is not None and not all(_value_ok(keys, k) for k in value):
            return False
        if values is not None and not all(_value_ok(values, v) for v in value.values()):
            return False
        if isinstance(rules.get("schema"), dict):
            return conforms(rules["schema"], value)
    elif isinstance(value, list) and isinstance(rules.get("schema"), dict):
        item = rules["schema"]
        return all(_value_ok(item, v) for v in value)
    return True


def conforms(schema: dict, document: Any) -> bool:
    """True only when cerberus (allow_unknown=False, normalize=False) would accept ``document``."""
    if not isinstance(document, dict):
        return False
    for key, value in document.items():
        rules = schema.get(key)
        if rules is None or not _value_ok(rules, value):
            return False
    return all(key in document for key, rules in schema.items() if rules.get("required"))
