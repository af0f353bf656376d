"""Artifacts as manifests: which files a job produced, stored per file in the CAS.

A manifest lists every member (POSIX path relative to the workspace, sha256, size, mode,
symlink target) and is itself stored as a CAS object; its digest names the artifact.
Members are checked on the way in (`build_manifest`) and again on the way out
(`Manifest.from_bytes`, `download_tree`): a manifest comes from storage, so it is untrusted.

A symlink is a member of its own: its target *text* is stored, whatever it points at
(`venv/bin/python -> /usr/bin/python3` included), and it is never followed, neither when
collecting (nothing behind it is read or listed) nor when recreating (it is made after
every file, and no file is ever written through a link; see `tree_writer`).
"""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import posixpath
import re
import stat
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence, TypeVar

from shared.artifacts.base import ArtifactError, IntegrityError, ObjectStore, PathError, check_digest, hash_file
from shared.artifacts.tree_writer import TreeWriter

MANIFEST_VERSION = 1
DEFAULT_WORKERS = 8
# Bounds on collecting one job's artifacts: directory entries looked at while matching its
# globs and listing matched directories, and seconds spent doing so. Far above a real
# build's outputs; a glob over a huge tree (or a job that made one to stall the worker)
# fails the job with a message naming the glob, instead of walking for hours.
MAX_GLOB_ENTRIES = 100_000
MAX_GLOB_SECONDS = 30.0
MAX_LINK_TARGET = 4096  # PATH_MAX: a longer symlink target cannot be created anyway

T = TypeVar("T")


class ManifestError(ArtifactError, ValueError):
    """A manifest that is not valid JSON of the expected shape."""


class GlobLimitError(PathError):
    """Matching an artifact glob went past MAX_GLOB_ENTRIES entries or MAX_GLOB_SECONDS.

    A PathError: the job's own doing (its globs or its tree), so the job fails with
    `script_failure` and is not retried; a retry would walk the same tree again.
    """


@dataclass(frozen=True)
class ManifestEntry:
    """One member of an artifact: a regular file (`sha256` set) or a symlink (`link_target` set)."""

    path: str
    sha256: str | None
    size: int
    mode: int
    link_target: str | None = None

    @property
    def is_symlink(self) -> bool:
        return self.link_target is not None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size, "mode": self.mode,
                "link_target": self.link_target}


@dataclass(frozen=True)
class Manifest:
    """The members of an artifact, sorted by path; valid by construction."""

    entries: tuple[ManifestEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(sorted(self.entries, key=lambda e: e.path)))
        _validate_entries(self.entries)

    @property
    def files(self) -> tuple[ManifestEntry, ...]:
        return tuple(e for e in self.entries if not e.is_symlink)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files)

    def digests(self) -> set[str]:
        """Every file object this artifact references (for gc and refcounts)."""
        return {e.sha256 for e in self.files if e.sha256}

    def to_bytes(self) -> bytes:
        """Canonical JSON: the same members always give the same bytes, hence the same digest."""
        doc = {"version": MANIFEST_VERSION, "entries": [e.to_json() for e in self.entries]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"unsupported manifest (want version {MANIFEST_VERSION})")
        raw = doc.get("entries")
        if not isinstance(raw, list):
            raise ManifestError("manifest has no entries list")
        entries = []
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise ManifestError(f"malformed manifest entry: {item!r}")
            entries.append(ManifestEntry(path=item["path"], sha256=item.get("sha256"),
                                         size=item.get("size"), mode=item.get("mode"),
                                         link_target=item.get("link_target")))
        return cls(tuple(entries))


# -- path rules ----------------------------------------------------------------------

