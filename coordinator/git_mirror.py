"""Bare mirrors of the configured repositories: what `conveyor server` builds runs from.

A webhook names a repository, a ref and a commit; the server fetches that commit into a
bare mirror under the data directory (`<data dir>/mirrors/<readable>-<hash>.git`, one per
repository), reads the pipeline file at that commit, works out which paths the push
changed, and stores the tree at that commit as the run's source snapshot. No working tree
is ever checked out.

Everything a webhook says is hostile input: shas, refs and paths are checked here before
git sees them, every git call is an argv list with `--` before paths, and git runs with
prompts off and without the user's or the system's config (see `_git_env`).

Concurrency: one fetch at a time per mirror, across threads (a per-mirror
`threading.Lock`) and processes on one host (an exclusive `flock` on
`<mirror>.lock`, which git children inherit so it outlives a killed server). A commit
already present is never fetched; a delivery that waited for another one's fetch looks
again before fetching. Reads (`read_file`, `changed_paths`' diff, `export_tree`) take no
lock: git adds objects and moves refs atomically, so a reader never sees half a fetch.

Pull requests from forks: every forge publishes the head of each pull/merge request in
the *base* repository, so fetch it from there by passing its ref to `ensure_commit` -
GitHub and Gitea `refs/pull/<N>/head`, GitLab `refs/merge-requests/<N>/head`. Fetching
from the fork's own URL (`from_url=`) is possible only when asked for explicitly; its
refs then land under `refs/conveyor/forks/<hash of the URL>/`, never over the base
repository's branches.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from coordinator.frontend import MAX_FILE_BYTES
from coordinator.submit import publish_source
from shared.artifacts.base import PathError
from shared.artifacts.manifest import Manifest, build_manifest_of_paths, check_member_path
from shared.config import Settings, redact_url
from shared.plan import Plan

log = logging.getLogger("conveyor.server.mirror")

# The pipeline loader refuses bigger files, so reading more would only waste memory.
MAX_READ_BYTES = MAX_FILE_BYTES
# Local git commands on the mirror (reads, init, config); fetches get the caller's timeout.
LOCAL_TIMEOUT_S = 120.0
DEFAULT_FETCH_TIMEOUT_S = 300.0
MAX_REF_LENGTH = 1024
MAX_LINK_TARGET = 4096  # PATH_MAX: a longer symlink target cannot be created anyway
_CHUNK = 1024 * 1024
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORTS = frozenset({"file", "git", "http", "https", "ssh"})
_FORK_NAMESPACE = "refs/conveyor/forks"


class MirrorError(Exception):
    """A mirror operation failed; the message is one line, without credentials."""


class InvalidInput(MirrorError, ValueError):
    """A sha, ref, path, name or URL that is refused before git sees it (a webhook's doing)."""


class FetchTimeout(MirrorError):
    """A fetch (or the wait for another delivery's fetch, or a git command on the mirror) took too long."""


class FileTooLarge(MirrorError):
    """`read_file` found a file bigger than its limit."""


@dataclass(frozen=True)
class Ensured:
    """The outcome of `ensure_commit`."""

    commit: str    # the commit: the sha asked for, or the commit an annotated tag's sha points at
    fetched: bool  # this call ran `git fetch` (False: it was already in the mirror)


@dataclass(frozen=True)
class TreeExport:
    """What `export_tree` wrote: exactly the files and symlinks in `manifest`."""

    manifest: Manifest
    skipped_submodules: tuple[str, ...]  # gitlinks: their content lives in another repository


# -- validation of hostile input --------------------------------------------------------

def check_sha(sha: object) -> str:
    """`sha` in lower case if it is a full SHA-1 (40 hex) or SHA-256 (64 hex) object name."""
    if not isinstance(sha, str) or not _SHA.fullmatch(sha.lower()):
        raise InvalidInput(f"invalid commit sha {_shown(sha)}: want 40 or 64 hex digits")
    return sha.lower()


def is_null_sha(sha: str) -> bool:
    """The all-zeros sha forges send as `before` of a new branch and `after` of a deletion."""
    return bool(sha) and set(sha) == {"0"}


def check_ref(ref: object) -> str:
    """`ref` if it is a full ref name (`refs/...`) that `git check-ref-format` accepts.

    The rules are git's, implemented here so nothing reaches git unchecked; a ref always
    starts with `refs/`, so it can never be read as an option.
    """
    if not isinstance(ref, str):
        raise InvalidInput(f"invalid ref {_shown(ref)}: not a string")
    why = _ref_problem(ref)
    if why:
        raise InvalidInput(f"invalid ref {_shown(ref)}: {why}")
    return ref


def _ref_problem(ref: str) -> str | None:
    if not ref.startswith("refs/"):
        return "want a full ref name such as refs/heads/main"
    if len(ref) > MAX_REF_LENGTH:
        return f"longer than {MAX_REF_LENGTH} characters"
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in ref):
        return "contains a control character"
    for bad in (" ", "~", "^", ":", "?", "*", "[", "\\"):
        if bad in ref:
            return f"contains {bad!r}"
    if ".." in ref:
        return "contains '..'"
    if "@{" in ref:
        return "contains '@{'"
    if ref.endswith("/") or "//" in ref:
        return "has an empty component"
    if ref.endswith("."):
        return "ends with '.'"
    for part in ref.split("/"):
        if part.startswith("."):
            return "has a component starting with '.'"
        if part.endswith(".lock"):
            return "has a component ending with '.lock'"
    return None


