"""The SHA-256 of unchanged local files, cached outside the checkpoint, so a second apply need not hash them again.

An entry is one small JSON file under ``<cache>/digests/``, named by the file's device and inode and holding
its identity (device, inode, size, nanosecond mtime and ctime, stat taken before hashing and unchanged after),
its SHA-256 and ``read_ns``: the nanoseconds from the first byte read to the moment the entry was written.

**When an entry is trusted (the racy-clean rule, as git uses it for its index).** A file rewritten within
one timestamp tick of its last change, to the same size, keeps its identity; if that happened while or
after it was hashed, the identity could no longer tell the recorded digest from the file's new content. So
an entry is trusted only when the file's identity is the one recorded *and* its last change (the later of
mtime and ctime) lies more than :data:`TIMESTAMP_GRANULARITY_NS` before the hashing began, measured on the
filesystem's own clock: the entry file's mtime (as the filesystem recorded it, read back like git reads
its index file's mtime, so the process's clock plays no part) minus ``read_ns``. Any later change of the
file then gets a later timestamp, so it changes the identity. A racy entry is ignored: the file is hashed
again and the entry rewritten, and once the file has stayed unchanged for longer than the granularity the
new entry is trusted. ctime cannot be set from user space, so ``touch -d`` or ``os.utime`` restoring an
old mtime after a change still changes the identity.

**The granularity** is a conservative 2 s, not probed: FAT records mtime in 2 s steps, ext3, HFS+ and
many network filesystems in whole seconds, and a filesystem with nanosecond fields still stamps files
from a coarse kernel clock (a few milliseconds). The cache and the checkpoint are assumed to share a
clock, as they do on local disks; a network filesystem whose server clock lags the cache's by more than
2 s weakens the rule (``--no-cache`` turns the cache off).

**What can never happen.** A missing, unreadable, corrupt or foreign entry (garbage, wrong types, a
digest that is not 64 lowercase hex digits, a symlink, a FIFO, a file of another user) is ignored and
rehashed, never an error. An entry is written to a sibling temporary of its own (process and thread in
its name) and renamed into place, so concurrent commands see the old entry or the new one, never half of
one. An unwritable cache directory costs one warning, and the command goes on without writing entries.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tnedit.checkpoint import streaming
from tnedit.checkpoint.files import FileIdentity, file_identity
from tnedit.formats.outputs import is_within
from tnedit.formats.provenance import is_sha256

DIGEST_FORMAT = "tnedit.digest/1"
CACHE_ENV = "TNEDIT_CACHE_DIR"
TIMESTAMP_GRANULARITY_NS = 2_000_000_000  # see the module docstring: FAT's 2 s, the coarsest in common use
MAX_ENTRY_BYTES = 4096  # a real entry is about 200 bytes; anything larger is not ours
_OPEN_ENTRY = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CREATE_TEMPORARY = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def cache_home() -> Path | None:
    """tnedit's cache directory: ``$TNEDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/tnedit``, else ``~/.cache/tnedit``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG spec asks; None when there is no home directory.
    """
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "tnedit"
    try:
        return Path.home() / ".cache" / "tnedit"
    except RuntimeError:  # no HOME and no password entry
        return None


def hashing_clock() -> int:
    """Now, for :meth:`DigestCache.record`'s ``started_ns``: take it before the first byte is read."""
    return time.monotonic_ns()


