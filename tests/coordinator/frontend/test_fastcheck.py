"""The fast path must agree with cerberus on every document, valid or not."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.frontend import schema
from coordinator.frontend.fastcheck import SUPPORTED, conforms


def _rule_names(rules: dict, out: set[str]) -> set[str]:
    out.update(rules)
    kinds = rules.get("type") if isinstance(rules.get("type"), list) else [rules.get("type")]
    sub = rules.get("schema")
    if isinstance(sub, dict):
        if "list" in kinds:
            _rule_names(sub, out)  # the rules of each item
        else:
            for field in sub.values():  # a mapping's fields
                _rule_names(field, out)
    for name in ("keysrules", "valuesrules"):
        if isinstance(rules.get(name), dict):
            _rule_names(rules[name], out)
    return out


def test_schemas_use_only_rules_the_fast_path_understands() -> None:
    used: set[str] = set()
    for top in (schema.PIPELINE, schema.JOB):
        for rules in top.values():  # noqa: B007
            _rule_names(rules, used)
    assert used <= SUPPORTED, used - SUPPORTED


def cerberus_accepts(validator, document) -> bool:
    return validator.validate(document, normalize=False)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 5000), st.floats(allow_nan=False),
                    st.sampled_from(["", "ok", "python:3.12", "512m", "7d", "x y", "a" * 70, "success()", "noop"]))
step = st.fixed_dictionaries({"name": st.one_of(st.text(max_size=5), scalars)},
                             optional={"script": st.one_of(st.lists(st.one_of(st.text(max_size=5), scalars), max_size=3), scalars),
                                       "timeout": scalars, "retry_count": scalars, "continue_on_failure": scalars,
                                       "environment": st.dictionaries(st.sampled_from(["A", "b_1", "1x", ""]), scalars, max_size=2),
                                       "bogus": scalars})
job = st.fixed_dictionaries({}, optional={
    "steps": st.one_of(st.lists(step, max_size=3), scalars),
    "depends_on": st.one_of(st.lists(st.one_of(st.text(max_size=4), scalars), max_size=3), scalars),
    "timeout": scalars, "retry_count": scalars, "image": scalars, "allow_failure": scalars,
    "matrix": st.dictionaries(st.sampled_from(["PY", "os", "9"]), st.one_of(st.lists(scalars, max_size=3), scalars), max_size=2),
    "resources": st.fixed_dictionaries({}, optional={"cpus": scalars, "memory": scalars}),
    "artifacts": st.fixed_dictionaries({}, optional={"paths": st.lists(scalars, max_size=2), "expire_in": scalars, "name": scalars}),
    "secrets": st.lists(scalars, max_size=2), "unknown": scalars,
})


@settings(max_examples=400, deadline=None)
@given(job)
def test_fast_path_agrees_with_cerberus_on_jobs(document) -> None:
    assert conforms(schema.JOB, document) == cerberus_accepts(schema._job_validator, document)


def test_valid_job_conforms() -> None:
    document = {"steps": [{"name": "s", "script": ["make"], "timeout": 10}], "depends_on": ["a"],
                "resources": {"memory": "512m", "cpus": 1.5}, "matrix": {"PY": ["3.11", 3]}}
    assert conforms(schema.JOB, document) and cerberus_accepts(schema._job_validator, document)
