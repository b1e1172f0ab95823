"""Hostile input for apply, revert and inspect: crafted indexes, headers, provenance, revert files,
outputs that would destroy inputs, signals, sources that change while read, full and read-only disks.

Every bad-input case goes through ``tests.hostile.expect_clean_failure`` (exit 2, one line, nothing
written, inputs byte-identical) and so lands in the session's bad-input matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.hostile import Outcome, compare_snapshots, expect_clean_failure, run_cli, snapshot
from tests.tiny import load_tiny, make_tiny
from tnedit.checkpoint import open_checkpoint, read_header
from tnedit.formats.neurons import Method, ModelInfo, Neuron, NeuronSet
from tnedit.formats.provenance import REVERT_NAME

ROOT = Path(__file__).resolve().parents[1]
INDEX = "model.safetensors.index.json"
DOWN0 = "model.layers.0.mlp.down_proj.weight"
ALL_LAYERS = "0:3,1:5,2:7,3:9"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- fixtures: one tiny model (and a sharded copy) per session, copied per test ---------------------


@pytest.fixture(scope="session")
def _models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    single = make_tiny("llama", base, subdir="single")
    model, tok = load_tiny(single)
    model.save_pretrained(base / "sharded", max_shard_size="20KB")
    tok.save_pretrained(base / "sharded")
    return {"single": single, "sharded": base / "sharded"}


@pytest.fixture
def model(_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_models["single"], tmp_path / "model"))


@pytest.fixture
def sharded(_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_models["sharded"], tmp_path / "sharded"))


def apply_ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, _, err = run_cli(["apply", *args, "--quiet"], capsys)
    assert code == 0, err
    return err


@pytest.fixture
def edited(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "edited"
    apply_ok(capsys, str(model), "--neurons", ALL_LAYERS, "--op", "scale", "--factor", "-2", "-o", str(out))
    return out


# --- 1. names read from files stay inside the checkpoint -------------------------------------------


def apply_fails(case: str, model: Path, tmp_path: Path, capsys: Any, *needles: str) -> Outcome:
    """The common case: ``tnedit apply MODEL --neurons 0:1 -o OUT`` must fail cleanly, MODEL untouched."""
    return expect_clean_failure(case, ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
                                capsys, watch=[tmp_path], inputs=[model], needles=needles)


def revert_fails(case: str, edited: Path, tmp_path: Path, capsys: Any, *needles: str) -> Outcome:
    """``tnedit revert EDITED -o BACK`` must fail cleanly, EDITED untouched."""
    return expect_clean_failure(case, ["revert", str(edited), "-o", str(tmp_path / "back"), "--quiet"], capsys,
                                watch=[tmp_path], inputs=[edited], needles=needles)


def _point_shard_outside(sharded: Path, name_for: Callable[[Path], str]) -> Path:
    """Move the shard holding layer 0's down_proj next to the model and let the index name it."""
    index_path = sharded / INDEX
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][DOWN0]
    outside = sharded.parent / "shard2.safetensors"
    shutil.move(sharded / shard, outside)
    new_name = name_for(outside)
    index["weight_map"] = {k: (new_name if v == shard else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    return outside


@pytest.mark.parametrize(
    "case,name_for",
    [
        ("../x", lambda outside: "../shard2.safetensors"),
        ("absolute path", lambda outside: str(outside)),
        ("sub/../../x", lambda outside: "sub/../../shard2.safetensors"),
        ("backslashes", lambda outside: "..\\shard2.safetensors"),
    ],
)
def test_index_shard_outside_the_model_is_refused(case, name_for, sharded, tmp_path, capsys):
    """With -o next to the model, tmp/../shard2 *was* the source shard: apply truncated it."""
    outside = _point_shard_outside(sharded, name_for)
    before = sha(outside)
    expect_clean_failure(
        f"apply: index shard {case}",
        ["apply", str(sharded), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[sharded, outside],
        needles=[INDEX, "weight_map", "shard2.safetensors"],
    )
    assert sha(outside) == before


def test_index_shard_that_is_not_safetensors_is_refused(sharded, tmp_path, capsys):
    index = json.loads((sharded / INDEX).read_text())
    index["weight_map"][DOWN0] = "config.json"
    (sharded / INDEX).write_text(json.dumps(index))
    expect_clean_failure(
        "apply: index shard config.json",
        ["apply", str(sharded), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[sharded],
        needles=["config.json", ".safetensors"],
    )


def test_shard_symlinked_outside_is_read_and_written_as_a_file(model, tmp_path, capsys):
    """A Hub snapshot's shards are symlinks into blobs/: fine to read; the output is a file of its own."""
    target = tmp_path / "elsewhere" / "weights-blob"
    target.parent.mkdir()
    shutil.move(model / "model.safetensors", target)
    (model / "model.safetensors").symlink_to(target)
    before = sha(target)
    out = tmp_path / "out"
    apply_ok(capsys, str(model), "--neurons", "0:1", "-o", str(out))
    result = out / "model.safetensors"
    assert result.is_file() and not result.is_symlink()
    assert os.stat(result).st_ino != os.stat(target).st_ino
    assert sha(target) == before and sha(result) != before
    prov = json.loads((out / "tnedit.json").read_text())
    assert prov["weights"]["model.safetensors"]["source_sha256"] == before


@pytest.mark.parametrize("where", ["the model", "inside the model"])
def test_out_through_a_symlink_into_the_model_is_refused(where, model, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(model if where == "the model" else model / "sub")
    expect_clean_failure(
        f"apply: -o symlink to {where}",
        ["apply", str(model), "--neurons", "0:1", "-o", str(link), "--overwrite", "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["source"],
    )


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


# --- 2. safetensors headers are validated before anything is written -------------------------------


def rewrite_header(path: Path, mutate: Callable[[dict[str, Any]], Any]) -> None:
    """Replace a safetensors file's header JSON by ``mutate(header)``, keeping the data bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = mutate(json.loads(raw[8 : 8 + n]))
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def _first_tensor(header: dict[str, Any]) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _second_tensor(header: dict[str, Any]) -> str:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return names[1]


def _set(name_of: Callable[[dict[str, Any]], str], key: str, value: Callable[[Any], Any]):
    def mutate(header: dict[str, Any]) -> dict[str, Any]:
        entry = header[name_of(header)]
        entry[key] = value(entry[key])
        return header

    return mutate


def _shift_all(delta: int):
    def mutate(header: dict[str, Any]) -> dict[str, Any]:
        for k, entry in header.items():
            if k != "__metadata__":
                entry["data_offsets"] = [o + delta for o in entry["data_offsets"]]
        return header

    return mutate


HEADER_CASES = [
    ("header is a JSON list", lambda h: [h], ["JSON object", "list"]),
    ("float offsets", _set(_first_tensor, "data_offsets", lambda o: [float(o[0]), float(o[1])]), ["data_offsets"]),
    ("backwards offsets", _set(_first_tensor, "data_offsets", lambda o: [o[1], o[0]]), ["backwards"]),
    ("overlapping offsets", _set(_second_tensor, "data_offsets", lambda o: [o[0] - 4, o[1] - 4]), ["overlaps"]),
    ("shifted offsets", _shift_all(8), ["gap", "expected 0"]),
    ("F16 label on F32 bytes", _set(_first_tensor, "dtype", lambda d: "F16"), ["F16", "takes"]),
    ("string shape", _set(_first_tensor, "shape", lambda s: [str(x) for x in s]), ["shape", "non-negative"]),
    ("bool in shape", _set(_first_tensor, "shape", lambda s: [True, *s[1:]]), ["shape"]),
    ("unknown dtype", _set(_first_tensor, "dtype", lambda d: "F12"), ["unknown dtype", "F12"]),
    ("metadata not strings", lambda h: {**h, "__metadata__": {"format": 1}}, ["__metadata__", "format"]),
]


@pytest.mark.parametrize("case,mutate,needles", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_malformed_header_is_refused(case, mutate, needles, model, tmp_path, capsys):
    weights = model / "model.safetensors"
    rewrite_header(weights, mutate)
    expect_clean_failure(
        f"apply: header {case}",
        ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=[str(weights), *needles],
    )


def test_header_messages_name_the_tensor_and_what_was_expected(model, tmp_path, capsys):
    weights = model / "model.safetensors"
    first = _first_tensor(json.loads(weights.read_bytes()[8 : 8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]]))
    rewrite_header(weights, _set(_first_tensor, "dtype", lambda d: "F16"))
    outcome = expect_clean_failure(
        "apply: header F16 label (message)",
        ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
    )
    assert f"tensor '{first}'" in outcome.stderr and "F16" in outcome.stderr


def test_truncated_weights_are_refused(model, tmp_path, capsys):
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    apply_fails("apply: truncated weights", model, tmp_path, capsys, str(weights), "truncated")


def test_trailing_bytes_are_refused(model, tmp_path, capsys):
    weights = model / "model.safetensors"
    with open(weights, "ab") as fh:
        fh.write(b"\0" * 16)
    apply_fails("apply: trailing bytes after tensors", model, tmp_path, capsys, str(weights), "16 bytes")


def test_dangling_weights_symlink_is_named(model, tmp_path, capsys):
    weights = model / "model.safetensors"
    weights.unlink()
    weights.symlink_to(tmp_path / "gone.safetensors")
    apply_fails("apply: dangling model.safetensors symlink", model, tmp_path, capsys, str(weights), "dangling symlink")


def test_valid_headers_of_other_writers_still_load(model):
    """safetensors' own writer (zero-size tensors, every dtype tnedit copies) passes the checks."""
    import numpy as np
    from safetensors.numpy import save_file

    path = model / "extra.safetensors"
    save_file(
        {"empty": np.zeros((0, 4), np.float32), "b": np.ones(3, np.bool_), "i": np.arange(5, dtype=np.int16)},
        str(path),
    )
    header = read_header(path)
    assert {t.dtype for t in header.tensors.values()} == {"F32", "BOOL", "I16"}
    assert header.tensors["empty"].nbytes == 0


# --- 3. scaling never writes inf or NaN ------------------------------------------------------------


def test_factor_not_finite_in_float32_is_refused_up_front(model, tmp_path, capsys):
    expect_clean_failure(
        "apply: --factor 1e39",
        ["apply", str(model), "--neurons", "0:1", "--op", "scale", "--factor", "1e39", "-o", str(tmp_path / "out")],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["--factor", "1e39", "float32"],
    )


def test_per_neuron_factor_not_finite_in_float32_is_refused(model, tmp_path, capsys):
    expect_clean_failure(
        "apply: per-neuron factor 1e39",
        ["apply", str(model), "--neurons", "0:1:1e39", "--op", "scale", "--factor", "1", "-o", str(tmp_path / "o")],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["0:1:1e39", "float32"],
    )


@pytest.fixture
def f16_model(tmp_path: Path) -> Path:
    return make_tiny("llama", tmp_path, dtype="float16", subdir="f16")


def test_factor_that_overflows_the_stored_dtype_is_refused(f16_model, tmp_path, capsys):
    expect_clean_failure(
        "apply: F16 overflow (factor 1e7)",
        ["apply", str(f16_model), "--neurons", "2:7", "--op", "scale", "--factor", "1e7", "-o", str(tmp_path / "out"),
         "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[f16_model],
        needles=["layer 2", "model.layers.2.mlp.down_proj.weight", "neuron 7", "1e+07", "F16"],
    )


def test_in_memory_overflow_is_refused_and_leaves_the_model_unchanged(f16_model):
    import torch

    from tnedit.edit import apply_to_model
    from tnedit.errors import NonFiniteEditError

    model, _ = load_tiny(f16_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteEditError, match=r"layer 3 .*neuron 9 by 1e\+07 overflows F16"):
        apply_to_model(model, [Neuron(0, 1, factor=2.0), Neuron(3, 9)], op="scale", factor=1e7)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed although the edit failed"


def test_weights_that_were_already_inf_may_stay(tmp_path):
    import numpy as np

    from tnedit.edit import patch_slices

    weight = np.full((2, 3), 2.0, dtype=np.float32)
    weight[0, 1] = np.inf
    patch_slices(weight, "F32", 1, [1], [3.0])
    assert np.isinf(weight[0, 1]) and weight[1, 1] == 6.0


# --- 4. fingerprints ---------------------------------------------------------------------------------


def _neurons_for(path: Path, fingerprint: str, model_dir: Path) -> Path:
    ck = open_checkpoint(model_dir)
    info = ModelInfo(str(model_dir), "llama", ck.num_layers, ck.intermediate_size, fingerprint)
    return NeuronSet([Neuron(1, 2, 0.5)], info, Method(kind="transfer", type=1, language="ja")).save(path)


def test_set_for_another_model_of_the_same_shapes_is_refused(model, tmp_path, capsys):
    other = make_tiny("llama", tmp_path, seed=1, subdir="other")
    fp = open_checkpoint(other).fingerprint()
    assert fp != open_checkpoint(model).fingerprint()
    neurons = _neurons_for(tmp_path / "neurons.json", fp, other)
    expect_clean_failure(
        "apply: fingerprint of a same-shaped model",
        ["apply", str(model), str(neurons), "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model, neurons],
        needles=["fingerprint mismatch", "--force"],
    )


def test_legacy_fingerprint_is_accepted_with_a_warning(model, tmp_path, capsys):
    neurons = _neurons_for(tmp_path / "neurons.json", open_checkpoint(model).legacy_fingerprint(), model)
    err = apply_ok(capsys, str(model), str(neurons), "-o", str(tmp_path / "out"))
    assert "tnedit: warning:" in err and "older tnedit" in err and "shapes only" in err
    assert (tmp_path / "out" / "tnedit.json").is_file()


def test_random_legacy_fingerprint_is_refused(model, tmp_path, capsys):
    neurons = _neurons_for(tmp_path / "neurons.json", "sha256:" + "ab" * 16, model)
    expect_clean_failure(
        "apply: unknown legacy fingerprint",
        ["apply", str(model), str(neurons), "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model, neurons],
        needles=["fingerprint mismatch"],
    )


# --- 5. revert verifies what it restores -----------------------------------------------------------


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


# --- 6. a source that changes while apply reads it (once a SIGBUS) ---------------------------------

# Runs tnedit with one hook installed first; the hook acts on the weight file the first time it is copied.
_HOOKED = """
import os, sys, time
import tnedit.checkpoint.streaming as ck
import tnedit.edit.bake as ed
{hook}
from tnedit.cli import main
main(sys.argv[1:])
"""

_CHANGE_SOURCE = """
real_copy = ck._copy_range
done = []
def changing_copy(fi, fo, begin, end, cancel=None):
    name = str(fi.name)
    if not done and name.endswith(".safetensors") and end - begin > 64:
        done.append(1)
        {change}
    return real_copy(fi, fo, begin, end, cancel)
ck._copy_range = changing_copy
"""

CHANGES = {
    "truncated": "os.truncate(name, begin + (end - begin) // 2)",
    "rewritten": "data = open(name, 'rb').read(); open(name, 'r+b').write(data)",
    "replaced": "data = open(name, 'rb').read(); open(name + '.new', 'wb').write(data); "
    "os.replace(name + '.new', name)",
}


def _hooked_cli(hook: str, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = _HOOKED.format(hook=textwrap.dedent(hook))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, **kwargs
    )


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tnedit-*"))


@pytest.mark.parametrize("change", list(CHANGES))
def test_source_changed_during_apply_is_a_clean_error(change, model, tmp_path):
    out = tmp_path / "out"
    hook = _CHANGE_SOURCE.format(change=CHANGES[change])
    proc = _hooked_cli(hook, ["apply", str(model), "--neurons", ALL_LAYERS, "-o", str(out), "--quiet"])
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err  # not -SIGBUS
    assert len(lines) == 1 and lines[0].startswith("tnedit: error:") and "changed while" in lines[0], err
    assert str(model / "model.safetensors") in lines[0]
    assert not out.exists() and not _temporaries(out)


# --- 7. signals: exit 130, and no temporary directory once every worker stopped -------------------

_SLOW_PATCH = """
ck.CHUNK = 512  # two rows per block: many blocks, each slowed down
real_call = ed.SlicePatch.__call__
def slow_call(self, *args):
    time.sleep(0.05)
    return real_call(self, *args)
ed.SlicePatch.__call__ = slow_call
real_copy = ck.copy_with_patches
def logged_copy(src, *args, **kwargs):  # which weight files were started
    if src.name.endswith(".safetensors"):
        with open(os.environ["STARTED_LOG"], "a") as log:
            log.write(src.name + "\\n")
        time.sleep(0.3)  # untouched files too: the signal must find files still queued, even on a busy machine
    return real_copy(src, *args, **kwargs)
ck.copy_with_patches = ed.copy_with_patches = logged_copy
"""


def _start_slow_apply(model: Path, out: Path) -> subprocess.Popen[str]:
    os.environ["STARTED_LOG"] = str(out.parent / "started.log")
    proc = _hooked_cli(_SLOW_PATCH, ["apply", str(model), "--neurons", ALL_LAYERS, "-o", str(out), "--quiet"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # mid-way: a weight file is being written in the temporary directory
        if any(t.is_dir() and list(t.glob("*.safetensors")) for t in _temporaries(out)):
            return proc
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("apply never got mid-way")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_mid_apply_leaves_nothing(signum, sharded, tmp_path):
    out = tmp_path / "out"
    before = snapshot([sharded])
    proc = _start_slow_apply(sharded, out)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert len(lines) == 1 and lines[0].startswith("tnedit: interrupted"), err
    assert not out.exists() and not _temporaries(out), _temporaries(out)
    assert compare_snapshots(before, snapshot([sharded])) == []
    started = (tmp_path / "started.log").read_text().split()
    assert len(started) < len(list(sharded.glob("*.safetensors"))), "queued files were not cancelled"


def test_a_second_signal_does_not_cut_the_wait_for_workers_short():
    """The temporary directory may go only once no worker writes into it, however often Ctrl-C is pressed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tnedit.edit.workers import stop_workers

    finished = threading.Event()

    def stubborn_worker() -> None:  # one long block: it sees the cancel flag only after it
        time.sleep(0.6)
        finished.set()

    pool = ThreadPoolExecutor(1)
    futures = [pool.submit(stubborn_worker), pool.submit(stubborn_worker)]
    interrupter = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    interrupter.start()
    stop_workers(pool, futures, threading.Event())
    interrupter.join()
    assert finished.is_set() and futures[0].done() and futures[1].cancelled()


def test_interrupt_after_provenance_names_no_output(model, tmp_path, capsys, monkeypatch):
    """Files written inside the temporary directory are not outputs: the interrupt says nothing was written."""
    import tnedit.formats.card

    def interrupted(*_args: Any) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(tnedit.formats.card, "render_card", interrupted)
    expect_clean_failure(
        "apply: Ctrl-C while writing the card",
        ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["nothing was written"],
        code=130,
    )


def test_kill_9_leftover_is_removed_by_the_next_apply(sharded, tmp_path, capsys):
    out = tmp_path / "out"
    proc = _start_slow_apply(sharded, out)
    proc.kill()
    proc.communicate(timeout=60)
    stale = _temporaries(out)
    assert stale and all(str(proc.pid) in t.name for t in stale)
    apply_ok(capsys, str(sharded), "--neurons", ALL_LAYERS, "-o", str(out))
    assert not _temporaries(out) and (out / "tnedit.json").is_file()


def test_temporary_of_a_live_process_is_kept(model, tmp_path, capsys):
    out = tmp_path / "out"
    live = subprocess.Popen(["sleep", "60"])
    try:
        theirs = tmp_path / f".out.tnedit-tmp-{live.pid}"
        theirs.mkdir()
        (theirs / "partial.safetensors").write_bytes(b"x")
        apply_ok(capsys, str(model), "--neurons", "0:1", "-o", str(out))
        assert (theirs / "partial.safetensors").read_bytes() == b"x"
        assert (out / "tnedit.json").is_file()
    finally:
        live.kill()
        live.wait()


# --- 8. outputs never destroy inputs; read-only and full disks -------------------------------------


@pytest.mark.parametrize("form", ["positional", "--neurons FILE"])
def test_out_holding_the_neurons_file_is_refused(form, model, tmp_path, capsys):
    run1 = tmp_path / "run1"
    neurons = _neurons_for(run1 / "neurons.json", open_checkpoint(model).fingerprint(), model)
    given = [str(neurons)] if form == "positional" else ["--neurons", str(neurons)]
    expect_clean_failure(
        f"apply: -o holds the neurons file ({form})",
        ["apply", str(model), *given, "-o", str(run1), "--overwrite", "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model, neurons],
        needles=["holds the input", "neurons.json"],
    )


@pytest.mark.parametrize("where", ["the source", "inside the source", "the source's parent", "the cwd"])
def test_out_overlapping_the_source_or_cwd_is_refused(where, model, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = {"the source": str(model), "inside the source": str(model / "sub"), "the source's parent": str(tmp_path),
           "the cwd": "."}[where]
    expect_clean_failure(
        f"apply: -o {where} --overwrite",
        ["apply", str(model), "--neurons", "0:1", "-o", out, "--overwrite", "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
    )
    assert work.is_dir()


def test_read_only_output_directory(read_only_dir, model, tmp_path, capsys):
    expect_clean_failure(
        "apply: read-only output directory",
        ["apply", str(model), "--neurons", "0:1", "-o", str(read_only_dir / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["Read-only file system"],
    )


def test_full_disk(tiny_disk, tmp_path, capsys):
    big = make_tiny("llama", tmp_path, subdir="big", intermediate_size=2048)  # ~3 MB of weights
    expect_clean_failure(
        "apply: disk full",
        ["apply", str(big), "--neurons", "0:1", "-o", str(tiny_disk / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[big],
        needles=["No space left on device", str(tiny_disk)],
    )
    assert list(tiny_disk.iterdir()) == []


# --- 9, 10. neuron input ---------------------------------------------------------------------------


def test_neurons_option_takes_a_file(model, tmp_path, capsys):
    neurons = tmp_path / "n.csv"
    neurons.write_text("layer,index\n1,5\n2,9\n")
    apply_ok(capsys, str(model), "--neurons", str(neurons), "-o", str(tmp_path / "a"))
    apply_ok(capsys, str(model), "--neurons", "1:5,2:9", "-o", str(tmp_path / "b"))
    prov = json.loads((tmp_path / "a" / "tnedit.json").read_text())
    assert prov["neuron_set"]["path"] == str(neurons) and prov["edit"]["neurons"] == [[1, 5, 0.0], [2, 9, 0.0]]
    assert sha(tmp_path / "a" / "model.safetensors") == sha(tmp_path / "b" / "model.safetensors")


NEURON_ARGS = [
    ("superscript digit", "3:²", ["'3:²'", "index"]),
    ("missing neurons file", "no/such/neurons.json", ["no/such/neurons.json", "neither"]),
]


@pytest.mark.parametrize("case,value,needles", NEURON_ARGS, ids=[c[0] for c in NEURON_ARGS])
def test_bad_neurons_argument(case, value, needles, model, tmp_path, capsys):
    expect_clean_failure(
        f"apply: --neurons {case}",
        ["apply", str(model), "--neurons", value, "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model],
        needles=["--neurons", *needles],
    )


def _neurons_json(**changes: Any) -> dict[str, Any]:
    obj = {
        "format": "tnedit.neurons/1",
        "model": {"name_or_path": "m", "model_type": "llama", "num_layers": 4, "intermediate_size": 64,
                  "fingerprint": "fp2:x"},
        "method": {"kind": "transfer", "type": 1, "layers": [0, 1]},
        "neurons": [{"layer": 1, "index": 2, "score": 0.5}],
    }
    for dotted, value in changes.items():
        block, _, key = dotted.partition("__")
        obj[block][key] = value
    return obj


NEURON_FILES = [
    ("model.num_layers a string", _neurons_json(model__num_layers="4"), ["'model.num_layers'", "integer", "'4'"]),
    ("model.fingerprint missing", {**_neurons_json(), "model": {"name_or_path": "m"}}, ["'model."]),
    ("model unknown key", _neurons_json(model__colour="red"), ["'model.colour'", "unknown"]),
    ("method.layers a string", _neurons_json(method__layers="0-3"), ["'method.layers'", "list"]),
    ("method.kind a number", _neurons_json(method__kind=3), ["'method.kind'", "string"]),
    ("score NaN", {**_neurons_json(), "neurons": [{"layer": 1, "index": 2, "score": float("nan")}]}, ["score"]),
    ("score a string", {**_neurons_json(), "neurons": [{"layer": 1, "index": 2, "score": "high"}]}, ["score"]),
]


@pytest.mark.parametrize("case,obj,needles", NEURON_FILES, ids=[c[0] for c in NEURON_FILES])
def test_mistyped_neurons_file(case, obj, needles, model, tmp_path, capsys):
    path = tmp_path / "neurons.json"
    path.write_text(json.dumps(obj))
    expect_clean_failure(
        f"apply: neurons.json {case}",
        ["apply", str(model), str(path), "-o", str(tmp_path / "out"), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[model, path],
        needles=[str(path), *needles],
    )


def test_neuron_format_error_is_a_tnedit_error_and_a_value_error():
    from tnedit.errors import InputError, NeuronSetError
    from tnedit.formats.neurons import NeuronFormatError, parse_neuron_list

    assert issubclass(NeuronFormatError, NeuronSetError) and issubclass(NeuronFormatError, InputError)
    with pytest.raises(ValueError):
        parse_neuron_list("3:²")


def test_neuron_set_save_is_atomic_and_cleans_stale_temporaries(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".neurons.json.tnedit-tmp-{dead.pid}"
    stale.write_text("half")
    path = NeuronSet([Neuron(1, 2)]).save(tmp_path / "neurons.json")
    assert json.loads(path.read_text())["neurons"] == [{"layer": 1, "index": 2}]
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["neurons.json"]


# --- other sources of bad input met on the way -----------------------------------------------------


def test_source_card_not_utf8(model, tmp_path, capsys):
    (model / "README.md").write_bytes(b"---\nlicense: x\n---\n\xff\xfe broken")
    apply_fails("apply: source README.md not UTF-8", model, tmp_path, capsys, "README.md", "UTF-8")


def test_source_provenance_not_json(model, tmp_path, capsys):
    (model / "tnedit.json").write_text("{broken")
    apply_fails("apply: source tnedit.json not JSON", model, tmp_path, capsys, "tnedit.json", "not valid JSON")


def test_config_with_a_string_layer_count(model, tmp_path, capsys):
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = "4"
    (model / "config.json").write_text(json.dumps(config))
    apply_fails("apply: config.json layer count a string", model, tmp_path, capsys, "config.json", "layer count")


def test_side_file_that_is_a_dangling_symlink(model, tmp_path, capsys):
    (model / "tokenizer.model").symlink_to(tmp_path / "missing-blob")
    apply_fails("apply: side file a dangling symlink", model, tmp_path, capsys, "tokenizer.model", "dangling symlink")


def test_side_file_that_is_a_fifo(model, tmp_path, capsys):
    """Opening a FIFO for reading waits for a writer: apply must refuse it, not hang.

    Outside the harness, whose snapshot would itself block reading the FIFO.
    """
    os.mkfifo(model / "vocab.txt")
    out = tmp_path / "out"
    code, _, err = run_cli(["apply", str(model), "--neurons", "0:1", "-o", str(out), "--quiet"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tnedit: error:"), err
    assert "vocab.txt" in err and "not a regular file" in err
    assert not out.exists() and not _temporaries(out)


# --- 13. inspect ---------------------------------------------------------------------------------------


INSPECT_CASES = [
    ("missing file", None, ["nope.json", "not found"]),
    ("malformed JSON", "{oops", ["not valid JSON"]),
    ("wrong format key", '{"format": "tnedit.neurons/7", "neurons": []}', ["'format'", "tnedit.neurons/1"]),
    ("model.num_layers a string", json.dumps(_neurons_json(model__num_layers="4")), ["'model.num_layers'"]),
    ("not UTF-8", b"\xff\xfe\x00", ["UTF-8"]),
]


@pytest.mark.parametrize("case,content,needles", INSPECT_CASES, ids=[c[0] for c in INSPECT_CASES])
def test_inspect_bad_input_is_one_line(case, content, needles, tmp_path, capsys):
    path = tmp_path / "nope.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    expect_clean_failure(
        f"inspect: {case}",
        ["inspect", str(path), "--quiet"],
        capsys,
        watch=[tmp_path],
        inputs=[path] if content is not None else [],
        needles=needles,
    )


def test_inspect_accepts_quiet(tmp_path, capsys):
    path = NeuronSet([Neuron(2, 1, 0.9), Neuron(0, 2, 0.8)]).save(tmp_path / "neurons.json")
    code, out, err = run_cli(["inspect", str(path), "--quiet"], capsys)
    assert code == 0 and "2 neurons" in out and err == ""


# --- 11, 12. top-k within layers; one final progress line ----------------------------------------


def test_top_k_counts_within_layers(model, tmp_path, capsys):
    ck = open_checkpoint(model)
    info = ModelInfo(str(model), "llama", ck.num_layers, ck.intermediate_size, ck.fingerprint())
    ranked = [Neuron(2, 1, 0.9), Neuron(3, 4, 0.85), Neuron(0, 2, 0.8), Neuron(1, 3, 0.7), Neuron(0, 9, 0.6)]
    path = NeuronSet(ranked, info, Method(kind="transfer")).save(tmp_path / "neurons.json")
    out = tmp_path / "out"
    apply_ok(capsys, str(model), str(path), "--top-k", "2", "--layers", "0-1", "-o", str(out))
    assert json.loads((out / "tnedit.json").read_text())["edit"]["neurons"] == [[0, 2, 0.0], [1, 3, 0.0]]


def test_progress_bar_prints_its_final_line_once(sharded, tmp_path, capsys, monkeypatch):
    import tnedit.reporting

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # --quiet in earlier tests set it for the process
    # Draw on every update, as a slow apply does (tqdm's adaptive miniters would skip some).
    monkeypatch.setattr(tnedit.reporting, "BAR_OPTIONS", {"mininterval": 0, "miniters": 1})
    code, _, err = run_cli(["apply", str(sharded), "--neurons", ALL_LAYERS, "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert err.count("apply: 100%") == 1, err.replace("\r", "\n")
    assert err.count("apply:") > 2  # the bar did draw intermediate states
