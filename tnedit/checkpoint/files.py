"""Opening, reading and writing checkpoint files safely: regular files only, exact reads, no mapping.

Sources are read with ``pread``/``preadv`` into caller buffers, never mapped: a file truncated under
tnedit is a short read and a clear :class:`~tnedit.errors.CheckpointError`, where a mapping would kill
the process with SIGBUS. New files are created exclusively and never through a planted symlink.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tnedit.errors import CheckpointError

# What identifies one version of a file: a change of any field means it was replaced or rewritten.
FileIdentity = tuple[int, int, int, int, int]


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_regular(path: Path, kind: str = "a regular file") -> Any:
    """Open a file for reading, with one clear error for a missing file, a dangling link or a directory."""
    try:  # O_NONBLOCK: opening a FIFO planted among the model files must not wait for a writer
        fh = open(path, "rb", buffering=0, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    except FileNotFoundError:
        what = "is a dangling symlink" if path.is_symlink() else "is missing"
        raise CheckpointError(f"{path}: {what}; expected {kind}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory; expected {kind}") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise CheckpointError(f"{path}: not a regular file; expected {kind}")
    return fh


def changed_error(path: Path | str) -> CheckpointError:
    return CheckpointError(f"{path}: changed while tnedit was reading it (truncated, rewritten or replaced)")


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def read_exact(fd: int, view: memoryview, offset: int, path: Path | str) -> None:
    """Fill ``view`` from ``offset``; a short read means the file changed under us."""
    got = 0
    while got < len(view):
        n = _pread_into(fd, view[got:], offset + got)
        if n == 0:
            raise changed_error(path)
        got += n


def write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


@contextmanager
def open_source(path: Path, expected: FileIdentity | None = None) -> Iterator[Any]:
    """Open a file to read whole; on leaving, fail if it changed meanwhile (or since ``expected`` was taken).

    The identity (device, inode, size, mtime, ctime) is compared on the open descriptor and on the
    path, so an in-place rewrite, a truncation and a rename over the path are all caught.
    """
    fh = open_regular(path)
    try:
        before = file_identity(os.fstat(fh.fileno()))
        if expected is not None and before != expected:
            raise CheckpointError(f"{path}: changed since its header was read (rewritten or replaced)")
        yield fh
        if file_identity(os.fstat(fh.fileno())) != before or file_identity(os.stat(path)) != before:
            raise changed_error(path)
    finally:
        fh.close()


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_new(path: Path) -> Any:
    """Open a new file for writing. Never an existing file, never through a symlink planted where it goes."""
    return os.fdopen(os.open(path, _CREATE_FLAGS, 0o666), "wb")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (a full disk fails in write, not in open)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