def branch_ref(branch: str) -> str:
    """`main` -> `refs/heads/main` (a full ref is kept), checked like `check_ref`."""
    if not isinstance(branch, str) or not branch:
        raise InvalidInput(f"invalid branch {_shown(branch)}")
    return check_ref(branch if branch.startswith("refs/") else f"refs/heads/{branch}")


def check_path(path: object) -> str:
    """`path` if it is a normalized relative path inside the repository (no `..`, no `.git`)."""
    if not isinstance(path, str) or "\n" in path or "\r" in path:
        raise InvalidInput(f"invalid path {_shown(path)}")
    try:
        check_member_path(path)
    except PathError as exc:
        raise InvalidInput(f"invalid path {_shown(path)}: {exc}") from None
    if any(part.lower() == ".git" for part in path.split("/")):
        raise InvalidInput(f"invalid path {_shown(path)}: inside .git")
    return path


def mirror_dir_name(name: str) -> str:
    """A directory name for repository `name` that cannot escape its parent or collide.

    The hash keeps names apart that sanitize alike (`a/b` and `a_b`); the readable part
    is only for people looking at the disk.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"invalid repository name {_shown(name)}")
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    readable = _UNSAFE.sub("_", name)[:60].strip("._") or "repo"
    return f"{readable}-{digest}.git"


def _transport(url: str) -> str:
    """How git would reach `url`: file, git, http, https or ssh; refuses everything else.

    `transport::address` (remote helpers such as `ext::`, which runs commands) and URLs
    starting with `-` (options) are refused here; GIT_ALLOW_PROTOCOL refuses them again.
    """
    if not isinstance(url, str) or not url or any(c in url for c in "\0\n\r") or url.startswith("-"):
        raise InvalidInput(f"invalid repository URL {_shown(url)}")
    match = _SCHEME.match(url)
    if match:
        scheme = match.group(1).lower()
        host = urlsplit(url).hostname or ""
        if scheme not in _TRANSPORTS or host.startswith("-"):
            raise InvalidInput(f"unsupported repository URL {redact_url(url)!r}: use https, ssh, git or file")
        return scheme
    if "::" in url:
        raise InvalidInput(f"unsupported repository URL {redact_url(url)!r}: remote helpers are not allowed")
    if url.startswith("/"):
        return "file"
    head = url.split("/", 1)[0]
    return "ssh" if ":" in head else "file"  # git's scp-like `host:path` is ssh


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the mirror ---------------------------------------------------------------------------

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(key: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(key, threading.Lock())


class Mirror:
    """The bare mirror of one repository under `root / "mirrors"`.

    `url` is the operator's (it may carry credentials, which never appear in errors or
    in the mirror's config: it is passed to each fetch instead of being stored).
    Several `Mirror` objects for one repository, in any threads or processes on a host,
    share the same directory and lock.
    """

    def __init__(self, root: Path, name: str, url: str) -> None:
        self.name = name
        self.transport = _transport(url)
        if self.transport == "file" and not url.startswith("file://") and not os.path.isabs(url):
            url = os.path.abspath(url)  # a relative path would depend on the server's cwd
        self.url = url
        self.mirrors_dir = Path(root) / "mirrors"
        self.path = self.mirrors_dir / mirror_dir_name(name)
        self.lock_path = self.path.with_suffix(".lock")

    def __repr__(self) -> str:
        return f"Mirror(name={self.name!r}, url={redact_url(self.url)!r}, path={str(self.path)!r})"

    # -- fetching ---------------------------------------------------------------------

    def ensure_commit(self, sha: str, ref: str | None, timeout: float = DEFAULT_FETCH_TIMEOUT_S, *,
                      from_url: str | None = None) -> Ensured:
        """Make commit `sha` present in the mirror, fetching `ref` (and then `sha` itself) if needed.

        Without `ref` the commit is asked for by id (GitHub, GitLab and Gitea serve any
        reachable commit). `from_url` fetches from another repository (a fork) instead of
        the mirror's own URL; it must use the same transport. `timeout` bounds the whole
        call: waiting for another delivery's fetch and this one's.
        """
        sha = check_sha(sha)
        if is_null_sha(sha):
            raise InvalidInput(f"{sha} is the null commit: a branch deletion starts no run")
        ref = check_ref(ref) if ref is not None else None
        url, local_ref = self._source(from_url, ref)
        deadline = time.monotonic() + timeout
        commit = self._commit_of(sha)
        if commit:
            return Ensured(commit, fetched=False)
        with self._locked(deadline) as lock_fd:
            self._create_if_missing(lock_fd)
            commit = self._commit_of(sha)
            if commit:  # another delivery fetched it while this one waited for the lock
                return Ensured(commit, fetched=False)
            ref_error: MirrorError | None = None
            if ref is not None:
                try:
                    self._fetch(url, [f"+{ref}:{local_ref}"], deadline, lock_fd)
                except FetchTimeout:
                    raise
                except MirrorError as exc:
                    ref_error = exc  # the ref may be gone already (a deleted branch): try the id
                commit = self._commit_of(sha)
            if commit is None:
                # The ref has moved on since the push (or none was given): ask for the commit itself.
                try:
                    self._fetch(url, [sha], deadline, lock_fd)
                except FetchTimeout:
                    raise
                except MirrorError as exc:
                    raise (ref_error or exc) from None
                commit = self._commit_of(sha)
            if commit is None:
                at = f" at {ref}" if ref else ""
                raise MirrorError(f"commit {sha} is not in {self.name} ({redact_url(url)}){at}; "
                                  "hint: check the webhook's repository and that the commit was pushed there")
        log.info("mirror %s: fetched %s%s", self.name, sha, f" ({ref})" if ref else "")
        return Ensured(commit, fetched=True)

    def fetch_ref(self, ref: str, timeout: float = DEFAULT_FETCH_TIMEOUT_S) -> str:
        """Fetch `ref` from the repository and return the commit it points at (for API triggers)."""
        ref = check_ref(ref)
        deadline = time.monotonic() + timeout
        with self._locked(deadline) as lock_fd:
            self._create_if_missing(lock_fd)
            self._fetch(self.url, [f"+{ref}:{ref}"], deadline, lock_fd)
            commit = self._commit_of(ref)
        if commit is None:
            raise MirrorError(f"{ref} of {self.name} does not point at a commit")
        return commit

    def has_commit(self, sha: str) -> bool:
        return self._commit_of(check_sha(sha)) is not None

    def _source(self, from_url: str | None, ref: str | None) -> tuple[str, str | None]:
        """The URL to fetch from and the local ref that receives `ref`."""
        if from_url is None:
            return self.url, ref
        transport = _transport(from_url)
        if transport != self.transport:
            raise InvalidInput(f"fork URL {redact_url(from_url)!r} uses {transport}, the repository uses "
                               f"{self.transport}: fetch a pull request from the base repository's "
                               "refs/pull/N/head (GitLab: refs/merge-requests/N/head) instead")
        if redact_url(from_url) != from_url:
            raise InvalidInput(f"fork URL {redact_url(from_url)!r} carries credentials")
        space = hashlib.sha256(from_url.encode()).hexdigest()[:16]
        local = f"{_FORK_NAMESPACE}/{space}/{ref[len('refs/'):]}" if ref else None
        return from_url, local

    def _fetch(self, url: str, refspecs: Sequence[str], deadline: float, lock_fd: int) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchTimeout(f"fetching into the mirror of {self.name} timed out before it started")
        # --no-tags: only what was asked for; gc.autoDetach=false: the automatic gc after a
        # fetch runs inside our lock instead of racing the next delivery in the background.
        self._git(["-c", "gc.autoDetach=false", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                   "--no-recurse-submodules", "--", url, *refspecs],
                  timeout=remaining, lock_fd=lock_fd, action=f"fetching from {redact_url(url)}", urls=(url,))

    # -- reading ----------------------------------------------------------------------

    def read_file(self, sha: str, path: str, max_bytes: int = MAX_READ_BYTES) -> bytes | None:
        """The content of `path` at commit `sha`, or None when there is no such file.

        A symlink inside the repository is followed as a checkout would; one leaving it,
        and a directory, count as no file. More than `max_bytes` raises `FileTooLarge`.
        """
        sha, path = check_sha(sha), check_path(path)
        self._require(sha)
        found = self._git(["cat-file", "--batch-check=ok %(objectname) %(objecttype) %(objectsize)",
                           "--follow-symlinks"], input=f"{sha}:{path}\n".encode(), action=f"reading {path}")
        first = found.stdout.split(b"\n", 1)[0].decode("utf-8", "replace").split(" ")
        if len(first) != 4 or first[0] != "ok" or first[2] != "blob":
            return None  # missing, a directory, or a link that dangles or leaves the tree
        oid, size = first[1], int(first[3])
        if size > max_bytes:
            raise FileTooLarge(f"{path} at {sha[:12]} is {size} bytes, more than the limit of {max_bytes}")
        return self._git(["cat-file", "blob", oid], action=f"reading {path}").stdout

    def changed_paths(self, before: str | None, sha: str, default_branch: str | None,
                      timeout: float = DEFAULT_FETCH_TIMEOUT_S) -> list[str] | None:
        """The files changed by a push, sorted; None when that cannot be told (filters then run).

        A push of an existing branch compares `before` with `sha` (trees, so a force push
        counts what differs). A new branch or tag (`before` None or all zeros) compares
        with its merge base with `default_branch`, fetched afresh; a new branch whose
        commits are all on the default branch changed nothing (`[]`).
        """
        sha = check_sha(sha)
        if not self._commit_of(sha):
            log.warning("mirror %s: changed paths of %s asked before the commit was fetched", self.name, sha)
            return None
        deadline = time.monotonic() + timeout
        before = check_sha(before) if before is not None else None
        if before is not None and not is_null_sha(before):
            # A force push's `before` may be unreachable now and never fetched: ask for it by id.
            base = self._commit_of(before) or self._fetch_quietly([before], deadline, before)
        else:
            if default_branch is None:
                return None
            ref = branch_ref(default_branch)
            self._fetch_quietly([f"+{ref}:{ref}"], deadline, ref)  # a stale copy would count too much
            tip = self._commit_of(ref)
            if tip is None:
                return None
            merge_base = self._git(["merge-base", tip, sha], check=False, action="finding the merge base")
            base = merge_base.stdout.decode().strip() if merge_base.returncode == 0 else None
            if base is not None and not _SHA.fullmatch(base):
                base = None
        if base is None:
            return None
        diff = self._git(["diff-tree", "-r", "-z", "--name-only", "--no-renames", base, sha],
                         action="listing changed paths")
        return sorted({p for p in diff.stdout.decode("utf-8", "surrogateescape").split("\0") if p})

    def _fetch_quietly(self, refspecs: list[str], deadline: float, wanted: str) -> str | None:
        """Fetch for `changed_paths`; a failure only means "cannot tell", so it is logged."""
        try:
            with self._locked(deadline) as lock_fd:
                self._fetch(self.url, refspecs, deadline, lock_fd)
        except MirrorError as exc:
            log.warning("mirror %s: %s", self.name, exc)
        return self._commit_of(wanted)

    # -- the tree as files ----------------------------------------------------------------

    def export_tree(self, sha: str, dest: Path) -> TreeExport:
        """Write the tree at `sha` into `dest` (new or empty) as a checkout would, minus `.git`.

        Files get mode 0644, or 0755 when git records them executable (a checkout's modes
        under umask 022, whatever this process's umask); symlinks stay symlinks (one that
        is absolute or leaves the tree raises `MirrorError`, as the CLI refuses it);
        submodules (gitlinks) are skipped and listed. `dest` is removed on failure.
        """
        sha = check_sha(sha)
        self._require(sha)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise MirrorError(f"export destination {dest} is not empty")
        try:
            return self._export(sha, dest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise

    def _export(self, sha: str, dest: Path) -> TreeExport:
        listing = self._git(["ls-tree", "-r", "-z", "--full-tree", sha], action="listing the tree")
        files: list[tuple[str, str, int]] = []
        links: list[tuple[str, str]] = []
        submodules: list[str] = []
        for record in listing.stdout.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, oid = meta.decode().split(" ")
            path = raw_path.decode("utf-8", "surrogateescape")
            try:
                check_path(path)
            except InvalidInput as exc:
                raise MirrorError(f"commit {sha[:12]} of {self.name}: {exc}") from None
            if kind == "commit":
                submodules.append(path)
            elif mode == "120000":
                links.append((path, oid))
            elif kind == "blob":
                files.append((path, oid, 0o755 if int(mode, 8) & 0o111 else 0o644))
        members = {p for p, _, _ in files} | {p for p, _ in links}
        for member in members:
            # Two entries for one path (`a` a link and `a/b` a file) would write through the
            # link; only a hand-made tree has them (git's fsck refuses it), so refuse it too.
            parent = member.rpartition("/")[0]
            while parent:
                if parent in members:
                    raise MirrorError(f"commit {sha[:12]} of {self.name}: {member!r} lies under the "
                                      f"file or link {parent!r}")
                parent = parent.rpartition("/")[0]
        if submodules:
            log.info("mirror %s: %s: submodules are not part of the snapshot: %s",
                     self.name, sha[:12], ", ".join(submodules))
        try:
            self._write_tree(sha, dest, files, links)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise MirrorError(f"commit {sha[:12]} of {self.name}: conflicting entries at "
                              f"{os.path.relpath(exc.filename or dest, dest)!r}") from None
        try:
            manifest = build_manifest_of_paths(dest, [p for p, _, _ in files] + [p for p, _ in links])
        except PathError as exc:
            raise MirrorError(f"commit {sha[:12]} of {self.name}: {exc}; hint: workers rebuild the tree "
                              "elsewhere, so links must be relative and stay inside it") from None
        return TreeExport(manifest, tuple(submodules))

    def _write_tree(self, sha: str, dest: Path, files: list[tuple[str, str, int]],
                    links: list[tuple[str, str]]) -> None:
        with _CatFile(self) as blobs:
            written: dict[str, Path] = {}
            for path, oid, mode in files:
                target = dest / path
                target.parent.mkdir(parents=True, exist_ok=True)
                if oid in written:  # the same content twice: copy, do not read it again
                    shutil.copyfile(written[oid], _create(target, mode))
                else:
                    blobs.write_to(oid, target, mode)
                    written[oid] = target
            # Links last, so no file is ever written through one.
            for path, oid in links:
                link_target = blobs.read(oid, MAX_LINK_TARGET).decode("utf-8", "surrogateescape")
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                if not link_target or "\0" in link_target:
                    raise MirrorError(f"commit {sha[:12]} of {self.name}: link {path!r} has an invalid target")
                os.symlink(link_target, dest / path)

    def snapshot(self, sha: str, settings: Settings, run_id: str, plan: Plan) -> dict[str, object]:
        """Store the tree at `sha` as the run's source snapshot; returns what the run records of it.

        The same record and `meta` keys as `coordinator.submit.snapshot_source` (plus
        `source_commit`, and `source_skipped_submodules` when there are any), so workers
        rebuild the workspace exactly as for a CLI submission. Raises `MirrorError` for
        the tree and `SubmitError` when the store fails, as the CLI does.
        """
        sha = check_sha(sha)
        tmp_root = self.mirrors_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="snapshot-", dir=tmp_root) as tmp:
            export = self.export_tree(sha, Path(tmp) / "tree")
            meta = publish_source(settings, run_id, plan, Path(tmp) / "tree", export.manifest,
                                   f"commit {sha[:12]} of {self.name}")
        meta["source_commit"] = self._commit_of(sha) or sha
        if export.skipped_submodules:
            meta["source_skipped_submodules"] = list(export.skipped_submodules)
        return meta

    # -- plumbing -----------------------------------------------------------------------

    def _require(self, sha: str) -> None:
        if self._commit_of(sha) is None:
            raise MirrorError(f"commit {sha} is not in the mirror of {self.name}; hint: call ensure_commit first")

    def _commit_of(self, revision: str) -> str | None:
        """The commit `revision` (a checked sha or ref) names in the mirror, or None."""
        if not (self.path / "HEAD").exists():
            return None
        found = self._git(["rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], check=False,
                          action="looking up a commit")
        out = found.stdout.decode().strip()
        return out if found.returncode == 0 and _SHA.fullmatch(out) else None

    def _create_if_missing(self, lock_fd: int) -> None:
        """`git init --bare` beside the mirror, then rename it into place: never half a mirror."""
        if (self.path / "HEAD").exists():
            return
        tmp_root = self.mirrors_dir / "tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="init-", dir=tmp_root))
        try:
            # --template=: no sample hooks or other files from the system's template.
            self._git(["init", "--quiet", "--bare", "--template=", str(tmp)], git_dir=None, lock_fd=lock_fd,
                      action="creating the mirror")
            for key, value in (("remote.origin.url", redact_url(self.url)),  # for people; never a secret
                               ("conveyor.repository", self.name),
                               ("gc.autoDetach", "false"),
                               ("core.logAllRefUpdates", "false")):
                self._git(["config", key, value], git_dir=tmp, lock_fd=lock_fd, action="creating the mirror")
            if self.path.exists():  # a directory without HEAD: the leftover of something else
                shutil.rmtree(self.path)
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _remove_stale_git_locks(self) -> None:
        """Remove git's `*.lock` files: under our lock only a killed git can have left them.

        Every git that writes to the mirror holds our flock (it inherits the descriptor),
        so when we hold it, no writer is alive.
        """
        candidates = list(self.path.glob("*.lock"))
        refs = self.path / "refs"
        if refs.is_dir():
            candidates += [p for p in refs.rglob("*.lock")]
        for stale in candidates:
            if stale.is_file() and not stale.is_symlink():
                log.warning("mirror %s: removing %s left by an interrupted git", self.name, stale.name)
                stale.unlink(missing_ok=True)

    @contextmanager
    def _locked(self, deadline: float) -> Iterator[int]:
        """Hold this mirror's lock (threads, then processes) until the block ends; yields its fd."""
        thread_lock = _thread_lock(str(self.lock_path))
        if not thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise FetchTimeout(f"timed out waiting for another fetch of {self.name} to finish")
        try:
            self.mirrors_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                pause = 0.01
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise FetchTimeout(f"timed out waiting for another process's fetch of {self.name}") from None
                        time.sleep(min(pause, left))
                        pause = min(pause * 2, 0.2)
                self._remove_stale_git_locks()
                yield fd
            finally:
                os.close(fd)  # releases the flock (git children that shared it have exited)
        finally:
            thread_lock.release()

    def _git(self, args: Sequence[str], *, action: str, timeout: float = LOCAL_TIMEOUT_S,
             input: bytes | None = None, check: bool = True, lock_fd: int | None = None,
             git_dir: Path | None | str = "", urls: Sequence[str] = ()) -> subprocess.CompletedProcess[bytes]:
        """Run git on the mirror (argv only, never a shell), killing its process group on timeout."""
        git = shutil.which("git")
        if git is None:
            raise MirrorError("git is not installed on this server; hint: install git (2.29 or newer)")
        where = self.path if git_dir == "" else git_dir
        argv = [git, *([f"--git-dir={where}"] if where is not None else []),
                "-c", "core.hooksPath=/dev/null", "-c", "credential.helper=", *args]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_git_env(),
                                    cwd=self.mirrors_dir if self.mirrors_dir.is_dir() else "/",
                                    start_new_session=True, pass_fds=(lock_fd,) if lock_fd is not None else ())
        except OSError as exc:
            raise MirrorError(f"{action} for {self.name}: cannot run git: {exc}") from None
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise FetchTimeout(f"{action} for {self.name} timed out after {timeout:.0f}s; "
                               "hint: check the repository is reachable, or raise the timeout") from None
        except BaseException:
            _kill_group(proc)
            raise
        if check and proc.returncode != 0:
            detail = _last_line(stderr, (self.url, *urls))
            raise MirrorError(f"{action} for {self.name} failed (git exit {proc.returncode})"
                              + (f": {detail}" if detail else ""))
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


