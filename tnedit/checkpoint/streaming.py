"""Streaming copies of weight files: byte-for-byte copies with patched tensors, plain copies, SHA-256.

Untouched byte ranges are copied by the kernel (``copy_file_range``); patched tensors stream through
one block-sized buffer, so peak memory is about :data:`CHUNK` whatever the tensor size. SHA-256 is
computed alongside on a worker thread. An untouched file whose digest is already known is cloned
(a reflink, where the filesystem shares blocks) or copied by the kernel, and not read at all. Every
copy can be cancelled between blocks.

Tests monkeypatch :data:`CHUNK`, :func:`_copy_range`, :func:`copy_with_patches`, :func:`sha256_file`,
:func:`sha256_files` and :data:`fcntl` on this module: they are looked up here at call time.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnedit.checkpoint.files import (
    FileIdentity,
    changed_error,
    create_new,
    open_source,
    read_exact,
    write_all,
    writing,
)
from tnedit.checkpoint.safetensors import SafetensorsHeader, TensorInfo
from tnedit.checkpoint.targets import view_shape
from tnedit.errors import CheckpointError
from tnedit.formats.provenance import is_sha256

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CHUNK = 4 * 1024 * 1024  # bytes per patched row block
HASH_BUFFER = 1024 * 1024  # bytes per read of a file being hashed: large enough for full speed, small in RSS
COPY_STEP = 64 * 1024 * 1024  # bytes per copy_file_range call: the cancel flag is checked between them
# copy_file_range refuses some pairs of files (other filesystems, old kernels): copy through user space.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
# Linux's FICLONE ioctl, _IOW(0x94, 9, int): the new file shares the source's blocks (btrfs, XFS, bcachefs).
FICLONE = 0x40049409
# What FICLONE answers where blocks cannot be shared (ext4, tmpfs, another filesystem, an old kernel).
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}

# Patches a block of whole rows [row0, row1) of a tensor's 2-D view (targets.view_shape) in place.
TensorPatch = Callable[[TensorInfo, memoryview, int, int], None]


# --- cancellation --------------------------------------------------------------------------------


class Cancelled(CheckpointError):
    """Raised in a worker once the command is abandoned; the main thread reports its own cause instead."""

    def __init__(self) -> None:
        super().__init__("cancelled")


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


# --- hashing -------------------------------------------------------------------------------------


class _StreamHasher:
    """SHA-256 of a file being written (and optionally of its source), computed on a worker thread.

    The writer describes the output as segments: byte ranges shared with the source file (hashed by
    reading the source, already in the page cache, into one reusable buffer) and in-memory buffers
    (patched tensors). A bounded queue keeps at most two buffers alive, so memory stays about one
    block. Source and output agree up to the first patched block, so that prefix is hashed once and
    the digest state is then forked.
    """

    def __init__(self, src: Path, fd: int, hash_source: bool, cancel: threading.Event | None = None):
        self._src, self._fd = src, fd
        self._out = hashlib.sha256()
        self._in: Any = None  # forked from _out at the first patched block
        self._hash_source = hash_source
        self._cancel = cancel
        self._abort = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sha256 {src.name}")
        self._thread.start()

    def source_range(self, begin: int, end: int) -> None:
        self._put(("range", begin, end))

    def buffers(self, original: bytes | bytearray | None, patched: bytes | bytearray | memoryview) -> None:
        """Hash in-memory bytes; returns once they are hashed, so the caller's next block may reuse memory."""
        self._put(("buffers", original, patched))
        self._queue.join()

    def _put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def _stopping(self) -> bool:
        return self._abort.is_set() or (self._cancel is not None and self._cancel.is_set())

    def _run(self) -> None:
        try:
            buffer = memoryview(bytearray(HASH_BUFFER))
            while (item := self._queue.get()) is not None:
                try:
                    if self._stopping():
                        raise Cancelled
                    if item[0] == "range":
                        self._hash_range(buffer, item[1], item[2])
                    else:
                        self._hash_buffers(item[1], item[2])
                finally:
                    self._queue.task_done()
        except BaseException as exc:  # reported to the writer on its next call
            self._error = exc
            while self._queue.get() is not None:
                self._queue.task_done()

    def _hash_range(self, buffer: memoryview, begin: int, end: int) -> None:
        for start in range(begin, end, len(buffer)):
            if self._stopping():
                raise Cancelled
            chunk = buffer[: min(len(buffer), end - start)]
            read_exact(self._fd, chunk, start, self._src)
            self._out.update(chunk)
            if self._in is not None:
                self._in.update(chunk)

    def _hash_buffers(self, original: bytes | bytearray | None, patched: bytes | bytearray | memoryview) -> None:
        if self._hash_source and self._in is None:
            self._in = self._out.copy()
        if self._in is not None:
            self._in.update(original)
        self._out.update(patched)

    def finish(self) -> tuple[str | None, str]:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        out = self._out.hexdigest()
        if not self._hash_source:
            return None, out
        return (self._in.hexdigest() if self._in is not None else out), out

    def abort(self) -> None:
        """Stop hashing at the next chunk and wait for the thread; its error, if any, is dropped."""
        self._abort.set()
        self._queue.put(None)
        self._thread.join()


