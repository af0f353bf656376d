"""A cookie-keeping HTTP client for the web UI's tests: no redirect is followed and every
`Set-Cookie` is visible, so tests can check what the server sets and replay what it
should refuse."""
from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebClient:
    url: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None, body: Any = None,
                headers: dict[str, str] | None = None, keep_cookies: bool = True) -> Answer:
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
        sent = dict(headers or {})
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        if self.cookies and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.headers, response.read().decode("utf-8", "replace"))
        finally:
            conn.close()
        if keep_cookies:
            for raw in answer.set_cookies:
                jar = SimpleCookie()
                jar.load(raw)
                for name, morsel in jar.items():
                    if morsel["max-age"] == "0" or morsel.value == "" or "1970" in (morsel["expires"] or ""):
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
        return answer

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Answer:
        return self.request("POST", path, **kw)

    def login(self, token: str, next_path: str = "/") -> Answer:
        answer = self.post("/login", form={"token": token, "next": next_path})
        assert answer.status == 303, (answer.status, answer.body[:500])
        return answer

    def csrf(self, path: str = "/") -> str:
        page = self.get(path)
        assert page.status == 200, page.status
        match = re.search(r'data-csrf="([^"]*)"', page.body)
        assert match and match.group(1), "no CSRF token in the page"
        return match.group(1)
