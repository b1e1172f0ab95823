"""Hostile input for revert: provenance, revert files and edited files tampered with, outputs that overlap.

Every bad-input case goes through ``tests.support.hostile.expect_clean_failure`` and so lands in the session's
bad-input matrix. The fixtures (``model``, ``edited``) are in ``conftest.py``; the numbering is the
hardening note's, shared with ``test_hostile_apply.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkpoints import DOWN0, sha
from tests.support.hostile import Outcome, expect_clean_failure, run_cli
from tnedit.checkpoint import read_header
from tnedit.formats.provenance import REVERT_NAME

# --- 5. revert verifies what it restores -----------------------------------------------------------


def revert_fails(case: str, edited: Path, tmp_path: Path, capsys: Any, *needles: str) -> Outcome:
    """``tnedit revert EDITED -o BACK`` must fail cleanly, EDITED untouched."""
    return expect_clean_failure(case, ["revert", str(edited), "-o", str(tmp_path / "back"), "--quiet"], capsys,
                                watch=[tmp_path], inputs=[edited], needles=needles)


def _provenance(edited: Path) -> dict[str, Any]:
    return json.loads((edited / "tnedit.json").read_text())


def _write_provenance(edited: Path, prov: dict[str, Any]) -> None:
    (edited / "tnedit.json").write_text(json.dumps(prov, indent=2))


def test_provenance_records_source_and_revert_digests(model, edited):
    prov = _provenance(edited)
    assert prov["revert_sha256"] == sha(edited / REVERT_NAME)
    for f, entry in prov["weights"].items():
        assert entry["source_sha256"] == sha(model / f)
        assert entry["sha256"] == sha(edited / f) != entry["source_sha256"]


def test_revert_refuses_a_corrupted_revert_file(edited, tmp_path, capsys):
    revert = edited / REVERT_NAME
    info = read_header(revert).tensors[f"{DOWN0}::original"]
    data = bytearray(revert.read_bytes())
    data[info.begin + 5] ^= 0x40
    revert.write_bytes(bytes(data))
    revert_fails("revert: revert file corrupted", edited, tmp_path, capsys, str(revert), "revert_sha256")


def _drop(*path: str):
    def mutate(prov: dict[str, Any]) -> None:
        obj = prov
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]

    return mutate


def _first_weight(prov: dict[str, Any]) -> str:
    return sorted(prov["weights"])[0]


def _set_weight_key(key: str, value: Any):
    def mutate(prov: dict[str, Any]) -> None:
        prov["weights"][_first_weight(prov)][key] = value

    return mutate


def _rename_weight(name: str):
    def mutate(prov: dict[str, Any]) -> None:
        prov["weights"][name] = prov["weights"].pop(_first_weight(prov))

    return mutate


PROVENANCE_CASES = [
    ("no weights", _drop("weights"), ["'weights'"]),
    ("weights a list", lambda p: p.update(weights=[1]), ["'weights'"]),
    ("no sha256", lambda p: _drop("weights", _first_weight(p), "sha256")(p), ["sha256", "missing"]),
    ("sha256 not hex", _set_weight_key("sha256", "xyz"), ["sha256", "SHA-256 hex digest"]),
    ("source_sha256 a number", _set_weight_key("source_sha256", 5), ["source_sha256"]),
    ("no revert_sha256", _drop("revert_sha256"), ["revert_sha256", "missing"]),
    ("weights key ../x", _rename_weight("../model.safetensors"), ["weights", "../model.safetensors"]),
    ("weights key other file", _rename_weight("other.safetensors"), ["weights", "other.safetensors"]),
    ("edited_tensors not a list", _set_weight_key("edited_tensors", "x"), ["edited_tensors"]),
    ("edited_tensors disagree", _set_weight_key("edited_tensors", []), ["edited_tensors"]),
    ("format wrong", lambda p: p.update(format="tnedit.provenance/9"), ["'format'"]),
]


@pytest.mark.parametrize("case,mutate,needles", PROVENANCE_CASES, ids=[c[0] for c in PROVENANCE_CASES])
def test_revert_refuses_malformed_provenance(case, mutate, needles, edited, tmp_path, capsys):
    prov = _provenance(edited)
    mutate(prov)
    _write_provenance(edited, prov)
    revert_fails(f"revert: tnedit.json {case}", edited, tmp_path, capsys, "tnedit.json", *needles)


def test_revert_refuses_a_modified_edited_file(edited, tmp_path, capsys):
    weights = edited / "model.safetensors"
    info = read_header(weights).tensors[DOWN0]
    data = bytearray(weights.read_bytes())
    data[info.begin + 1] ^= 0x01
    weights.write_bytes(bytes(data))
    revert_fails("revert: edited weight file modified", edited, tmp_path, capsys, str(weights), "modified after apply")


def test_revert_checks_restored_bytes_before_output_appears(edited, tmp_path, capsys):
    """A source digest that the restored bytes do not match: the verified-while-written check fires."""
    prov = _provenance(edited)
    prov["weights"]["model.safetensors"]["source_sha256"] = "0" * 64
    _write_provenance(edited, prov)
    revert_fails("revert: restored bytes differ from source_sha256", edited, tmp_path, capsys,
                 "source_sha256", "original bytes")


def _resave_revert(edited: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the revert file's tensors and record its new digest, so only its structure is wrong."""
    from safetensors.numpy import load_file, save_file

    revert = edited / REVERT_NAME
    tensors = load_file(str(revert))
    metadata = read_header(revert).metadata
    mutate(tensors)
    revert.unlink()
    save_file(tensors, str(revert), metadata=metadata)
    prov = _provenance(edited)
    prov["revert_sha256"] = sha(revert)
    _write_provenance(edited, prov)


