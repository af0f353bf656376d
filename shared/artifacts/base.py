"""The artifact store contract: content-addressed objects, their errors and transfer counters.

An object is an immutable blob named by the SHA-256 of its bytes and stored under a fan-out
key (`cas/ab/cd/<hash>`). Backends (filesystem, S3) only move bytes; everything that must
behave the same in both (hashing while streaming, verifying before a file becomes visible,
retrying a mismatch with backoff, dedup) lives here in `BaseStore`.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol, runtime_checkable

CHUNK_SIZE = 1024 * 1024
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 0.2

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class ArtifactError(Exception):
    """Base class of every artifact store error."""


class ObjectNotFound(ArtifactError, KeyError):
    """The store has no object with this digest."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest

    def __str__(self) -> str:
        return f"no object {self.digest} in the artifact store"


class IntegrityError(ArtifactError):
    """Bytes did not hash (or size) to what they were addressed by; names the file and both hashes."""

    def __init__(self, name: str, expected: str, actual: str, expected_size: int | None = None,
                 actual_size: int | None = None) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        self.expected_size = expected_size
        self.actual_size = actual_size
        message = f"{name}: expected sha256 {expected}, got {actual}"
        if expected_size is not None and actual_size is not None and expected_size != actual_size:
            message += f" (expected {expected_size} bytes, got {actual_size})"
        super().__init__(message)


class PathError(ValueError):
    """A path that could land outside the workspace: absolute, with `..`, or a symlink escaping it."""


@dataclass(frozen=True)
class ObjectInfo:
    """A stored object: its SHA-256 (hex) and size in bytes."""

    digest: str
    size: int


@dataclass
class TransferCounters:
    """What a store moved since it was opened (or last `reset`); thread-safe."""

    bytes_uploaded: int = 0
    objects_uploaded: int = 0
    dedup_hits: int = 0
    bytes_downloaded: int = 0
    bytes_streamed: int = 0  # downloaded bytes as they arrive, for progress bars; the rest count per object
    objects_downloaded: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_"):
                    setattr(self, f.name, 0)


