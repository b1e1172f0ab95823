"""checkpoint.digests: a cached digest is the file's real SHA-256 whenever it is used, and nothing in the cache fails.

Entries are trusted only when the file last changed more than the timestamp granularity before it was hashed
(the racy-clean rule). Files written by a test are younger than the real 2 s, so tests that need a trusted
entry either set the granularity to 0 and let one kernel timestamp tick pass (``trusting``), or move the
entry's own mtime, which is what the rule reads as its write time.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tnedit.checkpoint import digests, streaming
from tnedit.checkpoint.digests import DIGEST_FORMAT, DigestCache, cached_sha256, open_digest_cache
from tnedit.checkpoint.files import file_identity

TICK = 0.03  # longer than a kernel timestamp tick (1-10 ms), so a file written before it is strictly older


def real_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def cache(tmp_path: Path) -> DigestCache:
    return DigestCache(tmp_path / "cache" / "digests")


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Granularity 0: an entry is trusted once the file's last change precedes the hashing by one tick."""
    monkeypatch.setattr(digests, "TIMESTAMP_GRANULARITY_NS", 0)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths streaming.sha256_file reads (the cache calls it by module lookup)."""
    seen: list[Path] = []
    real = streaming.sha256_file

    def spy(path: Path, *args: Any, **kwargs: Any) -> str:
        seen.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(streaming, "sha256_file", spy)
    return seen


def settled(path: Path, data: bytes) -> Path:
    """A file written, then one tick waited, so hashing it now starts after its last change."""
    write(path, data)
    time.sleep(TICK)
    return path


def entry_of(cache: DigestCache, path: Path) -> Path:
    return cache.entry_path(file_identity(os.stat(path)))


def plant(cache: DigestCache, path: Path, sha256: Any, **changes: Any) -> Path:
    """A hand-written entry for ``path``'s current identity, dated long after the file's last change."""
    identity = file_identity(os.stat(path))
    entry: dict[str, Any] = {"format": DIGEST_FORMAT, "identity": list(identity), "sha256": sha256, "read_ns": 0}
    entry.update(changes)
    target = cache.entry_path(identity)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(entry))
    late = max(identity[3], identity[4]) + 60 * 10**9
    os.utime(target, ns=(late, late))
    return target


# --- where the cache lives -------------------------------------------------------------------------


def test_cache_home_follows_tnedit_cache_dir_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digests.cache_home() == tmp_path / "mine"
    monkeypatch.delenv("TNEDIT_CACHE_DIR")
    assert digests.cache_home() == tmp_path / "xdg" / "tnedit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: a relative path is ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert digests.cache_home() == tmp_path / "home" / ".cache" / "tnedit"
    assert open_digest_cache().directory == tmp_path / "home" / ".cache" / "tnedit" / "digests"


def test_the_test_session_never_uses_the_users_cache():
    home = digests.cache_home()
    assert home is not None and Path.home() / ".cache" not in (home, *home.parents)


def test_an_off_cache_touches_nothing(tmp_path, monkeypatch, hashed):
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(tmp_path / "cache"))
    off = open_digest_cache(enabled=False)
    path = settled(tmp_path / "f.bin", b"payload")
    assert not off.enabled and cached_sha256(path, off) == real_sha(path) == cached_sha256(path, off)
    assert len(hashed) == 2 and not (tmp_path / "cache").exists()


# --- a trusted entry spares the hashing ------------------------------------------------------------


def test_a_trusted_entry_spares_the_hashing_and_reports_progress(tmp_path, cache, trusting, hashed):
    path = settled(tmp_path / "f.bin", os.urandom(3 * streaming.HASH_BUFFER + 5))
    assert cached_sha256(path, cache) == real_sha(path) and len(hashed) == 1
    seen: list[int] = []
    assert cached_sha256(path, cache, seen.append) == real_sha(path)
    assert len(hashed) == 1, "a trusted entry was hashed again"
    assert seen == [path.stat().st_size]


def test_an_entry_is_written_atomically_as_one_small_json_file(tmp_path, cache, trusting):
    path = settled(tmp_path / "f.bin", b"x" * 1000)
    cached_sha256(path, cache)
    entry = json.loads(entry_of(cache, path).read_text())
    assert entry["sha256"] == real_sha(path) and entry["identity"] == list(file_identity(os.stat(path)))
    assert [p.name for p in cache.directory.iterdir()] == [entry_of(cache, path).name]  # no temporary left


# --- required: a file changed after its digest was cached is hashed again ---------------------------


def test_a_same_size_change_within_the_same_second_with_mtime_restored_is_hashed_again(
    tmp_path, cache, trusting, hashed
):
    path = settled(tmp_path / "weights.bin", b"A" * 4096)
    old = os.stat(path)
    cached_sha256(path, cache)
    assert cache.lookup(file_identity(os.stat(path))) == real_sha(path), "the entry must be trusted before"
    path.write_bytes(b"B" * 4096)  # same size, well within the same second
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # the mtime the entry recorded
    new = os.stat(path)
    assert (new.st_size, new.st_mtime_ns, int(new.st_mtime)) == (old.st_size, old.st_mtime_ns, int(old.st_mtime))
    assert new.st_ctime_ns != old.st_ctime_ns  # what tells the versions apart: user space cannot set ctime
    before = len(hashed)
    digest = cached_sha256(path, cache)
    assert digest == hashlib.sha256(b"B" * 4096).hexdigest() != hashlib.sha256(b"A" * 4096).hexdigest()
    assert len(hashed) == before + 1, "the changed file was not hashed again"
    refreshed = json.loads(entry_of(cache, path).read_text())  # racy still (ctime is now), but for the new version
    assert refreshed["sha256"] == digest and refreshed["identity"] == list(file_identity(os.stat(path)))


# --- required: a racy entry is not trusted ---------------------------------------------------------


def test_the_racy_rule_at_its_boundary(tmp_path, cache, hashed):
    """Trusted iff last change < entry mtime − read_ns − granularity (the real 2 s), read off the entry file."""
    path = write(tmp_path / "f.bin", b"payload")
    cached_sha256(path, cache)
    identity = file_identity(os.stat(path))
    entry = entry_of(cache, path)
    assert cache.lookup(identity) is None, "an entry written right after the file changed is racy"
    read_ns = json.loads(entry.read_text())["read_ns"]
    boundary = max(identity[3], identity[4]) + read_ns + digests.TIMESTAMP_GRANULARITY_NS
    os.utime(entry, ns=(boundary, boundary))
    assert cache.lookup(identity) is None
    os.utime(entry, ns=(boundary + 1, boundary + 1))
    assert cache.lookup(identity) == real_sha(path)


def test_a_racy_entry_is_hashed_again_and_refreshed(tmp_path, cache, hashed):
    path = write(tmp_path / "f.bin", b"fresh")
    assert cached_sha256(path, cache) == real_sha(path) == cached_sha256(path, cache)
    assert len(hashed) == 2, "a racy entry was trusted"


def test_a_change_invisible_to_stat_during_the_racy_window_is_caught(tmp_path, cache, hashed):
    """On a coarse filesystem a rewrite in the same tick keeps the whole identity: the entry then holds the old
    content's digest under the new content's identity. Planted as such, written within the granularity."""
    path = write(tmp_path / "f.bin", b"new content")
    target = plant(cache, path, hashlib.sha256(b"old content").hexdigest())
    identity = file_identity(os.stat(path))
    one_second_later = max(identity[3], identity[4]) + 10**9
    os.utime(target, ns=(one_second_later, one_second_later))
    assert cache.lookup(identity) is None
    assert cached_sha256(path, cache) == real_sha(path) and len(hashed) == 1


def test_time_spent_hashing_counts_against_the_entry(tmp_path, cache):
    """read_ns moves the hashing's start back: a file changed just before a long hash is not trusted."""
    path = write(tmp_path / "f.bin", b"payload")
    identity = file_identity(os.stat(path))
    target = plant(cache, path, real_sha(path), read_ns=0)
    assert cache.lookup(identity) == real_sha(path)
    plant(cache, path, real_sha(path), read_ns=59 * 10**9)  # began hashing 1 s after the change: racy
    assert target.exists() and cache.lookup(identity) is None