class _CatFile:
    """One `git cat-file --batch` for a whole export: a request per blob, answers streamed."""

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "_CatFile":
        argv = [shutil.which("git") or "git", f"--git-dir={self.mirror.path}", "cat-file", "--batch"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=_git_env(), start_new_session=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.proc is not None
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self.proc.wait(timeout=LOCAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)

    def _header(self, oid: str) -> int:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(oid.encode() + b"\n")
        self.proc.stdin.flush()
        parts = self.proc.stdout.readline().decode().split()
        if len(parts) != 3 or parts[0] != oid or parts[1] != "blob":
            raise MirrorError(f"blob {oid} of {self.mirror.name} is missing from the mirror")
        return int(parts[2])

    def _stream(self, size: int, sink) -> None:
        assert self.proc is not None and self.proc.stdout
        left = size
        while left:
            chunk = self.proc.stdout.read(min(_CHUNK, left))
            if not chunk:
                raise MirrorError(f"git cat-file ended early reading the mirror of {self.mirror.name}")
            sink(chunk)
            left -= len(chunk)
        self.proc.stdout.read(1)  # the newline after each object

    def write_to(self, oid: str, target: Path, mode: int) -> None:
        size = self._header(oid)
        with os.fdopen(os.open(_create(target, mode), os.O_WRONLY | os.O_CLOEXEC), "wb") as out:
            self._stream(size, out.write)

    def read(self, oid: str, limit: int) -> bytes:
        size = self._header(oid)
        if size > limit:
            self._stream(size, lambda chunk: None)
            raise MirrorError(f"a symlink of {self.mirror.name} has a target longer than {limit} bytes")
        parts: list[bytes] = []
        self._stream(size, parts.append)
        return b"".join(parts)


def _create(target: Path, mode: int) -> Path:
    """Create `target` as a new file with exactly `mode` (not following a link, not replacing)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)  # exact, whatever the umask
    finally:
        os.close(fd)
    return target


def _git_env() -> dict[str, str]:
    """The environment of every git call: no prompts, no user or system config, known transports.

    Inherited GIT_* variables are dropped (a GIT_DIR or GIT_CONFIG_PARAMETERS of the
    server's environment must not redirect or reconfigure the mirror), except the
    operator's ssh command.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") and k not in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE")}
    env["GIT_SSH_COMMAND"] = os.environ.get("GIT_SSH_COMMAND") or "ssh -o BatchMode=yes"
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1",
               GIT_ALLOW_PROTOCOL=":".join(sorted(_TRANSPORTS)), LC_ALL="C")
    return env


def _last_line(stderr: bytes, urls: Sequence[str]) -> str:
    """git's error line (else its last line), cut to one line and scrubbed of every credential in `urls`."""
    text = stderr.decode("utf-8", "replace")
    for url in urls:
        if "://" in url:
            userinfo = url.partition("://")[2].split("/", 1)[0].rpartition("@")[0]
            for secret in sorted({userinfo, userinfo.partition(":")[2]} - {""}, key=len, reverse=True):
                text = text.replace(secret, "***")
    text = re.sub(r"(://)[^/\s@]+@", r"\1***@", text)  # any user:password@ of a URL git printed
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    # git's "fatal:" line says what failed; the lines after it are advice.
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    last = (fatal or lines or [""])[-1]
    return last if len(last) <= 300 else last[:297] + "..."


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill git and its helpers (remote-https, index-pack), started in their own session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=10)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass
