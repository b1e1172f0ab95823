"""hub: the pure helpers (the push itself, against a stand-in Hub, is tests/integration/test_hub.py)."""

from __future__ import annotations

from tnedit.hub import git_blob_sha1


def test_git_blob_sha1_is_gits_object_id():
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