# --- required: whenever the cache answers, it answers the real SHA-256 --------------------------------


def _rewrite_same_size(path: Path, other: Path) -> None:
    old = os.stat(path)
    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


def _replace_by_rename(path: Path, other: Path) -> None:
    old = os.stat(path)
    tmp = path.with_name("incoming")
    tmp.write_bytes(bytes(b ^ 0x55 for b in path.read_bytes()))
    os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(tmp, path)


def _truncate_and_refill(path: Path, other: Path) -> None:
    old, data = os.stat(path), path.read_bytes()
    os.truncate(path, 0)
    path.write_bytes(data[::-1])
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


def _recreate(path: Path, other: Path) -> None:
    data, old = path.read_bytes(), os.stat(path)
    path.unlink()
    path.write_bytes(data[:-1] + b"!" if data else b"!")
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


MUTATIONS = {
    "unchanged": (lambda path, other: None, True),
    "read through a symlink": (lambda path, other: other.symlink_to(path), True),
    "hardlinked (link(2) changes the inode's ctime)": (lambda path, other: os.link(path, other), False),
    "rewritten in place, same size, mtime restored": (_rewrite_same_size, False),
    "replaced by rename, same size, mtime restored": (_replace_by_rename, False),
    "truncated and refilled, mtime restored": (_truncate_and_refill, False),
    "deleted and recreated, mtime restored": (_recreate, False),
    "appended to": (lambda path, other: path.open("ab").write(b"tail"), False),
    "touched": (lambda path, other: os.utime(path), False),
    "chmod": (lambda path, other: os.chmod(path, 0o600), False),
    "copied with cp -p (another inode)": (lambda path, other: shutil.copy2(path, other), False),
}


