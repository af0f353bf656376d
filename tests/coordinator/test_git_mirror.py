"""Repository mirrors for `conveyor server`, against real git repositories made here.

Every upstream is a bare repository plus a working clone that pushes to it (a fork is a
second such pair). Some tests serve the upstream over smart HTTP (`git http-backend`
behind a small server in this process) to count fetch sessions and to delay or hang them.
Assertions are about our outcomes and our errors, never about git's wording.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from coordinator.git_mirror import (
    FetchTimeout,
    FileTooLarge,
    InvalidInput,
    Mirror,
    MirrorError,
    check_path,
    check_ref,
    check_sha,
    mirror_dir_name,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}
PIPELINE = ".conveyor.yml"


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], input=input, capture_output=True, env=GIT_ENV,
                          umask=0o022)
    assert done.returncode == 0, f"git {args}: {done.stderr.decode()}"
    return done.stdout.decode().strip()


class Upstream:
    """A bare repository (what the forge hosts) and a working clone that pushes to it."""

    def __init__(self, base: Path, name: str, clone_of: "Upstream | None" = None) -> None:
        self.bare = base / f"{name}.git"
        self.work = base / f"{name}-work"
        if clone_of is None:
            git(base, "init", "-q", "--bare", "-b", "main", str(self.bare))
        else:
            git(base, "clone", "-q", "--bare", str(clone_of.bare), str(self.bare))
        git(base, "clone", "-q", str(self.bare), str(self.work))
        git(self.work, "checkout", "-q", "-B", "main")

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | bytes | None], message: str = "change", *,
               executable: tuple[str, ...] = (), links: dict[str, str] | None = None) -> str:
        """Write (None: delete) `files`, make `links`, commit everything; returns the sha."""
        for path, content in files.items():
            target = self.work / path
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            os.chmod(target, 0o755 if path in executable else 0o644)
        for path, link_target in (links or {}).items():
            (self.work / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link_target, self.work / path)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.work, "rev-parse", "HEAD")

    def push(self, *refspecs: str, force: bool = False) -> None:
        git(self.work, "push", "-q", *(["--force"] if force else []), "origin", *(refspecs or ("main",)))


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path, "origin")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def refs_of(mirror: Mirror) -> dict[str, str]:
    out = git(mirror.path, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ") for line in out.splitlines() if line)


def assert_one_line(error: BaseException) -> None:
    assert str(error) and "\n" not in str(error)


# -- smart HTTP upstream (git http-backend) -------------------------------------------------

class GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, project_root: Path, delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _GitHttpHandler)
        self.project_root = project_root
        self.delay = delay
        self.sessions = 0  # fetch sessions: GET info/refs?service=git-upload-pack
        self.sent = 0  # bytes of upload-pack answers (refs and packs)
        self.count_lock = threading.Lock()

    def url(self, repo: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.server_address[1]}/{repo}"


class _GitHttpHandler(BaseHTTPRequestHandler):
    server: GitHttpServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        if self.command == "GET" and "service=git-upload-pack" in query:
            with self.server.count_lock:
                self.server.sessions += 1
            time.sleep(self.server.delay)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                body += chunk
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.server.project_root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command, "PATH_INFO": path,
               "QUERY_STRING": query, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
               "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = re.split(rb"(\r?\n\r?\n)", out, maxsplit=1) if re.search(rb"\r?\n\r?\n", out) \
            else (out, b"", b"")
        status, headers = 200, []
        for line in head.splitlines():
            name, _, value = line.decode().partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        with self.server.count_lock:
            self.server.sent += len(payload)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def http_upstream(tmp_path: Path, upstream: Upstream) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """An http:// URL whose server accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://robot:hunter2secret@127.0.0.1:{sock.getsockname()[1]}/repo.git"
    sock.close()


# -- validation of hostile input ------------------------------------------------------------

@pytest.mark.parametrize("sha", ["", "abc", "g" * 40, "a" * 39, "a" * 41, "a" * 63, "-" + "a" * 39,
                                 "a" * 39 + "\n", " " + "a" * 40, "HEAD", "main", "a" * 40 + "^{tree}", None, 7])
def test_a_sha_must_be_40_or_64_hex_digits(sha: object) -> None:
    with pytest.raises(InvalidInput):
        check_sha(sha)