def check_member_path(path: str) -> str:
    """Return `path` if it is a normalized relative POSIX path staying inside its root."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise PathError(f"invalid member path {path!r}")
    if path.startswith("/"):
        raise PathError(f"absolute member path {path!r}")
    parts = path.split("/")
    if ".." in parts:
        raise PathError(f"member path {path!r} contains '..'")
    if any(p in ("", ".") for p in parts):
        raise PathError(f"member path {path!r} is not normalized")
    return path


def check_link_text(path: str, target: str) -> str:
    """Return `target` if it can be the text of a symlink: a non-empty string without NUL,
    at most MAX_LINK_TARGET bytes. Where it points is not checked: an artifact's link is
    stored and recreated as a link, never followed, so an absolute one is fine."""
    if not isinstance(target, str) or not target or "\0" in target:
        raise PathError(f"symlink {path!r} has an invalid target {target!r}")
    if len(target.encode("utf-8", "surrogateescape")) > MAX_LINK_TARGET:
        raise PathError(f"symlink {path!r} has a target longer than {MAX_LINK_TARGET} bytes")
    return target


def link_leaves(path: str, target: str) -> bool:
    """Whether a symlink at member `path` with text `target` is absolute or points,
    lexically, outside the root."""
    if target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def check_link_target(path: str, target: str) -> str:
    """Return `target` if the symlink at `path` points, lexically, inside the root.

    The strict rule of source snapshots (a tree every worker rebuilds elsewhere must be
    self-contained); artifacts keep any link as a link (`check_link_text`).
    """
    check_link_text(path, target)
    if target.startswith("/"):
        raise PathError(f"symlink {path!r} -> {target!r} is absolute")
    if link_leaves(path, target):
        raise PathError(f"symlink {path!r} -> {target!r} points outside the workspace")
    return target


def _validate_entries(entries: Sequence[ManifestEntry]) -> None:
    seen: set[str] = set()
    for e in entries:
        check_member_path(e.path)
        if e.path in seen:
            raise ManifestError(f"duplicate member {e.path!r}")
        seen.add(e.path)
        if not isinstance(e.mode, int) or isinstance(e.mode, bool) or not 0 <= e.mode <= 0o777:
            raise ManifestError(f"member {e.path!r} has invalid mode {e.mode!r}")
        if e.link_target is not None:
            check_link_text(e.path, e.link_target)
            if e.sha256 is not None:
                raise ManifestError(f"symlink member {e.path!r} has a sha256")
        else:
            try:
                check_digest(e.sha256)  # type: ignore[arg-type]
            except ValueError:
                raise ManifestError(f"member {e.path!r} has invalid sha256 {e.sha256!r}") from None
            if not isinstance(e.size, int) or isinstance(e.size, bool) or e.size < 0:
                raise ManifestError(f"member {e.path!r} has invalid size {e.size!r}")
    # A member cannot also be a directory of another: that is how "link -> .., link/x" would
    # write through a symlink.
    for e in entries:
        for parent in PurePosixPath(e.path).parents:
            if str(parent) in seen:
                raise PathError(f"member {e.path!r} lies under member {str(parent)!r}")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _check_glob(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern.strip():
        raise PathError(f"empty artifact glob {pattern!r}")
    if pattern.startswith("/") or pattern.startswith("\\"):
        raise PathError(f"artifact glob {pattern!r} is absolute")
    if ".." in pattern.replace("\\", "/").split("/"):
        raise PathError(f"artifact glob {pattern!r} contains '..'")


# -- building ------------------------------------------------------------------------

def build_manifest(root: Path, globs: Sequence[str], workers: int = DEFAULT_WORKERS, *,
                   max_entries: int | None = None, max_seconds: float | None = None) -> Manifest:
    """The manifest of the files under `root` matching `globs` (hashed concurrently).

    A matched directory contributes everything below it. Every symlink is recorded as a
    symlink with its target text, never followed (what it points at is not collected, even
    inside `root`); absolute ones and ones leaving `root` are kept too (`links_leaving`
    lists them, for the job log). A glob that is absolute or uses `..` raises `PathError`.
    Only regular files and symlinks are collected.

    Matching never leaves `root`: a wildcard never descends a symlinked directory, and a
    glob naming one literally (`current/report.html`) goes through it only when it
    resolves inside `root` (else `PathError` naming the glob and the link). Matching and
    listing stop with `GlobLimitError` after `max_entries` directory entries or
    `max_seconds` seconds (default MAX_GLOB_ENTRIES and MAX_GLOB_SECONDS, read at call time).
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise FileNotFoundError(f"artifact root {root} is not a directory")
    walk = _Walk(MAX_GLOB_ENTRIES if max_entries is None else max_entries,
                 MAX_GLOB_SECONDS if max_seconds is None else max_seconds)
    found: dict[str, Path] = {}
    for pattern in globs:
        _check_glob(pattern)
        walk.pattern = pattern
        for match in _glob(root, real_root, pattern, walk):
            for member in _expand(match, walk):
                found.setdefault(PurePosixPath(member.relative_to(root)).as_posix(), member)
    return _manifest_of(found, real_root, workers, strict_links=False)