class DigestCache:
    """Lookups and records of file digests in ``directory``; ``DigestCache(None)`` is off and touches nothing.

    ``warn`` gets one line, once, when an entry cannot be written; the command carries on without the cache.
    Thread-safe: apply's workers share one instance.
    """

    def __init__(self, directory: Path | None, warn: Callable[[str], Any] | None = None):
        self.directory = directory
        self._warn = warn
        self._writable = directory is not None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def outside(self, *roots: Path | str) -> DigestCache:
        """This cache, or one that is off (with a warning) if it lies in a directory the command must not write:
        the source, OUT before it appears, a directory about to be uploaded."""
        for root in roots:
            if self.directory is not None and is_within(self.directory, root):
                if self._warn is not None:
                    self._warn(f"digest cache {self.directory}: inside {root}, which this command must not write; "
                               f"not used (set {CACHE_ENV} elsewhere)")
                return DigestCache(None)
        return self

    def entry_path(self, identity: FileIdentity) -> Path:
        if self.directory is None:
            raise ValueError("the digest cache is off")
        return self.directory / f"{identity[0]:x}-{identity[1]:x}.json"

    def lookup(self, identity: FileIdentity | None) -> str | None:
        """The recorded SHA-256 of the file with this identity, or None unless the entry can be trusted."""
        if self.directory is None or identity is None:
            return None
        found = _read_entry(self.entry_path(identity))
        if found is None:
            return None
        entry, written_ns = found
        if not _entry_matches(entry, identity):
            return None
        last_change = max(identity[3], identity[4])
        hashing_began = written_ns - entry["read_ns"]
        return entry["sha256"] if last_change < hashing_began - TIMESTAMP_GRANULARITY_NS else None

    def record(self, path: Path, identity: FileIdentity | None, sha256: str, started_ns: int) -> None:
        """Remember ``sha256`` for ``path``, hashed from ``started_ns`` on, if its identity is still ``identity``."""
        if not self._writable or identity is None or not is_sha256(sha256):
            return
        try:
            if file_identity(os.stat(path)) != identity:
                return  # changed while hashed: the digest may be of neither version
        except OSError:
            return
        entry = {"format": DIGEST_FORMAT, "identity": list(identity), "sha256": sha256,
                 "read_ns": hashing_clock() - started_ns}
        self._write_entry(self.entry_path(identity), json.dumps(entry).encode("utf-8"))

    def _write_entry(self, target: Path, data: bytes) -> None:
        """A temporary sibling of this thread's own, renamed over the entry: readers never see half of one."""
        temporary = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temporary, _CREATE_TEMPORARY, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except OSError as exc:
            _remove_quietly(temporary)
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        with self._lock:
            if not self._writable:
                return
            self._writable = False
        if self._warn is not None:
            why = exc.strerror or type(exc).__name__
            self._warn(f"digest cache {self.directory}: cannot write ({why}); unchanged files will be hashed "
                       f"again next time (set {CACHE_ENV} or pass --no-cache)")


def open_digest_cache(enabled: bool = True, warn: Callable[[str], Any] | None = None) -> DigestCache:
    """The user's digest cache (``<cache_home>/digests``), or one that is off (``--no-cache``, no home)."""
    home = cache_home() if enabled else None
    return DigestCache(home / "digests" if home is not None else None, warn)


def _read_entry(path: Path) -> tuple[dict[str, Any], int] | None:
    """An entry's JSON and its mtime, or None for anything that is not a small regular file of ours."""
    try:
        fd = os.open(path, _OPEN_ENTRY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
            return None
        if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
            return None  # in a shared directory another user could plant digests of our files
        entry = json.loads(os.read(fd, MAX_ENTRY_BYTES + 1))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    finally:
        os.close(fd)
    return (entry, st.st_mtime_ns) if isinstance(entry, dict) else None


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # not a bool, not a float


def _entry_matches(entry: dict[str, Any], identity: FileIdentity) -> bool:
    """A well-formed entry of this format, for exactly this version of the file."""
    recorded = entry.get("identity")
    return (
        entry.get("format") == DIGEST_FORMAT
        and isinstance(recorded, list)
        and all(_is_count(part) for part in recorded)
        and tuple(recorded) == tuple(identity)
        and is_sha256(entry.get("sha256"))
        and _is_count(entry.get("read_ns"))
    )


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# --- digests of whole files ----------------------------------------------------------------------


def cached_sha256(path: Path, cache: DigestCache, on_bytes: Callable[[int], Any] | None = None) -> str:
    """SHA-256 of ``path``: from the cache when its entry is trusted, else hashed and recorded.

    ``on_bytes`` gets the file's size at once on a hit, each chunk's byte count otherwise.
    """
    if not cache.enabled:
        return streaming.sha256_file(path, on_bytes)
    try:
        identity: FileIdentity | None = file_identity(os.stat(path))
    except OSError:
        identity = None  # sha256_file names the problem
    known = cache.lookup(identity)
    if known is not None and identity is not None:
        if on_bytes is not None:
            on_bytes(identity[2])
        return known
    started = hashing_clock()
    digest = streaming.sha256_file(path, on_bytes)
    cache.record(path, identity, digest, started)
    return digest


def cached_sha256_files(
    paths: Sequence[Path], cache: DigestCache, on_bytes: Callable[[int], Any] | None = None
) -> list[str]:
    """:func:`cached_sha256` of several files, as many at a time as there are cores."""
    if not cache.enabled:
        return streaming.sha256_files(paths, on_bytes)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(len(paths), streaming.available_cores()))) as pool:
        return list(pool.map(lambda path: cached_sha256(path, cache, on_bytes), paths))