def check_digest(digest: str) -> str:
    """Return `digest` if it is a lowercase hex SHA-256, else raise ValueError.

    Digests become object keys and file names, so anything else is refused up front.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


def object_key(digest: str) -> str:
    """The fan-out key of an object, relative to the store root: `cas/ab/cd/<digest>`."""
    check_digest(digest)
    return f"cas/{digest[:2]}/{digest[2:4]}/{digest}"


def hash_file(path: Path, *, follow_symlinks: bool = True) -> ObjectInfo:
    """SHA-256 and size of a file, read in chunks.

    `follow_symlinks=False` opens it with `O_NOFOLLOW`: a file swapped for a symlink since
    it was looked at raises `OSError` (ELOOP) instead of being read through.
    """
    sha = hashlib.sha256()
    size = 0
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    with os.fdopen(os.open(path, flags), "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            sha.update(chunk)
            size += len(chunk)
    return ObjectInfo(sha.hexdigest(), size)


def read_chunks(fh: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while chunk := fh.read(chunk_size):
        yield chunk


@runtime_checkable
class ObjectStore(Protocol):
    """A content-addressed object store. Objects are never overwritten once visible."""

    counters: TransferCounters

    def has(self, digest: str) -> bool: ...
    def put_file(self, path: Path, digest: str | None = None, probe: bool = True) -> ObjectInfo: ...
    def get_file(self, digest: str, dest: Path, size: int | None = None) -> None: ...
    def put_bytes(self, data: bytes) -> ObjectInfo: ...
    def get_bytes(self, digest: str) -> bytes: ...
    def delete(self, digest: str) -> None: ...
    def iter_objects(self) -> Iterator[ObjectInfo]: ...
    def verify(self, digest: str) -> bool: ...


class BaseStore:
    """The shared half of both backends.

    A backend implements `has`, `delete`, `iter_objects`, `_read_chunks(digest)` (raising
    `ObjectNotFound`), `_write_verified(path, expected)` (stream the file up, hashing as it
    goes, and make the object visible only if hash and size match `expected`; raise
    `IntegrityError` otherwise) and `_write_bytes(info, data)`.
    """

    # Largest object a backend writes in one step that refuses to replace an existing one
    # (a hard link; a PUT with If-None-Match), so writing it without asking first is safe.
    blind_write_max = 0

    def __init__(self, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF_S) -> None:
        self.counters = TransferCounters()
        self.retries = retries
        self.backoff = backoff

    # -- backend hooks ---------------------------------------------------------------
    def has(self, digest: str) -> bool:
        raise NotImplementedError

    def _read_chunks(self, digest: str) -> Iterator[bytes]:
        raise NotImplementedError

    def _write_verified(self, path: Path, expected: ObjectInfo) -> None:
        raise NotImplementedError

    def _write_bytes(self, info: ObjectInfo, data: bytes) -> None:
        raise NotImplementedError

    # -- shared behaviour ------------------------------------------------------------
    def _with_retries(self, action, *args):
        """Run `action`, retrying an IntegrityError with exponential backoff, then re-raise it.

        A mismatch is usually a transient fault (a flaky link, a half-written source); a
        corrupt stored object fails the same way every time and surfaces after the retries.
        """
        for attempt in range(self.retries + 1):
            try:
                return action(*args)
            except IntegrityError:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff * (2 ** attempt))

    def put_file(self, path: Path, digest: str | None = None, probe: bool = True) -> ObjectInfo:
        """Store a file's bytes; a no-op (a dedup hit) when the store already has them.

        Without `digest` the file is hashed first, so an existing object costs one local read
        and no transfer. The upload re-hashes what it sends and only commits on a match, so a
        file changing under us never becomes a visible, wrongly named object.
        `probe=False` skips the existence check for objects up to `blind_write_max` bytes,
        which the backend writes in one step that refuses to replace an existing object: for
        callers that know the object is almost surely new (the index does not know it).
        """
        path = Path(path)
        if digest is None:
            expected = hash_file(path)
        else:
            expected = ObjectInfo(check_digest(digest), os.stat(path).st_size)
        if (probe or expected.size > self.blind_write_max) and self.has(expected.digest):
            self.counters.add(dedup_hits=1)
            return expected
        self._with_retries(self._put_once, path, expected)
        return expected

    def _put_once(self, path: Path, expected: ObjectInfo) -> None:
        self._write_verified(path, expected)
        self.counters.add(bytes_uploaded=expected.size, objects_uploaded=1)

    def put_bytes(self, data: bytes) -> ObjectInfo:
        """Store a small in-memory blob (a manifest); dedups like `put_file`."""
        info = ObjectInfo(hashlib.sha256(data).hexdigest(), len(data))
        if self.has(info.digest):
            self.counters.add(dedup_hits=1)
            return info
        self._write_bytes(info, data)
        self.counters.add(bytes_uploaded=info.size, objects_uploaded=1)
        return info

    def get_file(self, digest: str, dest: Path, size: int | None = None) -> None:
        """Download an object to `dest`, verifying hash (and `size`, when given) first.

        Bytes stream into a temp file next to `dest` and are renamed over it only once they
        check out, so `dest` never holds partial or corrupt content.
        """
        check_digest(digest)
        self._with_retries(self._get_once, digest, Path(dest), size)

    def _get_once(self, digest: str, dest: Path, size: int | None) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            sha = hashlib.sha256()
            received = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in self._read_chunks(digest):
                    sha.update(chunk)
                    received += len(chunk)
                    self.counters.add(bytes_streamed=len(chunk))
                    out.write(chunk)
            actual = sha.hexdigest()
            if actual != digest or (size is not None and received != size):
                raise IntegrityError(str(dest), digest, actual, size, received)
            os.replace(tmp, dest)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self.counters.add(bytes_downloaded=received, objects_downloaded=1)

    def get_bytes(self, digest: str) -> bytes:
        """An object's bytes, verified; for small objects (manifests) only."""
        check_digest(digest)
        return self._with_retries(self._get_bytes_once, digest)

    def _get_bytes_once(self, digest: str) -> bytes:
        data = b"".join(self._read_chunks(digest))
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise IntegrityError(f"object {digest}", digest, actual)
        self.counters.add(bytes_downloaded=len(data), objects_downloaded=1)
        return data

    def verify(self, digest: str) -> bool:
        """Re-hash a stored object: True when its bytes still match its name."""
        check_digest(digest)
        sha = hashlib.sha256()
        for chunk in self._read_chunks(digest):
            sha.update(chunk)
        return sha.hexdigest() == digest


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
