"""A second `tnedit apply` (and revert, push's checks) on the same local source reads its unchanged files' digests
from the digest cache: the same bytes and provenance as a `--no-cache` run, fewer bytes hashed.

Every byte tnedit hashes goes through ``hashlib.sha256`` in ``tnedit.checkpoint.streaming``; ``counted`` swaps
that module's ``hashlib`` for one that counts the bytes fed to every digest. The tiny checkpoints are seconds
old, younger than the real 2 s granularity, so the fixture ``trusting`` sets it to 0 and the checkpoint is
built a tick before the first apply (tests/unit/checkpoint/test_digest_cache.py tests the rule at 2 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkpoints import sha
from tests.support.hostile import run_cli
from tests.support.tiny import load_tiny, make_tiny
from tnedit.checkpoint import digests, read_header, streaming
from tnedit.formats.provenance import REVERT_NAME

EDIT = ["--neurons", "3:5,3:9", "--op", "scale", "--factor", "0.5"]  # layer 3 only: one shard of several
DOWN3 = "model.layers.3.mlp.down_proj.weight"


class CountingHashlib:
    """Stands in for ``hashlib`` in streaming: every sha256 object counts the bytes it is fed, forks included."""

    def __init__(self) -> None:
        self.bytes = 0
        self._lock = threading.Lock()

    def sha256(self, data: bytes = b"") -> _Counted:
        counted = _Counted(self, hashlib.sha256())
        counted.update(data)
        return counted

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n


class _Counted:
    def __init__(self, counter: CountingHashlib, inner: Any):
        self._counter, self._inner = counter, inner

    def update(self, data: Any) -> None:
        self._counter.add(memoryview(data).nbytes)
        self._inner.update(data)

    def copy(self) -> _Counted:
        return _Counted(self._counter, self._inner.copy())

    def hexdigest(self) -> str:
        return self._inner.hexdigest()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> CountingHashlib:
    counter = CountingHashlib()
    monkeypatch.setattr(streaming, "hashlib", counter)
    return counter


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "TIMESTAMP_GRANULARITY_NS", 0)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def _sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("repeat")
    model, tok = load_tiny(make_tiny("llama", base, subdir="single"))
    model.save_pretrained(base / "sharded", max_shard_size="20KB")
    tok.save_pretrained(base / "sharded")
    return base / "sharded"


@pytest.fixture
def src(_sharded: Path, tmp_path: Path) -> Path:
    """A fresh copy per test, a tick old: hashing it starts after its last change."""
    import shutil

    copy = Path(shutil.copytree(_sharded, tmp_path / "src"))
    time.sleep(0.03)
    return copy


def apply(capsys: Any, src: Path, out: Path, *extra: str) -> str:
    code, _, err = run_cli(["apply", str(src), *EDIT, "-o", str(out), "--quiet", *extra], capsys)
    assert code == 0, err
    return err


def weights(out: Path) -> dict[str, dict[str, Any]]:
    return json.loads((out / "tnedit.json").read_text())["weights"]


def weight_bytes(path: Path) -> dict[str, str]:
    return {p.name: sha(p) for p in sorted(path.glob("*.safetensors"))}


def edited_shard(src: Path) -> str:
    return json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][DOWN3]


def test_a_second_apply_hashes_only_the_edited_output(src, tmp_path, capsys, counted, trusting, cache_dir):
    shards = {p.name: p.stat().st_size for p in src.glob("*.safetensors")}
    edited = edited_shard(src)
    assert len(shards) > 2
    apply(capsys, src, tmp_path / "first")
    first = counted.bytes
    shared_prefix = read_header(src / edited).tensors[DOWN3].begin  # source and output agree up to there
    assert first == sum(shards.values()) + shards[edited] - shared_prefix, "every source and the output, once"
    counted.bytes = 0
    apply(capsys, src, tmp_path / "second")
    assert counted.bytes == shards[edited], "only the edited shard's new output may be hashed"
    counted.bytes = 0
    apply(capsys, src, tmp_path / "uncached", "--no-cache")
    assert counted.bytes == first, "--no-cache must hash as much as an empty cache"
    for out in ("first", "second", "uncached"):
        assert weight_bytes(tmp_path / out) == weight_bytes(tmp_path / "first")
        assert sha(tmp_path / out / REVERT_NAME) == sha(tmp_path / "first" / REVERT_NAME)
    recorded = weights(tmp_path / "second")
    assert recorded == weights(tmp_path / "uncached") == weights(tmp_path / "first")
    for f, entry in recorded.items():
        assert entry["source_sha256"] == sha(src / f) and entry["sha256"] == sha(tmp_path / "second" / f), f


def _cache_state(cache_dir: Path) -> dict[Path, tuple[int, bytes]]:
    paths = [cache_dir, *cache_dir.rglob("*")]
    return {p: (os.stat(p).st_mtime_ns, b"" if p.is_dir() else p.read_bytes()) for p in paths}


def test_no_cache_neither_reads_nor_writes_the_cache(src, tmp_path, capsys, trusting, cache_dir, monkeypatch):
    apply(capsys, src, tmp_path / "fill")
    assert any(cache_dir.rglob("*.json"))
    before = _cache_state(cache_dir)

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("--no-cache read the digest cache")

    monkeypatch.setattr(digests, "_read_entry", forbidden)
    apply(capsys, src, tmp_path / "off", "--no-cache")
    assert _cache_state(cache_dir) == before
    assert weights(tmp_path / "off") == weights(tmp_path / "fill")


def test_no_cache_creates_no_cache_directory(src, tmp_path, capsys, cache_dir):
    apply(capsys, src, tmp_path / "out", "--no-cache")
    assert not cache_dir.exists()


def test_a_source_changed_between_applies_is_hashed_again(src, tmp_path, capsys, trusting, cache_dir):
    """Same size, rewritten within the second, its mtime put back: provenance gets the new bytes' digest."""
    shard = src / edited_shard(src)
    apply(capsys, src, tmp_path / "first")
    data, old = bytearray(shard.read_bytes()), os.stat(shard)
    data[-1] ^= 0x01  # the last byte of the last tensor: still a valid checkpoint
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(old.st_atime_ns, old.st_mtime_ns))
    apply(capsys, src, tmp_path / "second")
    assert weights(tmp_path / "second")[shard.name]["source_sha256"] == sha(shard) != (
        weights(tmp_path / "first")[shard.name]["source_sha256"]
    )


