"""checkpoint.streaming: whole-file digests with progress, and copies that never follow a planted symlink."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest


def test_sha256_files_match_hashlib_and_report_progress(tmp_path):
    from tnedit.checkpoint import CHUNK, sha256_files

    rng = np.random.default_rng(0)
    sizes = [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 12345]
    paths = []
    for i, n in enumerate(sizes):
        paths.append(tmp_path / f"f{i}.bin")
        paths[-1].write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    seen: list[int] = []
    assert sha256_files(paths, seen.append) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert sum(seen) == sum(sizes)


def test_create_new_never_follows_a_planted_symlink(tmp_path):
    from tnedit.checkpoint import copy_plain

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    src = tmp_path / "src.txt"
    src.write_text("payload")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "src.txt").symlink_to(victim)
    with pytest.raises(FileExistsError):
        copy_plain(src, tmp_path / "out" / "src.txt")
    assert victim.read_text() == "precious"
