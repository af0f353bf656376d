"""Writing a tree's members under a destination without ever passing through a symlink.

A downloaded artifact may hold symlinks pointing anywhere (`venv/bin/python ->
/usr/bin/python3`), and the destination may already hold links (an earlier dependency's,
the source snapshot's). Nothing here ever writes *through* one:

- every directory on the way to a member is opened relative to its parent's descriptor
  with `O_NOFOLLOW`, starting from the destination's own descriptor; a component that is a
  symlink (or not a directory) refuses the member with `PathError`, so no path lookup
  that could follow a link is ever made below the destination;
- content and links are first made in a private staging directory (`.conveyor-incoming-*`
  in the destination, mode 0700) and then renamed into that directory descriptor:
  `rename` never follows its last component, so an existing file, or an existing link at
  the member's path, is replaced atomically rather than written through;
- the caller creates links after every regular file.

The destination directory itself is trusted (the caller named it); it may be a symlink.
"""
from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

from shared.artifacts.base import PathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
STAGING_PREFIX = ".conveyor-incoming-"


class TreeWriter:
    """Members written under `dest` by descriptor; use as a context manager (staging is removed)."""

    def __init__(self, dest: Path) -> None:
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._staging: Path | None = None
        self._staging_fd: int | None = None
        self._lock = threading.Lock()
        self._names = itertools.count()

    def __enter__(self) -> "TreeWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- directories -------------------------------------------------------------------

    def prepare(self, member: str) -> None:
        """Create `member`'s parent directories, refusing symlinks and non-directories on the
        way, and a real directory at the member's own path (it cannot be replaced)."""
        fd, name = self._open_parent(member)
        try:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode):
                raise PathError(f"{member!r}: {self.dest / member} exists and is a directory")
        finally:
            os.close(fd)

    def _open_parent(self, member: str) -> tuple[int, str]:
        """A descriptor of `member`'s parent directory (the caller closes it) and its last name."""
        parts = member.split("/")
        fd = os.dup(self._root_fd)
        try:
            for depth, part in enumerate(parts[:-1]):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile by another member's thread
                    child = self._open_dir(fd, part, member, parts[: depth + 1])
                except OSError:
                    child = self._open_dir(fd, part, member, parts[: depth + 1])
                os.close(fd)
                fd = child
            return fd, parts[-1]
        except BaseException:
            os.close(fd)
            raise

    def _open_dir(self, fd: int, part: str, member: str, walked: list[str]) -> int:
        """Open `part` under `fd`, or say exactly why not (a link, not a directory)."""
        shown = self.dest.joinpath(*walked)
        try:
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise PathError(f"{member!r}: {shown} vanished while it was being created") from None
        if stat.S_ISLNK(st.st_mode):
            raise PathError(f"{member!r}: {shown} is a symlink; refusing to write through it")
        if not stat.S_ISDIR(st.st_mode):
            raise PathError(f"{member!r}: {shown} exists and is not a directory")
        return os.open(part, _DIR_FLAGS, dir_fd=fd)

    # -- staging -----------------------------------------------------------------------

    def staged_path(self) -> Path:
        """A fresh path in the private staging directory, for a download to land at."""
        with self._lock:
            if self._staging is None:
                self._staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.dest))
                self._staging_fd = os.open(self._staging, _DIR_FLAGS)
            return self._staging / str(next(self._names))

    def copy_staged(self, staged: Path) -> Path:
        """A second staged copy of `staged` (the same content at two member paths)."""
        other = self.staged_path()
        shutil.copyfile(staged, other, follow_symlinks=False)
        return other

    # -- placing -----------------------------------------------------------------------

    def place_file(self, staged: Path, member: str, mode: int) -> None:
        """Give the staged file `mode` and rename it to `member`, replacing what is there."""
        assert self._staging_fd is not None
        os.chmod(staged.name, mode, dir_fd=self._staging_fd)
        self._rename_in(staged.name, member)

    def place_link(self, target: str, member: str) -> None:
        """Make `member` a symlink with exactly the text `target` (never resolved), replacing
        an existing file or link at that path atomically."""
        staged = self.staged_path()
        assert self._staging_fd is not None
        os.symlink(target, staged.name, dir_fd=self._staging_fd)
        try:
            self._rename_in(staged.name, member)
        except BaseException:
            try:
                os.unlink(staged.name, dir_fd=self._staging_fd)
            except FileNotFoundError:
                pass
            raise

    def _rename_in(self, staged_name: str, member: str) -> None:
        fd, name = self._open_parent(member)
        try:
            os.replace(staged_name, name, src_dir_fd=self._staging_fd, dst_dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise PathError(f"{member!r}: {self.dest / member} exists and is a directory") from None
            raise
        finally:
            os.close(fd)