def test_full_shas_are_accepted_in_lower_case() -> None:
    assert check_sha("AB" * 20) == "ab" * 20
    assert check_sha("0f" * 32) == "0f" * 32


HOSTILE_REFS = [
    "main", "-main", "--upload-pack=touch /tmp/pwned", "refs/heads/../x", "refs/heads/a..b",
    "refs/heads/x.lock", "refs/heads/x.lock/y", "refs/heads/.hidden", "refs/heads/a b", "refs/heads/a~1",
    "refs/heads/a^", "refs/heads/a:b", "refs/heads/a?", "refs/heads/*", "refs/heads/a[", "refs/heads/a\\b",
    "refs/heads/a@{1}", "refs/heads/x/", "refs/heads//x", "refs/heads/x.", "refs/heads/a\x00b",
    "refs/heads/a\x7f", "refs/heads/a\tb", "refs/heads/a\nb", "refs/", "refs/heads/" + "x" * 2000,
    "refs/heads/\udc80",
]
VALID_REFS = ["refs/heads/main", "refs/heads/feature/x-1", "refs/tags/v1.2.3", "refs/pull/12/head",
              "refs/merge-requests/7/head", "refs/heads/ünïcode", "refs/heads/a@b", "refs/heads/a.b",
              "refs/heads/@", "refs/heads/a-.lck"]


@pytest.mark.parametrize("ref", HOSTILE_REFS)
def test_hostile_refs_are_refused(ref: str) -> None:
    with pytest.raises(InvalidInput):
        check_ref(ref)


@pytest.mark.parametrize("ref", VALID_REFS)
def test_valid_full_refs_are_accepted(ref: str) -> None:
    assert check_ref(ref) == ref


def test_the_ref_rules_agree_with_git_check_ref_format() -> None:
    """Our Python rules against git's own, for every refs/ name above that git can take as an argument."""
    for ref in HOSTILE_REFS + VALID_REFS:
        if not ref.startswith("refs/") or "\x00" in ref or "\udc80" in ref or len(ref) > 1000:
            continue
        ours = True
        try:
            check_ref(ref)
        except InvalidInput:
            ours = False
        theirs = subprocess.run(["git", "check-ref-format", ref], env=GIT_ENV).returncode == 0
        assert ours == theirs, ref


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a//b", "a/", ".git/config",
                                  "sub/.GIT/hooks/x", "a\nb", "a\x00b", ".", "..", None])
def test_hostile_paths_are_refused(path: object) -> None:
    with pytest.raises(InvalidInput):
        check_path(path)


def test_mirror_directories_stay_inside_root_and_apart(root: Path) -> None:
    names = ["acme/app", "acme_app", "../../etc", "..", "/abs/x", ".hidden", "a\x00b", "ü" * 200, "-rf"]
    dirs = {Mirror(root, name, "/nowhere").path for name in names}
    assert len(dirs) == len(names)
    for path in dirs:
        assert path.parent == root / "mirrors"
        assert path.name.endswith(".git") and not path.name.startswith(".") and "/" not in path.name
    assert mirror_dir_name("acme/app").startswith("acme_app-")


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/pwned", "-uhttp://x/y", "fd::7", "ssh://-oProxyCommand=x/y",
                                 "ftp://example.com/x.git", "", "file:///x\nboom"])
def test_hostile_repository_urls_are_refused(root: Path, url: str) -> None:
    with pytest.raises(InvalidInput):
        Mirror(root, "acme/app", url)


def test_bad_input_is_refused_before_anything_is_created(root: Path, upstream: Upstream) -> None:
    mirror = Mirror(root, "acme/app", upstream.url)
    with pytest.raises(InvalidInput):
        mirror.ensure_commit("0" * 40, "refs/heads/main")  # the null sha: a deletion
    with pytest.raises(InvalidInput):
        mirror.ensure_commit("a" * 40, "--upload-pack=touch pwned")
    with pytest.raises(InvalidInput):
        mirror.read_file("a" * 40, "../secret")
    assert not (root / "mirrors").exists()


# -- fetching ------------------------------------------------------------------------------