def build_manifest_of_paths(root: Path, paths: Iterable[str], workers: int = DEFAULT_WORKERS) -> Manifest:
    """The manifest of exactly `paths` (relative, e.g. the files git tracks), no globbing.

    Paths that no longer exist are left out (a tracked file deleted in the working tree).
    Used for source snapshots, whose links must stay inside the tree (a worker rebuilds it
    elsewhere): a symlink that is absolute or resolves outside `root` raises `PathError`.
    """
    root = Path(root)
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise FileNotFoundError(f"source root {root} is not a directory")
    found: dict[str, Path] = {}
    for rel in paths:
        check_member_path(rel)
        if os.path.lexists(root / rel):
            found.setdefault(rel, root / rel)
    return _manifest_of(found, real_root, workers, strict_links=True)


def links_leaving(root: Path, manifest: Manifest) -> list[ManifestEntry]:
    """The symlink members of `manifest` (built from `root`) that are absolute or lead
    outside `root`, lexically or through other links of `root`: kept as links, and named
    in the job log. Only paths inside `root` are looked at to tell."""
    return [e for e in manifest.entries
            if e.is_symlink and _leads_outside(str(root), e.path.split("/"))]


MAX_LINK_HOPS = 40  # as the kernel's limit: a longer chain is a loop, and leads nowhere


def _leads_outside(root: str, parts: list[str]) -> bool:
    """Whether the path `parts` under `root`, resolved as the kernel would, leaves `root`.

    Resolution stops as soon as it would leave (an absolute target, a `..` above `root`),
    so nothing outside `root` is ever looked at; a missing component ends the lookups and
    the rest is taken lexically; a loop leads nowhere (not outside).
    """
    pending = list(parts)
    current: list[str] = []
    hops = 0
    exists = True
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        if exists:
            path = os.path.join(root, *current, part)
            try:
                st = os.lstat(path)
            except OSError:
                exists = False
            else:
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_LINK_HOPS:
                        return False
                    try:
                        target = os.readlink(path)
                    except OSError:  # changed since the lstat: take the rest lexically
                        exists = False
                        current.append(part)
                        continue
                    if target.startswith("/"):
                        return True
                    pending = target.split("/") + pending
                    continue
        current.append(part)
    return False


def _manifest_of(found: dict[str, Path], real_root: str, workers: int, *, strict_links: bool) -> Manifest:
    files: list[tuple[str, Path, int]] = []
    links: list[ManifestEntry] = []
    for rel, member in sorted(found.items()):
        st = os.lstat(member)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(member)  # the link's own text; never resolved to read through it
            if strict_links:
                check_link_target(rel, target)
                # The lexical check misses chains (a -> b/.., b -> ../x); the real path does not.
                if not _inside(os.path.realpath(member), real_root):
                    raise PathError(f"symlink {rel!r} -> {target!r} resolves outside the workspace")
            else:
                check_link_text(rel, target)
            links.append(ManifestEntry(rel, None, 0, 0o777, target))
        elif stat.S_ISREG(st.st_mode):
            # A match reached through a symlinked directory: follow it only inside root.
            if not _inside(os.path.realpath(member), real_root):
                raise PathError(f"{rel!r} resolves outside the workspace")
            files.append((rel, member, stat.S_IMODE(st.st_mode) & 0o777))

    # A symlinked directory that is itself a member already carries what lies beneath it.
    link_paths = {e.path for e in links}
    files = [f for f in files if not any(str(p) in link_paths for p in PurePosixPath(f[0]).parents)]

    # Not through a link: a member seen as a regular file is read only as one (the upload
    # then checks it still hashes to this digest, so a later swap cannot smuggle anything in).
    infos = _parallel(lambda f: _hash_member(f[0], f[1]), files, workers)
    entries = [ManifestEntry(rel, info.digest, info.size, mode) for (rel, _, mode), info in zip(files, infos)]
    return Manifest(tuple(entries + links))