def test_a_warm_cache_reverts_byte_identically_hashing_only_the_restored_file(
    src, tmp_path, capsys, counted, trusting, cache_dir
):
    out = tmp_path / "edited"
    apply(capsys, src, out)
    time.sleep(0.03)  # the edited files' entries must postdate their last change by a tick
    for back in ("back1", "back2", "back3"):
        counted.bytes = 0
        extra = ["--no-cache"] if back == "back3" else []
        code, _, err = run_cli(["revert", str(out), "-o", str(tmp_path / back), "--quiet", *extra], capsys)
        assert code == 0, err
        assert weight_bytes(tmp_path / back) == weight_bytes(src)
        hashed = counted.bytes
        if back == "back1":
            first = hashed
        elif back == "back2":  # edited files and the revert file from the cache; the restored bytes hashed
            assert hashed == (src / edited_shard(src)).stat().st_size < first
        else:
            assert hashed == first


def test_pushs_checks_read_the_cache(src, tmp_path, capsys, counted, trusting, cache_dir):
    from tnedit.hub import prepare_dir

    out = tmp_path / "edited"
    apply(capsys, src, out)
    time.sleep(0.03)
    first = prepare_dir(out)
    assert counted.bytes > 0
    counted.bytes = 0
    again = prepare_dir(out)
    assert counted.bytes == 0, "every file of an unchanged directory was hashed again"
    assert again.sha256 == first.sha256 == {f: sha(out / f) for f in first.sha256}
    prepare_dir(out, no_cache=True)
    assert counted.bytes > 0


def test_a_corrupt_cache_never_changes_what_apply_records(src, tmp_path, capsys, trusting, cache_dir):
    apply(capsys, src, tmp_path / "fill")
    for entry in cache_dir.rglob("*.json"):
        text = json.loads(entry.read_text())
        text["sha256"] = text["sha256"][::-1].upper()  # well-formed JSON, a digest that is no digest
        stamp = os.stat(entry).st_mtime_ns
        entry.write_text(json.dumps(text))
        os.utime(entry, ns=(stamp, stamp))
    err = apply(capsys, src, tmp_path / "out")
    assert err == "" and weights(tmp_path / "out") == weights(tmp_path / "fill")


def test_evaluates_check_of_edited_reads_the_cache_and_catches_a_change(src, tmp_path, capsys, counted, trusting,
                                                                       cache_dir):
    from tnedit.errors import CheckpointError
    from tnedit.evaluate.plan import check_edited_weights
    from tnedit.formats.provenance import read_provenance
    from tnedit.reporting import NullReporter

    out = tmp_path / "edited"
    apply(capsys, src, out)
    time.sleep(0.03)
    provenance = read_provenance(out, complete=True)
    weight_size = sum((out / name).stat().st_size for name in provenance.weights)
    counted.bytes = 0
    check_edited_weights(out, provenance, False, NullReporter())
    assert counted.bytes == weight_size  # the first check hashes every weight file
    counted.bytes = 0
    check_edited_weights(out, provenance, False, NullReporter())
    assert counted.bytes == 0, "an unchanged EDITED was hashed again"
    check_edited_weights(out, provenance, False, NullReporter(), no_cache=True)
    assert counted.bytes == weight_size
    shard = out / edited_shard(src)  # same size, one byte flipped, mtime put back
    data, old = bytearray(shard.read_bytes()), os.stat(shard)
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(old.st_atime_ns, old.st_mtime_ns))
    with pytest.raises(CheckpointError, match=shard.name):
        check_edited_weights(out, provenance, False, NullReporter())
