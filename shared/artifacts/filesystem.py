"""The filesystem backend: objects are read-only files under `<root>/cas/ab/cd/<hash>`.

Writes go to a temp file under `<root>/tmp` (same filesystem) and are published with
`os.link`, which fails instead of replacing an existing object: the store never overwrites.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from shared.artifacts.base import (
    CHUNK_SIZE,
    BaseStore,
    IntegrityError,
    ObjectInfo,
    ObjectNotFound,
    _unlink_quietly,
    check_digest,
    object_key,
    read_chunks,
)


class FilesystemStore(BaseStore):
    """A content-addressed store in a local (or shared, e.g. NFS) directory."""

    def __init__(self, root: Path, **options) -> None:
        super().__init__(**options)
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    def _path(self, digest: str) -> Path:
        return self.root / object_key(digest)

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def delete(self, digest: str) -> None:
        _unlink_quietly(self._path(digest))

    def iter_objects(self) -> Iterator[ObjectInfo]:
        cas = self.root / "cas"
        if not cas.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(cas):
            for name in sorted(filenames):
                try:
                    check_digest(name)
                except ValueError:
                    continue  # not ours (an editor's backup, a stray file): ignore
                yield ObjectInfo(name, os.stat(os.path.join(dirpath, name)).st_size)

    def _read_chunks(self, digest: str) -> Iterator[bytes]:
        try:
            fh = open(self._path(digest), "rb")
        except FileNotFoundError:
            raise ObjectNotFound(digest) from None
        with fh:
            yield from read_chunks(fh, CHUNK_SIZE)

    def _write_verified(self, path: Path, expected: ObjectInfo) -> None:
        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as src:
                yield from read_chunks(src, CHUNK_SIZE)

        self._publish(chunks(), expected, name=str(path))

    def _write_bytes(self, info: ObjectInfo, data: bytes) -> None:
        self._publish(iter((data,)), info, name=f"object {info.digest}")

    def _publish(self, chunks: Iterator[bytes], expected: ObjectInfo, name: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=expected.digest[:16] + ".", dir=self._tmp)
        try:
            sha = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    sha.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                # The object outlives this process and is shared by every later run: make
                # it durable before it becomes visible.
                os.fsync(out.fileno())
            actual = sha.hexdigest()
            if actual != expected.digest or size != expected.size:
                raise IntegrityError(name, expected.digest, actual, expected.size, size)
            os.chmod(tmp, 0o444)
            final = self._path(expected.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass  # a concurrent writer won the race with the same bytes
        finally:
            _unlink_quietly(tmp)
