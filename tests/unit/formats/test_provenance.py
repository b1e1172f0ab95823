"""formats.provenance: reading tnedit.json, and the one-line problem each caller gets."""

from __future__ import annotations

import pytest


def test_read_provenance_names_each_callers_problem(tmp_path):
    from tnedit.errors import CheckpointError
    from tnedit.formats.provenance import NOT_A_CHECKPOINT, Provenance, read_provenance

    with pytest.raises(CheckpointError, match="no tnedit.json; not a checkpoint written by tnedit apply"):
        read_provenance(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a tnedit checkpoint \(no tnedit.json\); expected a directory"):
        read_provenance(tmp_path, missing=NOT_A_CHECKPOINT)
    (tmp_path / "tnedit.json").write_text('{"format": "tnedit.provenance/1", "weights": {}}', encoding="utf-8")
    legacy = read_provenance(tmp_path)  # revert checks the digests later, against the checkpoint
    assert legacy.weights == {} and "revert_sha256" not in legacy.to_dict()
    with pytest.raises(CheckpointError, match=r"key 'source.name_or_path' is missing or not a string"):
        read_provenance(tmp_path, complete=True)
    (tmp_path / "tnedit.json").write_text('{"format": "tnedit.provenance/9"}', encoding="utf-8")
    with pytest.raises(CheckpointError, match="key 'format' must be 'tnedit.provenance/1'"):
        read_provenance(tmp_path)
    with pytest.raises(CheckpointError, match="must be 'tnedit.provenance/1'"):
        Provenance.from_dict([], "x")