@pytest.mark.parametrize("size", [0, 1, streaming.HASH_BUFFER + 7])
@pytest.mark.parametrize("case", list(MUTATIONS))
def test_every_digest_the_cache_returns_is_the_real_sha256(case, size, tmp_path, cache, trusting):
    mutate, expect_hit = MUTATIONS[case]
    path = settled(tmp_path / "f.bin", os.urandom(size))
    other = tmp_path / "other.bin"
    assert cached_sha256(path, cache) == real_sha(path)
    mutate(path, other)
    read = other if other.exists() else path
    hit = cache.lookup(file_identity(os.stat(read)))
    assert (hit is not None) == expect_hit, f"{case}: hit={hit}"
    if hit is not None:
        assert hit == real_sha(read), f"{case}: the cache returned a digest that is not the file's"
    assert cached_sha256(read, cache) == real_sha(read)
    assert cached_sha256(path, cache) == real_sha(path)


# --- required: corrupt or hostile entries are ignored, never fail ------------------------------------


def _garbage(target: Path, path: Path, cache: DigestCache) -> None:
    target.write_bytes(b"\x00\xff not json at all")


def _not_utf8_json(target: Path, path: Path, cache: DigestCache) -> None:
    target.write_bytes(b'{"format": "\xff"}')


def _json_list(target: Path, path: Path, cache: DigestCache) -> None:
    target.write_text("[1, 2, 3]")


def _oversized(target: Path, path: Path, cache: DigestCache) -> None:
    entry = json.loads(target.read_text())
    entry["padding"] = "x" * digests.MAX_ENTRY_BYTES
    target.write_text(json.dumps(entry))


def _a_directory(target: Path, path: Path, cache: DigestCache) -> None:
    target.unlink()
    target.mkdir()


def _a_fifo(target: Path, path: Path, cache: DigestCache) -> None:
    target.unlink()
    os.mkfifo(target)


def _a_symlink(target: Path, path: Path, cache: DigestCache) -> None:
    """A link to a well-formed, trusted-looking entry elsewhere: links are never followed."""
    elsewhere = target.with_name("elsewhere.json")
    os.replace(target, elsewhere)
    target.symlink_to(elsewhere.name)