def _hash_member(rel: str, member: Path):
    try:
        return hash_file(member, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathError(f"{rel!r} was replaced by a symlink while artifacts were collected") from None
        raise


class _Walk:
    """The entries and time one `build_manifest` may spend matching and listing."""

    def __init__(self, max_entries: int, max_seconds: float) -> None:
        self.max_entries = max_entries
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.entries = 0
        self.pattern = ""

    def tick(self) -> None:
        """Count one directory entry looked at; raise when a bound is passed."""
        self.entries += 1
        if self.entries > self.max_entries:
            raise GlobLimitError(
                f"artifact glob {self.pattern!r} looked at more than {self.max_entries:,} directory entries "
                "(the limit); match fewer files, e.g. 'dist/*.whl' rather than '**'"
            )
        # The clock is read every 256 entries: often enough, and cheap.
        if self.entries & 0xFF == 0 and time.monotonic() > self.deadline:
            raise GlobLimitError(
                f"artifact glob {self.pattern!r} was still matching after {self.max_seconds:g}s "
                f"({self.entries:,} directory entries; the limit); match fewer files"
            )


def _is_wildcard(part: str) -> bool:
    return any(c in part for c in "*?[")


def _scandir(directory: Path, walk: _Walk) -> list[os.DirEntry[str]]:
    """The entries of `directory` (none when it cannot be listed), each counted."""
    try:
        with os.scandir(directory) as listing:
            entries = []
            for entry in listing:
                walk.tick()
                entries.append(entry)
            return entries
    except OSError:  # not a directory, vanished, unreadable: nothing to match there
        return []


def _glob(root: Path, real_root: str, pattern: str, walk: _Walk) -> list[Path]:
    """The paths under `root` matching `pattern`, component by component, as pathlib's glob
    (`*`, `?`, `[...]` within a name, `**` for any number of directories, hidden names
    included), except that no symlinked directory is descended by a wildcard: pathlib
    follows them, which let `out/*/*` walk the host disk through a job-made `ln -s / out/root`.
    A literal component naming a link is followed only when the link resolves inside `root`.
    Dangling symlinks are matches too (they must still be checked).
    """
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    for part in parts:
        if "**" in part and part != "**":
            raise PathError(f"artifact glob {pattern!r}: '**' can only be a whole path component")
    if not parts:
        return [root]
    found: dict[Path, None] = {}  # ordered, without duplicates (`**/**` reaches a path twice)
    # Explicit stack of (path, index of the next component), so a deep tree cannot
    # exhaust Python's recursion limit.
    stack: list[tuple[Path, int]] = [(root, 0)]
    seen: set[tuple[Path, int]] = set()
    while stack:
        path, index = stack.pop()
        if (path, index) in seen:
            continue
        seen.add((path, index))
        if index == len(parts):
            found[path] = None
            continue
        part = parts[index]
        last = index == len(parts) - 1
        if part == "**":
            # `**` is zero or more real directories; as in pathlib, a trailing `**`
            # matches directories only (each then contributes all of its contents).
            stack.append((path, index + 1))
            for entry in _scandir(path, walk):
                if entry.is_dir(follow_symlinks=False):
                    stack.append((path / entry.name, index))
        elif _is_wildcard(part):
            regex = _compiled(part)
            for entry in _scandir(path, walk):
                if not regex.match(entry.name):
                    continue
                if last:
                    stack.append((path / entry.name, index + 1))
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((path / entry.name, index + 1))
                # A symlink (to a directory or not) is never descended by a wildcard.
        else:
            child = path / part
            try:
                st = os.lstat(child)
            except OSError:
                continue
            walk.tick()
            if last:
                stack.append((child, index + 1))
            elif stat.S_ISDIR(st.st_mode):
                stack.append((child, index + 1))
            elif stat.S_ISLNK(st.st_mode):
                # Named literally (`current/report.html`): the user means to go through
                # it, which is fine while it stays inside the workspace.
                real = os.path.realpath(child)
                rel = PurePosixPath(child.relative_to(root)).as_posix()
                if not _inside(real, real_root):
                    raise PathError(f"artifact glob {pattern!r} goes through the symlink {rel!r}, which "
                                    "leaves the workspace; name paths inside the workspace")
                if os.path.isdir(real):
                    stack.append((child, index + 1))
    return sorted(found)


def _compiled(part: str) -> re.Pattern[str]:
    return _GLOB_CACHE.get(part) or _GLOB_CACHE.setdefault(part, re.compile(fnmatch.translate(part)))


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def _expand(match: Path, walk: _Walk) -> Iterable[Path]:
    """A glob match, or everything under it when it is a real directory (symlinks not followed)."""
    if match.is_symlink() or not match.is_dir():
        yield match
        return
    for dirpath, dirnames, filenames in os.walk(match, followlinks=False):
        for name in dirnames + filenames:
            walk.tick()
            path = Path(dirpath) / name
            if path.is_symlink() or name in filenames:
                yield path


# -- transfer ------------------------------------------------------------------------

def upload_tree(store: ObjectStore, root: Path, globs: Sequence[str],
                workers: int = DEFAULT_WORKERS) -> tuple[str, Manifest]:
    """Store the files under `root` matching `globs`; returns (manifest digest, manifest).

    Each distinct content is uploaded once, and not at all when the store already has it.
    """
    root = Path(root)
    manifest = build_manifest(root, globs, workers)
    unique: dict[str, ManifestEntry] = {}
    for entry in manifest.files:
        unique.setdefault(entry.sha256, entry)  # type: ignore[arg-type]
    _parallel(lambda e: store.put_file(root / e.path, e.sha256), list(unique.values()), workers)
    return store.put_bytes(manifest.to_bytes()).digest, manifest


def download_tree(store: ObjectStore, manifest_digest: str, dest: Path,
                  workers: int = DEFAULT_WORKERS) -> Manifest:
    """Recreate an artifact under `dest`, verifying every file before it appears there.

    Members land only inside `dest`, and nothing is ever written through a symlink: the
    manifest is validated (no member lies under another), every directory on a member's
    way is opened without following links (an existing symlink there, made by an earlier
    artifact or already in `dest`, refuses the member with `PathError`), files are renamed
    into place from a private staging directory, replacing atomically what is at their
    path (a link included: it is replaced, not written through), and symlinks are made
    last, after every file, with exactly their stored text (absolute or dangling alike:
    they are not resolved).
    """
    manifest = Manifest.from_bytes(store.get_bytes(manifest_digest))
    dest = Path(dest)
    by_digest: dict[str, list[ManifestEntry]] = defaultdict(list)
    for entry in manifest.files:
        by_digest[entry.sha256].append(entry)  # type: ignore[index]

    with TreeWriter(dest) as tree:
        for entry in manifest.entries:
            tree.prepare(entry.path)

        def fetch(group: list[ManifestEntry]) -> None:
            first = group[0]
            staged = tree.staged_path()
            try:
                store.get_file(first.sha256, staged, first.size)  # type: ignore[arg-type]
            except IntegrityError as exc:  # name the member, not the staging file
                raise IntegrityError(str(dest / first.path), exc.expected, exc.actual, exc.expected_size,
                                     exc.actual_size) from exc
            # Same content twice in one artifact: copy locally rather than download again.
            copies = [(tree.copy_staged(staged), other) for other in group[1:]]
            tree.place_file(staged, first.path, first.mode)
            for copy, other in copies:
                tree.place_file(copy, other.path, other.mode)

        _parallel(fetch, list(by_digest.values()), workers)

        # Links last: no file of this artifact is written after any of its links exists.
        for entry in manifest.entries:
            if entry.is_symlink:
                tree.place_link(entry.link_target, entry.path)  # type: ignore[arg-type]
    return manifest


def _parallel(fn: Callable[[T], Any], items: list[T], workers: int) -> list[Any]:
    """Map `fn` over `items` on a thread pool; the first error cancels what has not started."""
    if not items:
        return []
    if workers <= 1 or len(items) == 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