def sha256_file(path: Path, on_bytes: Callable[[int], Any] | None = None) -> str:
    """SHA-256 read through one reusable buffer (no mapping: a file truncated meanwhile is an error, not SIGBUS).

    ``on_bytes`` is called with the byte count of each chunk read (a progress bar's ``update``).
    """
    sha = hashlib.sha256()
    buffer = memoryview(bytearray(HASH_BUFFER))
    with open_source(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        for start in range(0, size, len(buffer)):
            chunk = buffer[: min(len(buffer), size - start)]
            read_exact(fh.fileno(), chunk, start, path)
            sha.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return sha.hexdigest()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sha256_files(paths: Sequence[Path], on_bytes: Callable[[int], Any] | None = None) -> list[str]:
    """SHA-256 of several files, as many at a time as there are cores: one file's digest is sequential."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(len(paths), available_cores()))) as pool:
        return list(pool.map(lambda path: sha256_file(path, on_bytes), paths))


def hub_blob_sha256(path: Path) -> str | None:
    """The SHA-256 the Hub serves a cached file under, read from its blob's name; None if unknown.

    snapshot_download stores each LFS file once as ``blobs/<sha256>`` and links it from
    ``snapshots/<commit>/``, so for an untouched weight file the digest is known without reading it.
    """
    if not path.is_symlink():
        return None
    target = path.resolve()
    return target.name if target.parent.name == "blobs" and is_sha256(target.name) else None


# --- copies --------------------------------------------------------------------------------------


def _copy_range(fi: Any, fo: Any, begin: int, end: int, cancel: threading.Event | None = None) -> None:
    """Copy [begin, end) to the same offsets in the kernel (copy_file_range), else through user space."""
    src, dst = fi.fileno(), fo.fileno()
    while begin < end:
        check_cancel(cancel)
        step = min(COPY_STEP, end - begin)
        try:
            n = os.copy_file_range(src, dst, step, begin, begin)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_KERNEL_COPY:
                raise
            data = os.pread(src, min(CHUNK, step), begin)
            write_all(dst, memoryview(data), begin)
            n = len(data)
        if n <= 0:
            raise changed_error(fi.name)
        begin += n


def _reflink(fi: Any, fo: Any) -> bool:
    """Clone all of ``fi`` into the new, empty ``fo``; False where the filesystem cannot share blocks.

    The clone is a file of its own: writing either file later never changes the other.
    """
    if fcntl is None or not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
        return False
    return True


@dataclass(frozen=True)
class CopyResult:
    source_sha256: str | None
    output_sha256: str


def copy_with_patches(
    src: Path,
    dst: Path,
    patches: Mapping[str, TensorPatch],
    header: SafetensorsHeader,
    hash_source: bool = False,
    cancel: threading.Event | None = None,
) -> CopyResult:
    """Copy ``src`` to the new file ``dst`` byte for byte, replacing the bytes of the patched tensors.

    The header, tensor order, dtypes and ``__metadata__`` are the source's own bytes: untouched
    ranges are copied by the kernel. Patched tensors stream through one block-sized buffer, so peak
    memory is about CHUNK whatever the tensor size; SHA-256 is computed alongside on a worker thread.
    The source must be the file ``header`` was read from, unchanged until the copy ends; setting
    ``cancel`` stops the copy at the next block.
    """
    targets = sorted((header.tensors[name] for name in patches), key=lambda t: t.begin)
    scratch = bytearray(max((_rows_per_block(t)[1] for t in targets), default=0))
    with writing(dst), open_source(src, header.identity) as fi, create_new(dst) as fo:
        size = os.fstat(fi.fileno()).st_size
        hasher = _StreamHasher(src, fi.fileno(), hash_source, cancel)
        try:
            pos = 0
            for info in targets:
                hasher.source_range(pos, info.begin)
                _copy_range(fi, fo, pos, info.begin, cancel)
                _patch_tensor(fi, fo, info, patches[info.name], scratch, hasher, hash_source, cancel)
                pos = info.end
            hasher.source_range(pos, size)
            _copy_range(fi, fo, pos, size, cancel)
            digests = hasher.finish()
        except BaseException:
            hasher.abort()
            raise
    return CopyResult(*digests)


def _rows_per_block(info: TensorInfo) -> tuple[int, int]:
    """Rows of the 2-D view per block and the block's bytes: about CHUNK, never less than one row.

    A fused experts tensor (3-D) streams as its view ``[prod(shape[:-1]), shape[-1]]``.
    """
    if len(info.shape) < 2:
        raise CheckpointError(
            f"tensor '{info.name}' has shape {list(info.shape)}; only tensors of 2 or more dimensions can be patched"
        )
    row_bytes = info.nbytes // max(view_shape(info.shape)[0], 1)
    rows = max(1, CHUNK // max(row_bytes, 1))
    return rows, rows * row_bytes


def _patch_tensor(
    fi: Any,
    fo: Any,
    info: TensorInfo,
    patch: TensorPatch,
    scratch: bytearray,
    hasher: _StreamHasher,
    hash_source: bool,
    cancel: threading.Event | None = None,
) -> None:
    """Stream one tensor through ``patch`` in row blocks, so memory is one block, not one tensor."""
    rows, _ = _rows_per_block(info)
    total = view_shape(info.shape)[0]
    row_bytes = info.nbytes // max(total, 1)
    for row0 in range(0, total, rows):
        check_cancel(cancel)
        row1 = min(row0 + rows, total)
        offset, length = info.begin + row0 * row_bytes, (row1 - row0) * row_bytes
        block = memoryview(scratch)[:length]
        read_exact(fi.fileno(), block, offset, fi.name)
        original = bytes(block) if hash_source else None
        patch(info, block, row0, row1)
        hasher.buffers(original, block)
        write_all(fo.fileno(), block, offset)


def copy_plain(
    src: Path,
    dst: Path,
    link: bool = False,
    known_sha256: str | None = None,
    expected: FileIdentity | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Copy (or hardlink) an untouched file to the new file ``dst`` and return its SHA-256.

    The digest is hashed while the kernel copies, unless the caller already knows it (a Hub blob, a
    trusted digest-cache entry), in which case the file is only cloned (a reflink) or, where the
    filesystem cannot, copied by the kernel: hashing, not copying, is what costs time. A source that
    is a symlink is read through; ``dst`` is always a file of its own (or, with ``link``, a hardlink).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src.resolve(), dst)  # link(2) would hardlink a Hub snapshot's symlink itself
            return known_sha256 or sha256_file(src)
        except OSError:
            pass
    if known_sha256 is None:
        header = SafetensorsHeader(src, 0, {}, None, expected)
        return copy_with_patches(src, dst, {}, header, cancel=cancel).output_sha256
    copy_bytes(src, dst, expected, cancel)
    return known_sha256


def copy_bytes(
    src: Path, dst: Path, expected: FileIdentity | None = None, cancel: threading.Event | None = None
) -> None:
    """Copy ``src`` to the new file ``dst`` without reading it: a reflink where the filesystem allows, else
    the kernel's copy. For files whose digest is known or not needed (a checkpoint's side files)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with writing(dst), open_source(src, expected) as fi, create_new(dst) as fo:
        if not _reflink(fi, fo):
            _copy_range(fi, fo, 0, os.fstat(fi.fileno()).st_size, cancel)
