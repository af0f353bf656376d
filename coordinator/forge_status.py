"""Commit statuses for GitHub, GitLab and Gitea: what to send, where, and when to try again.

Spec (server.md, "Commit statuses"): when a run is created (pending) and when it ends
(success, failure, error), one status per pipeline with context `conveyor/<pipeline
name>` and a link to the run's page, sent with retries and backoff. This module is pure
(no I/O, no clock, like `deploy/strategies`): it turns a run's status into a status
state, a state into the exact HTTP request a forge expects, and an attempt's outcome
into the delay before the next one. `coordinator/status_sender.py` does the sending.

| forge | request | states | token header | description limit |
|---|---|---|---|---|
| GitHub | `POST {status_api}/repos/{owner}/{repo}/statuses/{sha}` `{state, target_url, description, context}` | pending, success, failure, error | `Authorization: Bearer T` | 140 (GitHub refuses longer) |
| GitLab | `POST {status_api}/projects/{url-encoded path_with_namespace}/statuses/{sha}` `{state, name, target_url, description}` | pending, success, failed, canceled | `PRIVATE-TOKEN: T` | 255 (our cap) |
| Gitea | `POST {status_api}/repos/{owner}/{repo}/statuses/{sha}` `{state, target_url, description, context}` | pending, success, failure, error | `Authorization: token T` | 255 (our cap) |

`status_api` is the API root as configured: `https://api.github.com`, a GitHub
Enterprise `https://ghe.example.com/api/v3`, GitLab `https://gitlab.example.com/api/v4`,
Gitea `https://gitea.example.com/api/v1`.

Everything that ends up in the URL is checked, because a repository name, a sha or an
operator's `status_api` that could add a path segment, a query or credentials would send
the token somewhere else: the sha is 40 (SHA-1) or 64 (SHA-256) hex digits; a repository
is `owner/name` (GitLab: `group/sub/.../name`) of segments of letters, digits, `.`, `_`,
`-`, none of them `.` or `..`; each segment is percent-encoded anyway; `status_api` is
http(s) with a host and without credentials, query or fragment. Bad input raises
`ValueError` whose text never contains the token nor the credentials of a URL.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, get_args
from urllib.parse import quote, urlsplit

from shared.state.base import CANCELLED, FAILED, RUNNING, SUCCESS

StatusState = Literal["pending", "success", "failure", "error"]
STATES: frozenset[str] = frozenset(get_args(StatusState))
Forge = Literal["github", "gitlab", "gitea"]
FORGES: frozenset[str] = frozenset(get_args(Forge))

CONTEXT_PREFIX = "conveyor/"
MAX_CONTEXT = 255
ELLIPSIS = "\u2026"

# GitHub answers 422 to a description over 140 characters; GitLab and Gitea take more,
# but a status line is read at a glance, so 255 is our own cap there.
DESCRIPTION_LIMITS: Mapping[str, int] = {"github": 140, "gitlab": 255, "gitea": 255}

# GitLab spells two of the four states differently; `running` is not used: a run in
# progress is `pending` on every forge, so the three forges show the same thing.
GITLAB_STATES: Mapping[str, str] = {"pending": "pending", "success": "success",
                                    "failure": "failed", "error": "canceled"}

# Headers whose value is a secret: the sender redacts them from anything it reports.
SECRET_HEADERS = frozenset({"authorization", "private-token"})

_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,100}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: anything else could split a header
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_GITLAB_DEPTH = 21  # GitLab nests at most 20 subgroups under a top-level group


def status_for_run(run_status: str, *, invalid: bool = False) -> StatusState:
    """The commit status for a run's status.

    `running` (and `waiting`, a run queued behind its concurrency group) -> pending;
    success -> success; failed -> failure; cancelled -> error. `invalid` (a run that
    failed at once because its pipeline file is missing or invalid) -> failure: the
    commit is at fault, not the CI.
    """
    if invalid:
        return "failure"
    states: dict[str, StatusState] = {RUNNING: "pending", "waiting": "pending", SUCCESS: "success",
                                      FAILED: "failure", CANCELLED: "error"}
    try:
        return states[run_status]
    except KeyError:
        raise ValueError(f"run status {run_status!r} is not one of {', '.join(sorted(states))}") from None


def context_for(pipeline_name: str) -> str:
    """`conveyor/<pipeline name>`, made safe to send: control characters and runs of blanks
    become one space, and the whole is cut to 255 characters."""
    name = " ".join(_CONTROL.sub(" ", pipeline_name).split()) or "pipeline"
    return _truncate(CONTEXT_PREFIX + name, MAX_CONTEXT)


@dataclass(frozen=True)
class StatusRequest:
    """One HTTP request that sets one commit status; `body` is sent as JSON.

    `state` and `context` are Conveyor's (not the forge's spelling); with `url` they say
    which status this is: statuses with the same `key` replace each other on the forge.
    `headers` carries the token, so it is left out of `repr`.
    """

    forge: str
    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)
    body: Mapping[str, Any]
    state: StatusState
    context: str

    @property
    def key(self) -> tuple[str, str]:
        """(url, context): the url holds the forge, repository and sha."""
        return (self.url, self.context)

    def data(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()

    def redact(self, text: str) -> str:
        """`text` with every secret header value (and the bare token in it) replaced by ***."""
        for name, value in self.headers.items():
            if name.lower() in SECRET_HEADERS and value:
                text = text.replace(value, "***")
                bare = value.split()[-1]
                if len(bare) >= 4:  # a tiny "token" would blank out ordinary words
                    text = text.replace(bare, "***")
        return text


def build_request(forge: str, status_api: str, repository: str, sha: str, state: StatusState,
                  context: str, description: str, target_url: str, token: str) -> StatusRequest:
    """The request that sets `state` on commit `sha` of `repository` (see the module's table).

    `target_url` is the run's page (http or https); an empty one is left out of the body.
    `description` is made one line and cut to the forge's limit with an ellipsis.
    Raises ValueError for anything that cannot be sent safely.
    """
    if forge not in FORGES:
        raise ValueError(f"forge {forge!r} is not one of {', '.join(sorted(FORGES))}")
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(sorted(STATES))}")
    base = _check_api(status_api)
    commit = _check_sha(sha)
    segments = _check_repository(forge, repository)
    _check_context(context)
    if target_url:
        _check_http_url("target_url", target_url)
    _check_token(token)
    text = _truncate(" ".join(_CONTROL.sub(" ", description).split()), DESCRIPTION_LIMITS[forge])

    headers = {"Content-Type": "application/json", "User-Agent": "conveyor"}
    if forge == "gitlab":
        project = quote("/".join(segments), safe="")
        url = f"{base}/projects/{project}/statuses/{commit}"
        body: dict[str, Any] = {"state": GITLAB_STATES[state], "name": context, "description": text}
        headers["PRIVATE-TOKEN"] = token
    else:
        owner, name = (quote(s, safe="") for s in segments)
        url = f"{base}/repos/{owner}/{name}/statuses/{commit}"
        body = {"state": state, "description": text, "context": context}
        if forge == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Accept"] = "application/json"
            headers["Authorization"] = f"token {token}"
    if target_url:
        body["target_url"] = target_url
    return StatusRequest(forge=forge, method="POST", url=url, headers=headers, body=body,
                         state=state, context=context)


# -- retry policy -----------------------------------------------------------------------

MAX_ATTEMPTS = 6
BASE_DELAY = 4.0
MAX_DELAY = 60.0
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


def next_delay(attempt: int, status_code: int | None, *, base: float = BASE_DELAY,
               cap: float = MAX_DELAY, max_attempts: int = MAX_ATTEMPTS) -> float | None:
    """Seconds to wait after attempt number `attempt` (1 = the first) failed, or None to give up.

    Retried: no answer at all (`status_code` None: refused, reset, timed out), 429 and
    5xx, which say "not now". Never retried: any other answer (a 4xx will not change by
    asking again; a 3xx is not followed, since following it could carry the token to
    another host). The delay doubles from `base` up to `cap`: 4, 8, 16, 32, 60 seconds,
    so the 6 attempts span two minutes (plus up to 5 s of timeout each). No jitter: the
    policy stays a pure function, and one server sends few statuses. Nothing else is
    honoured (no Retry-After): a status late by a minute is still useful.
    Tests pass a tiny `base` and `cap` (functools.partial) to run the same policy fast.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    if status_code is not None and status_code not in RETRY_STATUSES:
        return None
    if attempt >= max_attempts:
        return None
    return min(cap, base * 2 ** (attempt - 1))


# -- checks -----------------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise ValueError(f"sha {sha!r:.80} is not 40 or 64 hex digits")
    return sha.lower()


def _check_repository(forge: str, repository: str) -> list[str]:
    segments = repository.split("/") if isinstance(repository, str) else []
    if forge == "gitlab":
        ok_count = 2 <= len(segments) <= _MAX_GITLAB_DEPTH
        shape = "group/name or group/subgroup/.../name"
    else:
        ok_count = len(segments) == 2
        shape = "owner/name"
    if not ok_count or not all(_SEGMENT.fullmatch(s) and s.strip(".") for s in segments):
        raise ValueError(f"repository {repository!r:.120} is not {shape} "
                         "(letters, digits, '.', '_', '-'; no '.' or '..' segment)")
    return segments


def _check_context(context: str) -> None:
    if not isinstance(context, str) or not context.strip() or len(context) > MAX_CONTEXT \
            or _CONTROL.search(context):
        raise ValueError(f"context {context!r:.80} must be 1 to {MAX_CONTEXT} characters "
                         "without control characters (use context_for)")


def _check_token(token: str) -> None:
    # Never put the token in the message: it would end up in a log or a run event.
    if not isinstance(token, str) or not token:
        raise ValueError("the status token is empty (is its environment variable set?)")
    if not _TOKEN.fullmatch(token):
        raise ValueError("the status token has characters an HTTP header cannot carry "
                         "(blanks, line breaks or non-ASCII)")


def _check_http_url(what: str, url: str) -> Any:
    if not isinstance(url, str) or _CONTROL.search(url) or " " in url:
        raise ValueError(f"{what} has blanks or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValueError(f"{what} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} must be http:// or https://, not {parts.scheme or 'a relative URL'!r:.20}")
    if "@" in parts.netloc:
        # The message leaves the URL out: what comes before '@' is a password.
        raise ValueError(f"{what} must not contain credentials (user:password@)")
    if not parts.hostname:
        raise ValueError(f"{what} has no host")
    return parts


def _check_api(status_api: str) -> str:
    parts = _check_http_url("status_api", status_api)
    if "?" in status_api or "#" in status_api:
        raise ValueError("status_api must not have a query or a fragment")
    if any(s in (".", "..") for s in parts.path.split("/")) or "%" in parts.path:
        raise ValueError("status_api path must not have '.', '..' or %-escapes")
    return status_api.rstrip("/")
