"""Commit statuses carry a forge token: it must go to the configured API path only, and nowhere else.

Attacks: a repository name or sha from a webhook that rewrites the URL path
(`acme/../../admin`, `?`, `#`, `%2F`) so the token is spent on another endpoint; a
`status_api` with credentials or a non-HTTP scheme (`file://`, `gopher://`); a forge (or
a man in the middle) that redirects the request, with its token, to another host; a
forge that echoes the token in an error, which would land in run events and logs.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings, strategies as st

from coordinator.forge_status import build_request, next_delay
from coordinator.status_sender import StatusSender
from tests.forge_recorder import recording_forge
from tests.services import free_port

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "glpat-VerySecretTokenValue42"
FAST = partial(next_delay, base=0.001, cap=0.005)


def build(forge: str = "github", **overrides: Any):
    args = dict(forge=forge, status_api="https://forge.example.com/api", repository="acme/app", sha=SHA,
                state="success", context="conveyor/build", description="ok",
                target_url="https://ci.example.com/runs/r-1", token=TOKEN)
    args.update(overrides)
    return build_request(**args)


class Collect(list):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)


# -- the URL path cannot be steered ---------------------------------------------------

PATH_TRICKS = [
    "acme/../../admin", "acme/..", "../admin", "acme/app/../../admin", "./app", "acme/.",
    "acme%2F..%2Fadmin", "acme/app%2F..", "acme/app?admin=1", "acme/app#x", "acme/app/", "/acme/app",
    "acme//app", "acme\\..\\admin", "acme/app\n", "acme/app\r\nHost: evil", "acme/app ", "acme/\u0430pp",
    "acme/app;x", "acme/app@evil.com", "acme:pw/app", "",
]


@pytest.mark.parametrize("forge", ["github", "gitea", "gitlab"])
@pytest.mark.parametrize("repository", PATH_TRICKS)
def test_a_repository_name_cannot_change_the_url_path(forge: str, repository: str) -> None:
    with pytest.raises(ValueError, match="repository"):
        build(forge, repository=repository)


@pytest.mark.parametrize("sha", [SHA + "/../../admin", SHA + "?x=1", SHA + "#x", SHA + "\n", "../" + SHA[3:],
                                 SHA[:-1] + "/", "HEAD~1" + SHA[6:], SHA + " ", "%30" + SHA[3:], SHA.upper() + "0"])
def test_sha_injection_is_refused(sha: str) -> None:
    with pytest.raises(ValueError, match="sha"):
        build(sha=sha)


@settings(max_examples=300, deadline=None)
@given(forge=st.sampled_from(["github", "gitea", "gitlab"]),
       repository=st.lists(st.sampled_from([*"ab./%?#\\-_ \n:@;", "..", "\u0430", "%2F", "%2e"]),
                           max_size=12).map("".join))
def test_whatever_is_accepted_stays_under_the_configured_api(forge: str, repository: str) -> None:
    """Fuzz: any repository either is refused or gives a URL on the same host, under the
    API path, with no dot segment, query or fragment, ending in /statuses/<sha>."""
    try:
        req = build(forge, repository=repository)
    except ValueError:
        return
    parts = urlsplit(req.url)
    assert (parts.scheme, parts.netloc) == ("https", "forge.example.com")
    assert not parts.query and not parts.fragment
    segments = parts.path.split("/")
    assert not {".", ".."} & set(segments) and "" not in segments[1:]
    prefix = "/api/projects/" if forge == "gitlab" else "/api/repos/"
    assert parts.path.startswith(prefix) and parts.path.endswith(f"/statuses/{SHA}")
    middle = parts.path[len(prefix):-len(f"/statuses/{SHA}")]
    assert middle.count("/") == (0 if forge == "gitlab" else 1)


# -- status_api ----------------------------------------------------------------------


@pytest.mark.parametrize("status_api", [
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://forge.example.com", "data:,x",
    "javascript:alert(1)", "dict://127.0.0.1:11211/", "ldap://x", "//forge.example.com/api",
    "forge.example.com/api", "https:forge.example.com",
])
def test_a_non_http_status_api_is_refused(status_api: str) -> None:
    with pytest.raises(ValueError, match="status_api"):
        build(status_api=status_api)


@pytest.mark.parametrize("status_api", ["https://bot:hunter2pass@forge.example.com/api",
                                        "https://hunter2pass@forge.example.com", "HTTP://u:hunter2pass@h/api",
                                        "https://forge.example.com@evil.example/api"])
def test_a_status_api_with_credentials_is_refused_without_echoing_them(status_api: str) -> None:
    with pytest.raises(ValueError, match="credentials") as caught:
        build(status_api=status_api)
    assert "hunter2pass" not in str(caught.value) and "evil" not in str(caught.value)


@pytest.mark.parametrize("status_api", ["https://forge.example.com/api?token=x", "https://forge.example.com/api#x",
                                        "https://forge.example.com/api/../admin",
                                        "https://forge.example.com/api/%2e%2e/admin",
                                        "https://forge.example.com/api\n", "https://forge .example.com"])
def test_a_status_api_that_would_bend_the_path_is_refused(status_api: str) -> None:
    with pytest.raises(ValueError, match="status_api"):
        build(status_api=status_api)


# -- the token stays secret -----------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN + "\r\nX-Evil: 1", TOKEN + " ", TOKEN + "\u00e9", "\n" + TOKEN])
def test_a_token_that_could_split_a_header_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(ValueError) as caught:
        build(token=token)
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)


def test_every_other_refusal_leaves_the_token_out_too() -> None:
    for overrides in [{"sha": "zz"}, {"repository": "a/../b"}, {"status_api": "file:///x"},
                      {"context": ""}, {"forge": "svn"}, {"state": "weird"}, {"target_url": "ftp://x"}]:
        with pytest.raises(ValueError) as caught:
            build(**overrides)
        assert TOKEN not in str(caught.value)


def test_the_request_repr_hides_the_token() -> None:
    for forge in ("github", "gitlab", "gitea"):
        assert TOKEN not in repr(build(forge)) and TOKEN not in str(build(forge))


@pytest.mark.parametrize("forge", ["github", "gitlab", "gitea"])
def test_a_forge_echoing_the_token_does_not_put_it_in_events_or_logs(
        forge: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    events = Collect()
    with recording_forge() as server:
        server.fail_next(1, 503, body=f"upstream said: token {TOKEN} rejected".encode())
        server.fail_next(1, 403, body=f'{{"message": "PRIVATE-TOKEN {TOKEN} lacks api scope"}}'.encode())
        with StatusSender(delay=FAST) as sender:
            sender.submit(build(forge, status_api=server.url), events)
            assert sender.wait_idle(5)
    assert [e["outcome"] for e in events] == ["retrying", "gave_up"]
    assert TOKEN not in repr(events) and "***" in events[-1]["error"]
    assert TOKEN not in caplog.text


def test_a_connection_error_event_has_no_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    events = Collect()
    with StatusSender(delay=FAST) as sender:
        sender.submit(build(status_api=f"http://127.0.0.1:{free_port()}"), events)
        assert sender.wait_idle(5)
    assert events[-1]["outcome"] == "gave_up"
    assert TOKEN not in repr(events) and TOKEN not in caplog.text


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_so_the_token_stays_with_the_forge(code: int) -> None:
    events = Collect()
    with recording_forge() as forge, recording_forge() as elsewhere:
        forge.fail_next(1, code, headers={"Location": f"{elsewhere.url}/steal"})
        with StatusSender(delay=FAST) as sender:
            sender.submit(build(status_api=forge.url), events)
            assert sender.wait_idle(5)
        time.sleep(0.05)
        assert elsewhere.calls == []
    assert len(forge.calls) == 1
    assert [(e["outcome"], e["http_status"]) for e in events] == [("gave_up", code)]