def _another_users(target: Path, path: Path, cache: DigestCache) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    os.chown(target, 12345, 12345)


def _field(**changes: Any):
    def mutate(target: Path, path: Path, cache: DigestCache) -> None:
        entry = json.loads(target.read_text())
        entry.update(changes)
        stamp = os.stat(target).st_mtime_ns
        target.write_text(json.dumps(entry))
        os.utime(target, ns=(stamp, stamp))

    return mutate


def _identity_part(index: int, value: Any):
    def mutate(target: Path, path: Path, cache: DigestCache) -> None:
        identity = list(file_identity(os.stat(path)))
        identity[index] = value
        _field(identity=identity)(target, path, cache)

    return mutate


CORRUPT = {
    "garbage bytes": _garbage,
    "not UTF-8": _not_utf8_json,
    "a JSON list": _json_list,
    "over 4 KiB": _oversized,
    "a directory": _a_directory,
    "a FIFO": _a_fifo,
    "a symlink": _a_symlink,
    "another user's file": _another_users,
    "format of another version": _field(format="tnedit.digest/2"),
    "format missing": _field(format=None),
    "identity strings": _field(identity=["1", "2", "3", "4", "5"]),
    "identity one short": _identity_part(4, None),
    "identity a bool": _identity_part(2, True),
    "identity a float": _identity_part(3, 1.5),
    "identity a dict": _field(identity={"ino": 1}),
    "sha256 a number": _field(sha256=12345),
    "sha256 63 hex digits": _field(sha256="a" * 63),
    "sha256 65 hex digits": _field(sha256="a" * 65),
    "sha256 upper case": _field(sha256="A" * 64),
    "sha256 not hex": _field(sha256="g" * 64),
    "sha256 with a newline": _field(sha256="a" * 64 + "\n"),
    "read_ns negative": _field(read_ns=-1),
    "read_ns a float": _field(read_ns=0.5),
    "read_ns a bool": _field(read_ns=False),
    "read_ns a string": _field(read_ns="0"),
    "read_ns missing": _field(read_ns=None),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_entry_is_ignored_and_rehashed(case, tmp_path, cache, hashed):
    path = write(tmp_path / "f.bin", b"the real content")
    wrong = hashlib.sha256(b"what the entry claims").hexdigest()
    target = plant(cache, path, wrong)
    assert cache.lookup(file_identity(os.stat(path))) == wrong, "the planted entry must be trusted unspoilt"
    CORRUPT[case](target, path, cache)
    warnings: list[str] = []
    cache = DigestCache(cache.directory, warn=warnings.append)
    assert cache.lookup(file_identity(os.stat(path))) is None
    assert cached_sha256(path, cache) == real_sha(path) and len(hashed) == 1
    assert len(warnings) <= 1 and all("\n" not in w for w in warnings)
    if case != "a directory":  # a file of any kind is replaced by a good entry
        assert json.loads(entry_of(cache, path).read_text())["sha256"] == real_sha(path)


# --- an unwritable cache costs one warning --------------------------------------------------------


def test_a_cache_directory_that_is_a_file_warns_once_and_hashes(tmp_path, trusting, hashed):
    blocker = write(tmp_path / "blocker", b"not a directory")
    warnings: list[str] = []
    cache = DigestCache(blocker / "digests", warn=warnings.append)
    paths = [settled(tmp_path / f"f{i}.bin", os.urandom(100 + i)) for i in range(3)]
    for _ in range(2):
        assert [cached_sha256(p, cache) for p in paths] == [real_sha(p) for p in paths]
    assert len(hashed) == 6 and len(warnings) == 1 and str(blocker) in warnings[0] and "\n" not in warnings[0]
    assert blocker.read_bytes() == b"not a directory"


def test_a_read_only_cache_directory_warns_once(read_only_dir, tmp_path):
    warnings: list[str] = []
    cache = DigestCache(read_only_dir / "digests", warn=warnings.append)
    path = write(tmp_path / "f.bin", b"payload")
    assert cached_sha256(path, cache) == real_sha(path) == cached_sha256(path, cache)
    assert len(warnings) == 1 and "Read-only file system" in warnings[0]


def test_a_file_changed_while_hashed_is_not_recorded(tmp_path, cache, trusting, monkeypatch):
    path = settled(tmp_path / "f.bin", b"before")
    real = streaming.sha256_file

    def hash_then_change(p: Path, *args: Any, **kwargs: Any) -> str:
        digest = real(p, *args, **kwargs)
        path.write_bytes(b"after!")
        return digest

    monkeypatch.setattr(streaming, "sha256_file", hash_then_change)
    cached_sha256(path, cache)
    assert not cache.directory.exists() or not any(cache.directory.iterdir())


def test_threads_recording_one_file_under_two_names_agree(tmp_path, cache, trusting):
    """Hardlinked shards share an inode, so one entry: every thread writes a temporary of its own."""
    path = settled(tmp_path / "f.bin", os.urandom(50_000))
    links = [path]
    for i in range(7):
        links.append(tmp_path / f"link{i}.bin")
        os.link(path, links[-1])
    time.sleep(TICK)  # linking changed the ctime
    warnings: list[str] = []
    cache = DigestCache(cache.directory, warn=warnings.append)
    results: list[str] = []
    threads = [threading.Thread(target=lambda p=p: results.append(cached_sha256(p, cache))) for p in links * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [real_sha(path)] * len(threads) and warnings == []
    assert [p.name for p in cache.directory.iterdir()] == [entry_of(cache, path).name]


# --- reflinks -----------------------------------------------------------------------------------------


class FakeFcntl:
    """Stands in for the fcntl module: FICLONE either 'clones' (copies, as a real clone reads) or fails."""

    def __init__(self, error: int | None = None):
        self.error, self.calls = error, 0

    def ioctl(self, fd: int, request: int, arg: int) -> int:
        assert request == streaming.FICLONE == 0x40049409
        self.calls += 1
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        size = os.fstat(arg).st_size
        os.pwrite(fd, os.pread(arg, size, 0), 0)
        return 0


def _copy_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeFcntl | None) -> tuple[Path, Path]:
    src = write(tmp_path / "src.safetensors", os.urandom(200_000))
    if fake is not None:
        monkeypatch.setattr(streaming, "fcntl", fake)
        monkeypatch.setattr(streaming.sys, "platform", "linux")
    dst = tmp_path / "out" / "src.safetensors"
    assert streaming.copy_plain(src, dst, known_sha256=real_sha(src)) == real_sha(src)
    return src, dst


def test_a_known_digest_clones_without_copying(tmp_path, monkeypatch):
    def no_copy(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("copied although the clone succeeded")

    monkeypatch.setattr(streaming, "_copy_range", no_copy)
    fake = FakeFcntl()
    src, dst = _copy_known(tmp_path, monkeypatch, fake)
    assert fake.calls == 1 and dst.read_bytes() == src.read_bytes()
    assert not dst.is_symlink() and os.stat(dst).st_ino != os.stat(src).st_ino  # a file of its own


@pytest.mark.parametrize("error", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS])
def test_where_clones_are_refused_the_kernel_copies(error, tmp_path, monkeypatch):
    fake = FakeFcntl(error)
    src, dst = _copy_known(tmp_path, monkeypatch, fake)
    assert fake.calls == 1 and dst.read_bytes() == src.read_bytes() and os.stat(dst).st_ino != os.stat(src).st_ino


def test_a_real_io_error_of_the_clone_is_not_hidden(tmp_path, monkeypatch):
    with pytest.raises(OSError) as caught:
        _copy_known(tmp_path, monkeypatch, FakeFcntl(errno.EIO))
    assert caught.value.errno == errno.EIO and caught.value.filename == str(tmp_path / "out" / "src.safetensors")


def test_this_filesystem_clones_or_copies_correctly(tmp_path, monkeypatch):
    src, dst = _copy_known(tmp_path, monkeypatch, None)
    assert dst.read_bytes() == src.read_bytes() and os.stat(dst).st_ino != os.stat(src).st_ino