def test_first_delivery_creates_the_mirror_and_a_present_commit_is_not_fetched_again(
        root: Path, upstream: Upstream, tmp_path: Path) -> None:
    c1 = upstream.commit({PIPELINE: "v1"})
    upstream.push("main")
    git(upstream.work, "checkout", "-q", "-b", "other")
    upstream.push("other")
    git(upstream.work, "checkout", "-q", "main")

    first = Mirror(root, "acme/app", upstream.url).ensure_commit(c1, "refs/heads/main")
    mirror = Mirror(root, "acme/app", upstream.url)
    assert (first.commit, first.fetched) == (c1, True)
    assert git(mirror.path, "rev-parse", "--is-bare-repository") == "true"
    assert refs_of(mirror) == {"refs/heads/main": c1}  # what was asked for, not every branch

    upstream.bare.rename(tmp_path / "away.git")  # no fetch can succeed now
    again = mirror.ensure_commit(c1, "refs/heads/main", timeout=5)
    assert (again.commit, again.fetched) == (c1, False)
    (tmp_path / "away.git").rename(upstream.bare)

    c2 = upstream.commit({PIPELINE: "v2"})
    upstream.push("main")
    assert mirror.ensure_commit(c2, "refs/heads/main").fetched
    assert refs_of(mirror) == {"refs/heads/main": c2}
    assert mirror.has_commit(c1) and mirror.has_commit(c2)


def test_a_later_delivery_transfers_only_the_new_objects(
        root: Path, upstream: Upstream, http_upstream: GitHttpServer) -> None:
    c1 = upstream.commit({"big.bin": os.urandom(1024 * 1024), "a": "1"})  # incompressible
    upstream.push("main")
    mirror = Mirror(root, "acme/app", http_upstream.url(upstream.bare.name))
    mirror.ensure_commit(c1, "refs/heads/main")
    assert http_upstream.sent > 1024 * 1024
    c2 = upstream.commit({"a": "2"})
    upstream.push("main")
    http_upstream.sent = 0
    assert mirror.ensure_commit(c2, "refs/heads/main").fetched
    assert http_upstream.sent < 64 * 1024  # the mirror's refs told the server what it already has


