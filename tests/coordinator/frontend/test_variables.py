"""Variable substitution as a pipeline author sees it: forms, layers, and error messages."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.frontend.variables import (
    MAX_DEPTH,
    Scope,
    UndefinedVariable,
    VariableError,
    VariableErrorGroup,
    references,
    resolve_layers,
    substitute,
)

ENV = {"NAME": "world", "EMPTY": "", "PATHS": "a/b/a", "VERSION": "1.2.3"}


def sub(text: str, expression=None) -> str:
    return substitute(text, ENV.get, expression, known=ENV)


def error_of(text: str, expression=None) -> VariableError:
    with pytest.raises(VariableError) as caught:
        sub(text, expression)
    return caught.value


# --- forms -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("hello ${NAME}!", "hello world!"),
    ("${NAME}${NAME}", "worldworld"),
    ("${NAME:-x}", "world"),
    ("${MISSING:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),
    ("${MISSING:-}", ""),
    ("${NAME:+set}", "set"),
    ("${EMPTY:+set}", ""),
    ("${MISSING:+set}", ""),
    ("${VERSION/./-}", "1-2-3"),
    ("${PATHS/a/xy}", "xy/b/xy"),
    ("${PATHS/a}", "/b/"),
    ("${PATHS/a/x/y}", "x/y/b/x/y"),
    ("${NAME/zzz/q}", "world"),
])
def test_each_form(text, expected):
    assert sub(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("$$", "$"),
    ("$${NAME}", "${NAME}"),
    ("$$$${NAME}", "$${NAME}"),
    ("$$${NAME}", "$world"),
    ("$NAME", "$NAME"),          # no brace-less form
    ("cost: 5$", "cost: 5$"),
    ("a $ b", "a $ b"),
    ("${MISSING:-$$}", "$"),
    ("${MISSING:-$}", "$"),
])
def test_dollar_signs(text, expected):
    assert sub(text) == expected


def test_escaped_slash_and_brace_in_pattern_and_replacement():
    assert sub(r"${PATHS/\//::}") == "a::b::a"
    assert sub(r"${PATHS/a\/b/\/}") == "//a"
    assert substitute(r"${X/\}/)}", {"X": "f(}"}.get) == "f()"
    # Any other backslash is literal.
    assert substitute(r"${X/\n/N}", {"X": r"a\nb"}.get) == "aNb"


def test_nested_defaults_are_substituted():
    assert sub("${MISSING:-${OTHER:-${NAME}}}") == "world"
    assert sub("${MISSING:-v${VERSION/./_}-${NAME:+on}}") == "v1_2_3-on"
    assert sub("${NAME:+[${NAME}]}") == "[world]"


def test_unchosen_default_is_not_evaluated():
    assert sub("${NAME:-${UNDEFINED}}") == "world"
    assert sub("${EMPTY:+${UNDEFINED}}") == ""


def test_substituted_text_is_final():
    lookup = {"A": "${B}", "B": "no", "C": "$$"}.get
    assert substitute("${A}", lookup) == "${B}"
    assert substitute("${C}", lookup) == "$$"
    assert substitute("$${A}", lookup) == "${A}"
    assert substitute("${{ x }}", lookup, lambda source: "${B}") == "${B}"


def test_text_without_dollar_is_returned_as_is():
    text = "x" * 2_000_000
    assert substitute(text, ENV.get) is text


# --- expressions -------------------------------------------------------------------

def test_expression_callback_gets_stripped_source():
    seen = []

    def evaluate(source: str) -> str:
        seen.append(source)
        return "true"

    assert sub("ok=${{  env.NAME == 'world' }}.", evaluate) == "ok=true."
    assert seen == ["env.NAME == 'world'"]


def test_closing_braces_inside_expression_strings_do_not_end_it():
    assert sub("${{ contains(a, '}}') }}!", lambda source: f"<{source}>") == "<contains(a, '}}')>!"
    assert sub('${{ "}}" }}', lambda source: source) == '"}}"'


def test_expression_inside_default():
    assert sub("${MISSING:-${{ 1 }}}", lambda source: "one") == "one"


def test_expression_without_callback_is_an_error():
    error = error_of("a ${{ x }}")
    assert "not available" in error.message and error.offset == 2


def test_expression_failure_is_a_variable_error_at_the_expression():
    def evaluate(source: str) -> str:
        raise ValueError("unknown function 'nope'")

    error = error_of("ab${{ nope() }}", evaluate)
    assert error.message == "in '${{ nope() }}': unknown function 'nope'"
    assert error.offset == 2


def test_expression_variable_error_keeps_its_message_and_gets_the_offset():
    def evaluate(source: str) -> str:
        raise VariableError("unknown root 'foo'", offset=4, hint="did you mean 'env'?")

    error = error_of("ab ${{ foo.x }}", evaluate)
    assert (error.message, error.offset, error.hint) == ("unknown root 'foo'", 3, "did you mean 'env'?")


# --- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("text, fragment, offset", [
    ("abc ${", "unterminated '${'", 4),
    ("${NAME", "unterminated '${'", 0),
    ("x${NAME:", "unterminated '${'", 1),
    ("${NAME:-abc", "unterminated '${'", 0),
    ("${NAME/a/b", "unterminated '${'", 0),
    ("ok ${A:-${B:-x}", "unterminated '${'", 3),
    ("a${}", "empty variable name", 1),
    ("${1ABC}", "invalid variable name starting with '1'", 2),
    ("${ NAME }", "invalid variable name starting with ' '", 2),
    ("${NAME.x}", "unexpected '.' after '${NAME'", 6),
    ("${NAME-x}", "unexpected '-' after '${NAME'", 6),
    ("${NAME:1}", "unexpected ':' after '${NAME'", 6),
    ("${NAME//a/b}", "empty pattern", 7),
    ("go ${{ x }", "unterminated '${{'", 3),
    ("${{ 'x }}", "unterminated string", 4),
    ("${{   }}", "empty expression", 0),
    ("${MISSING:-${}}", "empty variable name", 11),
])
def test_malformed_syntax_reports_message_and_offset(text, fragment, offset):
    error = error_of(text, lambda source: "")
    assert fragment in error.message
    assert error.offset == offset


def test_colonless_bash_form_hints_at_supported_one():
    assert error_of("${NAME-x}").hint == "write '${NAME:-...}'"


def test_undefined_variable_names_it_with_did_you_mean():
    error = error_of("v=${VERSOIN}")
    assert isinstance(error, UndefinedVariable)
    assert error.name == "VERSOIN"
    assert error.message == "undefined variable 'VERSOIN'"
    assert error.offset == 2
    assert error.hint == "did you mean 'VERSION'?"
    assert str(error) == "undefined variable 'VERSOIN' (did you mean 'VERSION'?)"


def test_undefined_without_close_name_has_no_hint():
    error = error_of("${ZZZZZZ}")
    assert error.hint is None


def test_replacement_of_undefined_is_an_error():
    assert error_of("${NOPE/a/b}").message == "undefined variable 'NOPE'"


def test_syntax_errors_come_before_lookup_errors():
    assert error_of("${A} ${").message == "unterminated '${': missing '}'"
    assert error_of("${A} ${B}").message == "undefined variable 'A'"


def test_deep_nesting_does_not_hit_the_recursion_limit():
    depth = 5_000  # five times Python's default recursion limit
    text = "${X:-" * depth + "leaf" + "}" * depth
    assert substitute(text, {}.get) == "leaf"
    assert references(text) == ["X"]


def test_runaway_growth_is_an_error():
    with pytest.raises(VariableError, match="longer than"):
        substitute("${A/a/" + "b" * 100_000 + "}", {"A": "a" * 100}.get)


# --- references --------------------------------------------------------------------

def test_references_in_reading_order_once_each():
    text = "${B} $${NOT} ${A:-${C/x/y}} ${B:+${D}} ${{ env.E }}"
    assert references(text) == ["B", "A", "C", "D"]


def test_references_raises_on_malformed_text():
    with pytest.raises(VariableError):
        references("${A")


# --- layers ------------------------------------------------------------------------

PARAMS, STEP, JOB, GLOBAL, SYSTEM, DEFAULTS = range(6)


def layers(**by_layer: dict[str, str]) -> list[dict[str, str]]:
    order = ["params", "step", "job", "global_env", "system", "defaults"]
    return [by_layer.get(name, {}) for name in order]


def test_precedence_highest_first():
    stack = layers(
        params={"A": "params"},
        step={"A": "step", "B": "step"},
        job={"A": "job", "B": "job", "C": "job"},
        global_env={"C": "global", "D": "global"},
        system={"D": "system", "E": "system"},
        defaults={"E": "default", "F": "default"},
    )
    assert resolve_layers(stack) == {
        "A": "params", "B": "step", "C": "job", "D": "global", "E": "system", "F": "default"}


def test_self_reference_extends_path_from_lower_layer():
    stack = layers(job={"PATH": "/opt/bin:${PATH}"}, system={"PATH": "/usr/bin"})
    assert resolve_layers(stack)["PATH"] == "/opt/bin:/usr/bin"


def test_self_reference_chains_through_every_layer():
    stack = layers(
        step={"PATH": "/step:${PATH}"},
        job={"PATH": "/job:${PATH}"},
        system={"PATH": "/usr/bin"},
    )
    assert resolve_layers(stack)["PATH"] == "/step:/job:/usr/bin"


def test_self_reference_with_default_when_no_lower_layer():
    assert resolve_layers([{"PATH": "/x:${PATH:-/bin}"}]) == {"PATH": "/x:/bin"}


def test_self_reference_without_lower_layer_is_undefined_with_explanation():
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers(layers(job={"PATH": "/opt:${PATH}"}))
    [(name, error)] = caught.value.errors
    assert name == "PATH" and isinstance(error, UndefinedVariable)
    assert "refers to itself" in error.hint


def test_other_names_bind_to_their_merged_value():
    stack = layers(job={"HOST": "job.example"},
                   global_env={"HOST": "global.example", "URL": "https://${HOST}/api"})
    assert resolve_layers(stack)["URL"] == "https://job.example/api"


def test_values_resolve_recursively_and_results_are_final():
    stack = [{"A": "${B}-${C}", "B": "${C}${C}", "C": "c", "LIT": "$${A}", "USES_LIT": "<${LIT}>"}]
    assert resolve_layers(stack) == {
        "A": "cc-c", "B": "cc", "C": "c", "LIT": "${A}", "USES_LIT": "<${A}>"}


def test_cycle_message_names_the_cycle():
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers([{"A": "${B}", "B": "${A}", "C": "fine"}])
    assert [(name, error.message) for name, error in caught.value.errors] == [
        ("A", "variable cycle: A -> B -> A")]
    assert caught.value.partial == {"C": "fine"}


def test_variable_leading_into_a_cycle_is_not_part_of_it():
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers([{"ENTRY": "${A}", "A": "${B}", "B": "${A}"}])
    assert [(name, error.message) for name, error in caught.value.errors] == [
        ("A", "variable cycle: A -> B -> A")]
    assert caught.value.partial == {}


def test_three_step_cycle_across_layers():
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers(layers(job={"X": "${Y}"}, global_env={"Y": "${Z}", "Z": "z${X}"}))
    messages = [error.message for _, error in caught.value.errors]
    assert messages == ["variable cycle: Y -> Z -> X -> Y"]


def chain(length: int) -> dict[str, str]:
    """V0 -> V1 -> ... -> V{length-1}, a chain of ``length`` variables."""
    env = {f"V{i}": f"${{V{i + 1}}}" for i in range(length - 1)}
    env[f"V{length - 1}"] = "end"
    return env


def test_nesting_up_to_the_cap_resolves():
    assert resolve_layers([chain(MAX_DEPTH)])["V0"] == "end"


@pytest.mark.parametrize("reverse", [False, True])
def test_nesting_beyond_the_cap_is_an_error_whatever_the_order(reverse):
    env = chain(MAX_DEPTH + 1)
    if reverse:
        env = dict(reversed(list(env.items())))
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers([env])
    [(name, error)] = caught.value.errors
    assert name == "V0"
    assert error.message == ("variable nesting deeper than 10: "
                             "V0 -> V1 -> V2 -> V3 -> V4 -> V5 -> V6 -> V7 -> V8 -> V9 -> V10")
    assert caught.value.partial["V1"] == "end"


def test_every_bad_variable_is_reported_once():
    stack = layers(
        job={"GOOD": "ok", "TYPO": "${GOD}", "USES_TYPO": "${TYPO}"},
        global_env={"BROKEN": "x${", "ALSO": "${{ 1 }}"},
    )
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers(stack)
    errors = {name: error for name, error in caught.value.errors}
    assert set(errors) == {"TYPO", "BROKEN", "ALSO"}
    assert errors["TYPO"].hint == "did you mean 'GOOD'?"
    assert (errors["TYPO"].layer, errors["TYPO"].offset) == (JOB, 0)
    assert (errors["BROKEN"].layer, errors["BROKEN"].offset) == (GLOBAL, 1)
    assert caught.value.partial == {"GOOD": "ok"}
    assert "TYPO: undefined variable 'GOD'" in str(caught.value)


def test_error_in_lower_layer_points_at_that_layer():
    with pytest.raises(VariableErrorGroup) as caught:
        resolve_layers(layers(job={"PATH": "/opt:${PATH}"}, system={"PATH": "${}"}))
    [(name, error)] = caught.value.errors
    assert (name, error.layer, error.offset) == ("PATH", SYSTEM, 0)


def test_shadowed_values_are_not_evaluated():
    assert resolve_layers(layers(job={"A": "fine"}, global_env={"A": "${BROKEN"})) == {"A": "fine"}


def test_expressions_in_layer_values():
    assert resolve_layers([{"V": "v${{ vars.X }}"}], lambda source: "9") == {"V": "v9"}


# --- scope -------------------------------------------------------------------------

def test_scope_substitutes_fields_from_resolved_environment():
    scope = Scope(resolve_layers(layers(job={"TAG": "${VERSION}"}, global_env={"VERSION": "1.0"})))
    assert scope.substitute("app:${TAG}") == "app:1.0"
    with pytest.raises(UndefinedVariable) as caught:
        scope.substitute("app:${TGA}")
    assert caught.value.hint == "did you mean 'TAG'?"


def test_scope_does_not_re_expand_values():
    scope = Scope({"LIT": "${X}", "X": "no"}, expression=lambda source: source.upper())
    assert scope.substitute("${LIT} ${{ a }}") == "${X} A"


# --- fuzz --------------------------------------------------------------------------

FUZZ_ENV = {"A": "a$", "B": "", "AB": "${A}"}
fuzz_text = st.text(alphabet="${}:-+/\\'\"AB_1 x{}", max_size=40)


def fuzz_expression(source: str) -> str:
    if "x" in source:
        raise ValueError("bad expression")
    return source


@settings(max_examples=400, deadline=None)
@given(fuzz_text)
def test_random_text_raises_only_variable_error(text):
    try:
        result = substitute(text, FUZZ_ENV.get, fuzz_expression, known=FUZZ_ENV)
    except VariableError as error:
        assert error.offset is None or 0 <= error.offset < len(text)
    else:
        assert isinstance(result, str)
    try:
        references(text)
    except VariableError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60).map(lambda text: text.replace("$", "")))
def test_text_without_dollar_is_unchanged(text):
    assert substitute(text, FUZZ_ENV.get) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="${}:-+/\\AB x", max_size=40))
def test_doubling_every_dollar_gives_the_text_back(text):
    assert substitute(text.replace("$", "$$"), FUZZ_ENV.get) == text