def _rename_revert_tensor(tensors: dict[str, Any]) -> None:
    for part in ("original", "indices"):
        tensors[f"model.layers.0.mlp.nope.weight::{part}"] = tensors.pop(f"{DOWN0}::{part}")


def _index_out_of_range(tensors: dict[str, Any]) -> None:
    tensors[f"{DOWN0}::indices"] = tensors[f"{DOWN0}::indices"] + 1000


def _wrong_original_shape(tensors: dict[str, Any]) -> None:
    tensors[f"{DOWN0}::original"] = tensors[f"{DOWN0}::original"][:3]


REVERT_FILE_CASES = [
    ("names a missing tensor", _rename_revert_tensor, ["model.layers.0.mlp.nope.weight", "lacks"]),
    ("indices out of range", _index_out_of_range, ["::indices", "0..63"]),
    ("original of the wrong shape", _wrong_original_shape, ["::original", "expected"]),
    ("indices missing", lambda t: t.pop(f"{DOWN0}::indices"), ["::indices"]),
]


@pytest.mark.parametrize("case,mutate,needles", REVERT_FILE_CASES, ids=[c[0] for c in REVERT_FILE_CASES])
def test_revert_refuses_a_malformed_revert_file(case, mutate, needles, edited, tmp_path, capsys):
    _resave_revert(edited, mutate)
    revert_fails(f"revert: revert file {case}", edited, tmp_path, capsys, REVERT_NAME, *needles)


def test_revert_of_tnedit_01_provenance_works_with_a_warning(model, edited, tmp_path, capsys):
    prov = _provenance(edited)
    del prov["revert_sha256"]
    for entry in prov["weights"].values():
        del entry["source_sha256"]
    _write_provenance(edited, prov)
    back = tmp_path / "back"
    code, _, err = run_cli(["revert", str(edited), "-o", str(back), "--quiet"], capsys)
    assert code == 0, err
    assert "tnedit: warning:" in err and "tnedit 0.1" in err and "cannot be verified" in err
    assert sha(back / "model.safetensors") == sha(model / "model.safetensors")


@pytest.mark.parametrize("where", ["EDITED itself", "inside EDITED", "EDITED's parent"])
def test_revert_output_must_not_overlap_edited(where, edited, tmp_path, capsys, monkeypatch):
    out = {"EDITED itself": edited, "inside EDITED": edited / "sub", "EDITED's parent": tmp_path}[where]
    monkeypatch.chdir(tmp_path.parent)
    expect_clean_failure(
        f"revert: -o {where}",
        ["revert", str(edited), "-o", str(out), "--overwrite", "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[edited],
        needles=[str(out)],
    )


def test_a_digest_cache_inside_edited_is_not_written(edited, tmp_path, capsys, monkeypatch):
    """Revert never writes EDITED: a TNEDIT_CACHE_DIR inside it is not used (one warning), and revert succeeds."""
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(edited / "cache"))
    code, _, err = run_cli(["revert", str(edited), "-o", str(tmp_path / "back"), "--quiet"], capsys)
    assert code == 0, err
    assert err.count("\n") == 1 and err.startswith("tnedit: warning: digest cache") and "must not write" in err
    assert not (edited / "cache").exists()