def test_a_commit_the_ref_has_moved_past_is_fetched_by_id(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    c2 = upstream.commit({"a": "2"})
    upstream.push("main")
    git(upstream.work, "reset", "-q", "--hard", c1)
    upstream.commit({"a": "3"})
    upstream.push("main", force=True)  # c2 is on no branch now, only in the object store
    mirror = Mirror(root, "acme/app", upstream.url)
    assert mirror.ensure_commit(c2, "refs/heads/main").commit == c2
    assert mirror.read_file(c2, "a") == b"2"
    assert mirror.ensure_commit(c1, None).fetched is False  # c1 came with the branch


def test_a_commit_the_repository_does_not_have_is_a_clear_error(root: Path, upstream: Upstream) -> None:
    upstream.commit({"a": "1"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    with pytest.raises(MirrorError) as caught:
        mirror.ensure_commit("ab" * 20, "refs/heads/main", timeout=30)
    assert not isinstance(caught.value, (InvalidInput, FetchTimeout))
    assert "ab" * 20 in str(caught.value) and "acme/app" in str(caught.value)
    assert_one_line(caught.value)
    with pytest.raises(MirrorError):
        mirror.ensure_commit("ab" * 20, "refs/heads/no-such-branch", timeout=30)


def test_a_force_pushed_branch_moves_and_the_old_commit_stays_readable(root: Path, upstream: Upstream) -> None:
    base = upstream.commit({"a": "base", "b": "base"})
    old = upstream.commit({"a": "old"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(old, "refs/heads/main")
    git(upstream.work, "reset", "-q", "--hard", base)
    new = upstream.commit({"b": "rewritten", "c": "new"})
    upstream.push("main", force=True)

    assert mirror.ensure_commit(new, "refs/heads/main").fetched
    assert refs_of(mirror)["refs/heads/main"] == new
    assert mirror.read_file(old, "a") == b"old"
    assert mirror.read_file(new, "a") == b"base"
    # A force push compares the trees: `a` is back to base, `b` and `c` changed.
    assert mirror.changed_paths(old, new, "main") == ["a", "b", "c"]


def test_tags_lightweight_and_annotated(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({PIPELINE: "tagged"})
    git(upstream.work, "tag", "v1")
    git(upstream.work, "tag", "-a", "-m", "release", "v2")
    upstream.commit({PIPELINE: "later"})
    upstream.push("main", "refs/tags/v1", "refs/tags/v2")
    tag_object = git(upstream.bare, "rev-parse", "refs/tags/v2")
    assert tag_object != c1

    mirror = Mirror(root, "acme/app", upstream.url)
    assert mirror.ensure_commit(c1, "refs/tags/v1").commit == c1
    annotated = mirror.ensure_commit(tag_object, "refs/tags/v2")
    assert annotated.commit == c1  # the run is for the commit the tag points at
    assert mirror.read_file(tag_object, PIPELINE) == b"tagged"
    assert refs_of(mirror)["refs/tags/v2"] == tag_object
    assert mirror.fetch_ref("refs/heads/main") != c1


def test_fetch_ref_resolves_a_branch_for_api_triggers(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    assert mirror.fetch_ref("refs/heads/main") == c1
    with pytest.raises(MirrorError):
        mirror.fetch_ref("refs/heads/missing", timeout=30)


# -- concurrency -------------------------------------------------------------------------------

def test_twenty_concurrent_deliveries_in_threads_fetch_once(
        root: Path, upstream: Upstream, http_upstream: GitHttpServer) -> None:
    c1 = upstream.commit({PIPELINE: "v1"})
    upstream.push("main")
    http_upstream.delay = 0.3  # every caller arrives while the first fetch is still running
    url = http_upstream.url(upstream.bare.name)
    start = threading.Barrier(20)

    def deliver(_: int):
        start.wait()
        return Mirror(root, "acme/app", url).ensure_commit(c1, "refs/heads/main", timeout=60)

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(deliver, range(20)))
    assert {r.commit for r in results} == {c1}
    assert sum(r.fetched for r in results) == 1
    assert http_upstream.sessions == 1
    mirror = Mirror(root, "acme/app", url)
    assert refs_of(mirror) == {"refs/heads/main": c1}
    assert subprocess.run(["git", "--git-dir", str(mirror.path), "fsck", "--no-progress"], env=GIT_ENV,
                          capture_output=True).returncode == 0
    assert sorted(p.name for p in (root / "mirrors").iterdir()) == sorted([mirror.path.name, mirror.lock_path.name,
                                                                            "tmp"])


_PROCESS_SCRIPT = """
import json, sys, threading, time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from coordinator.git_mirror import Mirror
root, url, sha, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
def deliver(_):
    r = Mirror(root, "acme/app", url).ensure_commit(sha, "refs/heads/main", timeout=60)
    return [r.commit, r.fetched]
with ThreadPoolExecutor(10) as pool:
    print(json.dumps(list(pool.map(deliver, range(10)))), flush=True)
"""


def test_twenty_concurrent_deliveries_in_two_processes_fetch_once(
        root: Path, upstream: Upstream, http_upstream: GitHttpServer, tmp_path: Path) -> None:
    c1 = upstream.commit({PIPELINE: "v1"})
    upstream.push("main")
    http_upstream.delay = 0.3
    url = http_upstream.url(upstream.bare.name)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, str(root), url, c1, str(go)],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            results += json.loads(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(results) == 20
    assert {commit for commit, _ in results} == {c1}
    assert sum(fetched for _, fetched in results) == 1
    assert http_upstream.sessions == 1
    assert refs_of(Mirror(root, "acme/app", url)) == {"refs/heads/main": c1}


def test_a_delivery_waits_for_another_process_holding_the_mirror(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.lock_path.parent.mkdir(parents=True)
    with open(mirror.lock_path, "a") as held:  # as another process's fetch would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(FetchTimeout) as caught:
            mirror.ensure_commit(c1, "refs/heads/main", timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert_one_line(caught.value)
    assert mirror.ensure_commit(c1, "refs/heads/main", timeout=30).fetched  # released: it goes ahead


def test_a_hanging_fetch_times_out_without_credentials_and_leaves_a_usable_mirror(
        root: Path, upstream: Upstream, hanging_url: str) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    started = time.monotonic()
    with pytest.raises(FetchTimeout) as caught:
        Mirror(root, "acme/app", hanging_url).ensure_commit(c1, "refs/heads/main", timeout=1.0)
    assert time.monotonic() - started < 10
    assert "hunter2secret" not in str(caught.value)
    assert_one_line(caught.value)
    # The same repository, its URL fixed in the config: the mirror works.
    assert Mirror(root, "acme/app", upstream.url).ensure_commit(c1, "refs/heads/main", timeout=30).commit == c1


def test_failures_never_show_the_urls_credentials(root: Path, http_upstream: GitHttpServer) -> None:
    url = http_upstream.url("no-such-repo.git", userinfo="robot:hunter2secret")
    with pytest.raises(MirrorError) as caught:
        Mirror(root, "acme/app", url).ensure_commit("ab" * 20, "refs/heads/main", timeout=30)
    assert "hunter2secret" not in str(caught.value)
    assert_one_line(caught.value)
    mirror = Mirror(root, "acme/app", url)
    assert "hunter2secret" not in git(mirror.path, "config", "--list")  # not stored on disk either
    assert "hunter2secret" not in repr(mirror)


def test_git_ignores_the_servers_git_environment_and_user_config(
        root: Path, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    home = tmp_path / "home"
    home.mkdir()
    # A user config that would send every file:// fetch elsewhere, and variables that would
    # point git at another repository or inject config.
    (home / ".gitconfig").write_text('[url "file:///nonexistent/"]\n\tinsteadOf = file://\n')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'url.file:///nowhere/.insteadof'='file://'")
    mirror = Mirror(root, "acme/app", upstream.url)
    assert mirror.ensure_commit(c1, "refs/heads/main").commit == c1
    assert mirror.read_file(c1, "a") == b"1"
    assert not (tmp_path / "elsewhere.git").exists()


def test_git_messages_are_cut_to_one_line_without_credentials() -> None:
    from coordinator.git_mirror import _last_line

    url = "https://robot:hunter2secret@git.example.com/acme/app.git"
    stderr = (f"warning: first\r\nfatal: unable to access '{url}': boom\n"
              "also https://other:pw2secret@host/x and robot:hunter2secret alone\n").encode()
    line = _last_line(stderr, (url,))
    assert "\n" not in line and "\r" not in line and "hunter2secret" not in line
    assert line == "fatal: unable to access 'https://***@git.example.com/acme/app.git': boom"  # not the advice
    line = _last_line(stderr.replace(b"fatal:", b"note:"), (url,))  # no error line: the last one
    assert line.startswith("also ") and "hunter2secret" not in line and "pw2secret" not in line


def test_a_git_lock_left_by_a_killed_fetch_does_not_block_the_next_one(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(c1, "refs/heads/main")
    (mirror.path / "refs" / "heads" / "main.lock").write_text(c1 + "\n")
    (mirror.path / "packed-refs.lock").write_text("")
    c2 = upstream.commit({"a": "2"})
    upstream.push("main")
    assert mirror.ensure_commit(c2, "refs/heads/main").commit == c2
    assert refs_of(mirror)["refs/heads/main"] == c2


# -- reading -------------------------------------------------------------------------------

def test_the_pipeline_is_read_at_the_pushed_commit_not_the_newest(root: Path, upstream: Upstream) -> None:
    c1 = upstream.commit({PIPELINE: "name: one\n", "ci/real.yml": "real\n", "dir/x": "x"},
                         links={"linked.yml": "ci/real.yml", "outside.yml": "../../etc/passwd"})
    c2 = upstream.commit({PIPELINE: "name: two\n"})
    c3 = upstream.commit({PIPELINE: None})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    with pytest.raises(MirrorError):
        mirror.read_file(c1, PIPELINE)  # not fetched yet
    mirror.ensure_commit(c3, "refs/heads/main")
    assert mirror.read_file(c1, PIPELINE) == b"name: one\n"
    assert mirror.read_file(c2, PIPELINE) == b"name: two\n"
    assert mirror.read_file(c3, PIPELINE) is None
    assert mirror.read_file(c1, "dir") is None
    assert mirror.read_file(c1, "nope/nope.yml") is None
    assert mirror.read_file(c1, "linked.yml") == b"real\n"  # followed inside the tree, as a checkout would
    assert mirror.read_file(c1, "outside.yml") is None
    with pytest.raises(FileTooLarge):
        mirror.read_file(c1, PIPELINE, max_bytes=5)


def test_changed_paths_of_a_push(root: Path, upstream: Upstream) -> None:
    before = upstream.commit({"a": "1", "c": "1", "d": "1", "keep": "1"})
    after = upstream.commit({"a": "2", "b": "new", "c": None, "d": None, "e": "1", "src/deep/f.py": "f"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(after, "refs/heads/main")
    assert mirror.changed_paths(before, after, "main") == ["a", "b", "c", "d", "e", "src/deep/f.py"]
    assert mirror.changed_paths(after, after, "main") == []


def test_changed_paths_of_a_new_branch_are_since_its_merge_base(root: Path, upstream: Upstream) -> None:
    upstream.commit({"base": "1"})
    upstream.push("main")
    git(upstream.work, "checkout", "-q", "-b", "feature")
    upstream.commit({"feature/x.py": "x"})
    tip = upstream.commit({"feature/y.py": "y"})
    upstream.push("feature")
    git(upstream.work, "checkout", "-q", "main")
    main_tip = upstream.commit({"main-only": "moved on"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(tip, "refs/heads/feature")

    assert mirror.changed_paths(None, tip, "main") == ["feature/x.py", "feature/y.py"]
    assert mirror.changed_paths("0" * 40, tip, "refs/heads/main") == ["feature/x.py", "feature/y.py"]
    assert refs_of(mirror)["refs/heads/main"] == main_tip  # the default branch was fetched for it
    assert mirror.changed_paths(None, tip, None) is None
    assert mirror.changed_paths(None, tip, "no-such-default", timeout=30) is None
    assert mirror.changed_paths(None, main_tip, "main") == []  # nothing beyond the default branch


def test_changed_paths_cannot_tell_for_unrelated_history(root: Path, upstream: Upstream) -> None:
    upstream.commit({"a": "1"})
    upstream.push("main")
    git(upstream.work, "checkout", "-q", "--orphan", "pages")
    orphan = upstream.commit({"index.html": "x"})
    upstream.push("pages")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(orphan, "refs/heads/pages")
    assert mirror.changed_paths(None, orphan, "main") is None
    assert mirror.changed_paths("cd" * 20, orphan, "main", timeout=30) is None  # `before` nowhere to be found


# -- forks and pull requests ------------------------------------------------------------------

def test_a_forks_commit_comes_only_from_the_pr_ref_or_when_asked_for_explicitly(
        root: Path, upstream: Upstream, tmp_path: Path) -> None:
    main = upstream.commit({"a": "base"})
    upstream.push("main")
    fork = Upstream(tmp_path, "fork", clone_of=upstream)
    git(fork.work, "checkout", "-q", "-b", "feature")
    pr_head = fork.commit({"a": "from the fork"})
    fork.push("feature")

    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(main, "refs/heads/main")
    with pytest.raises(MirrorError):  # the base repository has no such commit, under any name
        mirror.ensure_commit(pr_head, "refs/heads/feature", timeout=30)
    assert not mirror.has_commit(pr_head)

    explicit = mirror.ensure_commit(pr_head, "refs/heads/feature", from_url=fork.url)
    assert explicit.commit == pr_head
    refs = refs_of(mirror)
    assert "refs/heads/feature" not in refs  # the fork's branch never lands on the base's names
    assert [r for r, sha in refs.items() if sha == pr_head and r.startswith("refs/conveyor/forks/")]

    # What forges do: the pull request's head is published in the base repository.
    git(fork.work, "push", "-q", str(upstream.bare), "feature:refs/pull/1/head")
    other = Mirror(root / "second", "acme/app", upstream.url)
    assert other.ensure_commit(pr_head, "refs/pull/1/head").commit == pr_head
    assert other.read_file(pr_head, "a") == b"from the fork"


@pytest.mark.parametrize("fork_url", ["https://github.com/someone/app.git", "ext::sh -c id",
                                      "file:///tmp/x\nboom", "-ufile:///x"])
def test_fork_urls_must_use_the_repositorys_own_transport(root: Path, upstream: Upstream, fork_url: str) -> None:
    c1 = upstream.commit({"a": "1"})
    upstream.push("main")
    with pytest.raises(InvalidInput):
        Mirror(root, "acme/app", upstream.url).ensure_commit(c1, "refs/heads/main", from_url=fork_url)


def test_fork_urls_with_credentials_are_refused(root: Path, http_upstream: GitHttpServer) -> None:
    mirror = Mirror(root, "acme/app", http_upstream.url("origin.git"))
    with pytest.raises(InvalidInput) as caught:
        mirror.ensure_commit("ab" * 20, "refs/heads/x", from_url=http_upstream.url("f.git", "u:topsecret"))
    assert "topsecret" not in str(caught.value)


# -- the tree as a snapshot ------------------------------------------------------------------

def _rich_tree(upstream: Upstream) -> str:
    """A commit with what a checkout must reproduce: modes, links, odd names, a submodule."""
    upstream.commit(
        {"README.md": "hello\n", "bin/run.sh": "#!/bin/sh\necho run\n", "src/app/main.py": "print(1)\n",
         "src/app/copy.py": "print(1)\n", "data/blob.bin": bytes(range(256)) * 40, "empty": "",
         "with space/ünïcode name.txt": "odd\n", PIPELINE: "name: mirrored\njobs:\n  build:\n    steps:\n"
         "      - {name: s, script: [echo hi]}\n"},
        executable=("bin/run.sh",), links={"link-to-file": "src/app/main.py", "src/link-to-dir": "app",
                                           "dangling": "does/not/exist"})
    sub_sha = "12" * 20  # a gitlink: a submodule pinned at a commit of another repository
    git(upstream.work, "update-index", "--add", "--cacheinfo", f"160000,{sub_sha},vendor/lib")
    git(upstream.work, "commit", "-q", "-m", "submodule")
    return git(upstream.work, "rev-parse", "HEAD")


def _checkout(upstream: Upstream, sha: str, dest: Path) -> Path:
    """A real clone at `sha` with umask 022: what a CLI user's working tree would be."""
    git(dest.parent, "clone", "-q", "--no-checkout", str(upstream.bare), str(dest))
    git(dest, "checkout", "-q", sha)
    return dest


def _tree_of(root: Path) -> dict[str, tuple[str, object]]:
    """path -> ("link", target) or ("file", (content, executable)), minus .git and empty dirs."""
    found: dict[str, tuple[str, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", (path.read_bytes(), os.access(path, os.X_OK)))
    return found


def test_an_exported_tree_equals_a_checkout_and_its_manifest_a_cli_snapshots(
        root: Path, upstream: Upstream, tmp_path: Path) -> None:
    from shared.artifacts.source import source_manifest

    sha = _rich_tree(upstream)
    upstream.commit({"README.md": "newer\n"})  # the export is of `sha`, not of the branch
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(sha, "refs/heads/main")
    old_umask = os.umask(0o077)  # the server's umask must not change the modes
    try:
        export = mirror.export_tree(sha, tmp_path / "export")
    finally:
        os.umask(old_umask)
    checkout = _checkout(upstream, sha, tmp_path / "checkout")

    assert export.skipped_submodules == ("vendor/lib",)
    exported = _tree_of(tmp_path / "export")
    assert exported == {k: v for k, v in _tree_of(checkout).items()}
    assert exported["bin/run.sh"][1][1] is True and exported["README.md"][1] == (b"hello\n", False)
    assert exported["src/link-to-dir"] == ("link", "app")
    # Byte for byte the manifest `conveyor submit` stores for that checkout: same digest.
    assert export.manifest.to_bytes() == source_manifest(checkout).to_bytes()


def test_a_link_leaving_the_tree_refuses_the_export(root: Path, upstream: Upstream, tmp_path: Path) -> None:
    sha = upstream.commit({"ok": "1"}, links={"escape": "../../../etc/passwd"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(sha, "refs/heads/main")
    with pytest.raises(MirrorError) as caught:
        mirror.export_tree(sha, tmp_path / "export")
    assert "escape" in str(caught.value)
    assert_one_line(caught.value)
    assert not (tmp_path / "export").exists()


def _hostile_commit(upstream: Upstream, entries: list[tuple[str, str, str]], branch: str) -> str:
    """A commit of a hand-made tree (as a hostile server could serve: git itself never makes one)."""
    def tree(items: list[tuple[str, str, str]]) -> str:
        raw = b"".join(f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid) for mode, name, oid in items)
        return git(upstream.bare, "hash-object", "-w", "--literally", "-t", "tree", "--stdin", input=raw)

    def resolve(items):
        return [(mode, name, tree(resolve(oid)) if isinstance(oid, list) else
                 git(upstream.bare, "hash-object", "-w", "--stdin", input=oid.encode())) for mode, name, oid in items]

    sha = git(upstream.bare, "commit-tree", tree(resolve(entries)), "-m", "hostile")
    git(upstream.bare, "update-ref", f"refs/heads/{branch}", sha)
    return sha


@pytest.mark.parametrize("entries", [
    # `d` a link out of the tree and `d/x` beneath it: writing d/x would land outside.
    [("120000", "d", "../outside"), ("40000", "d", [("120000", "x", "planted")])],
    [("120000", "d", "../outside"), ("40000", "d", [("100644", "x", "planted")])],
    [("40000", "..", [("100644", "outside-x", "planted")])],
    [("40000", ".git", [("100644", "config", "[core]\n")])],
    [("100644", "twice", "1"), ("100644", "twice", "2")],
], ids=["link-under-link", "file-under-link", "dot-dot", "dot-git", "duplicate"])
def test_a_hostile_tree_is_refused_and_nothing_lands_outside(
        root: Path, upstream: Upstream, tmp_path: Path, entries) -> None:
    (tmp_path / "outside").mkdir()
    sha = _hostile_commit(upstream, entries, "evil")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(sha, "refs/heads/evil")
    with pytest.raises(MirrorError) as caught:
        mirror.export_tree(sha, tmp_path / "export")
    assert_one_line(caught.value)
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "outside-x").exists() and not (tmp_path / "export").exists()


def test_a_snapshot_restored_by_the_workers_code_equals_the_tree_at_that_commit(
        root: Path, upstream: Upstream, tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    from coordinator.frontend import load_text
    from coordinator.submit import new_run_id, snapshot_source
    from shared.config import Settings
    from shared.state.base import RunRecord
    from worker.artifacts import ArtifactAccess, fetch_inputs

    sha = _rich_tree(upstream)
    upstream.commit({"README.md": "newer\n", "src/app/main.py": "print(2)\n"})
    upstream.push("main")
    mirror = Mirror(root, "acme/app", upstream.url)
    mirror.ensure_commit(sha, "refs/heads/main")
    settings = Settings(artifacts_url=f"s3://{s3_bucket}/conveyor", s3_endpoint_url=s3_endpoint,
                        state_url=f"sqlite:///{tmp_path / 'state.db'}", data_dir=root)
    run_id = new_run_id()
    loaded = load_text(mirror.read_file(sha, PIPELINE), PIPELINE, run_id=run_id)
    assert loaded.ok, loaded.diagnostics
    plan = loaded.plan

    meta = mirror.snapshot(sha, settings, run_id, plan)
    assert meta["source_commit"] == sha
    assert meta["source_skipped_submodules"] == ["vendor/lib"]
    assert meta["source_files"] == 11 and meta["source_uploaded_bytes"] > 0

    class Sink:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def system(self, text: str) -> None:
            self.lines.append(text)

    workspace = tmp_path / "workspace"
    access = ArtifactAccess(settings.effective_artifacts_url, settings.effective_state_url, s3_endpoint)
    run = RunRecord(run_id, plan.pipeline, "running", "2026-01-01T00:00:00Z", None, False, meta)
    fetch_inputs(access, plan, plan.jobs["build"], run, workspace, Sink())
    checkout = _checkout(upstream, sha, tmp_path / "checkout")
    assert _tree_of(workspace) == _tree_of(checkout)

    # The CLI's snapshot of that checkout is the very same stored tree.
    cli = snapshot_source(settings, new_run_id(), plan, checkout)
    assert cli["source_manifest"] == meta["source_manifest"]
    assert {k: cli[k] for k in ("source_files", "source_bytes")} == {
        k: meta[k] for k in ("source_files", "source_bytes")}
    assert cli["source_uploaded_bytes"] == 0  # every object was already stored
