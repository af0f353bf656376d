"""The `git` root: the run's trigger document, in conditions and in `${{ }}` templates."""
from shared.expressions import (
    KNOWN_ROOTS,
    NO_TRIGGER,
    TEMPLATE_ROOTS,
    Context,
    check,
    condition_met,
    evaluate,
)

PUSH = {"event": "push", "repository": "acme/app", "ref": "refs/heads/main", "branch": "main", "tag": "",
        "sha": "a" * 40, "before": "b" * 40, "actor": "alice", "pr": None, "delivery": "d-1"}
PULL = {**PUSH, "event": "pull_request", "ref": "refs/pull/7/head", "branch": "feature",
        "pr": {"number": 7, "head_repository": "bob/app", "fork": True}}


def test_git_is_a_root_of_conditions_and_templates():
    assert "git" in KNOWN_ROOTS and "git" in TEMPLATE_ROOTS
    assert check("git.event == 'push' && git.branch == 'main'") == []
    assert check("format('{0}-{1}', git.branch, git.sha)", roots=TEMPLATE_ROOTS, status_functions=False) == []


def test_fields_of_a_push():
    context = Context(git=PUSH)
    assert evaluate("git.event == 'push' && git.branch == 'main'", context) is True
    assert evaluate("git.branch == 'dev'", context) is False
    assert evaluate("git.pr", context) is None
    assert evaluate("git.pr.fork", context) is None
    assert evaluate("startsWith(git.ref, 'refs/heads/')", context) is True


def test_fields_of_a_pull_request():
    context = Context(git=PULL)
    assert evaluate("git.pr.number", context) == 7
    assert evaluate("git.pr.fork", context) is True
    assert evaluate("git.pr.head_repository", context) == "bob/app"
    assert evaluate("git.event == 'pull_request' && !git.pr.fork", context) is False


def test_without_a_trigger_every_field_is_empty_and_pr_is_null():
    context = Context()
    assert evaluate("git.branch", context) == ""
    assert evaluate("git.event == ''", context) is True
    assert evaluate("git.pr", context) is None
    assert evaluate("git.pr.number", context) is None
    assert evaluate("git", context) == NO_TRIGGER
    assert set(NO_TRIGGER) == set(PUSH)


def test_a_condition_on_the_branch_keeps_the_implicit_success():
    ok = Context(git=PUSH, dependency_results={"build": ("success", False)})
    failed = Context(git=PUSH, dependency_results={"build": ("failed", False)})
    assert condition_met("git.branch == 'main'", ok) is True
    assert condition_met("${{ git.branch == 'main' }}", ok) is True
    assert condition_met("git.branch == 'main'", failed) is False
    assert condition_met("git.branch == 'release'", ok) is False


def test_a_misspelt_git_gets_a_suggestion():
    [error] = check("gti.branch == 'main'")
    assert error.message == "unknown name 'gti' (did you mean 'git'?)"
    [error] = check("Git.branch", roots=TEMPLATE_ROOTS, status_functions=False)
    assert error.message == "unknown name 'Git' (did you mean 'git'?)"
