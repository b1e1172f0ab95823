"""Hostile input for apply and inspect: crafted indexes and headers, factors that overflow, fingerprints,
outputs that would destroy inputs, full and read-only disks, bad neuron input.

Every bad-input case goes through ``tests.support.hostile.expect_clean_failure`` (exit 2, one line, nothing
written, inputs byte-identical) and so lands in the session's bad-input matrix. Revert's cases (5.) are in
``test_hostile_revert.py``; a source that changes while read (6.) and signals (7.) in
``test_hostile_apply_signals.py``; the fixtures (``model``, ``sharded``, ``edited``) in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.checkpoints import ALL_LAYERS, DOWN0, apply_ok, sha, temporaries
from tests.support.hostile import Outcome, expect_clean_failure, run_cli
from tests.support.tiny import load_tiny, make_tiny
from tnedit.checkpoint import open_checkpoint, read_header
from tnedit.formats.neurons import Method, ModelInfo, Neuron, NeuronSet

INDEX = "model.safetensors.index.json"


# --- 1. names read from files stay inside the checkpoint -------------------------------------------


def apply_fails(case: str, model: Path, tmp_path: Path, capsys: Any, *needles: str) -> Outcome:
    """The common case: ``tnedit apply MODEL --neurons 0:1 -o OUT`` must fail cleanly, MODEL untouched."""
    return expect_clean_failure(case, ["apply", str(model), "--neurons", "0:1", "-o", str(tmp_path / "out"), "--quiet"],
                                capsys, watch=[tmp_path], inputs=[model], needles=needles)


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
    assert not out.exists() and not temporaries(out)


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


# --- 14. the digest cache is an optimisation: a bad one costs at most a warning, never the command ------------


def _cache_file(tmp_path: Path, model: Path, out: Path) -> Path:
    (tmp_path / "cache-file").write_text("not a directory")
    return tmp_path / "cache-file"


def _cache_dangling_link(tmp_path: Path, model: Path, out: Path) -> Path:
    (tmp_path / "cache-link").symlink_to(tmp_path / "gone")
    return tmp_path / "cache-link" / "sub"


def _cache_of_garbage(tmp_path: Path, model: Path, out: Path) -> Path:
    """Every entry the model's files would use, planted as garbage (and a temporary left by a dead process)."""
    from tnedit.checkpoint import DigestCache, file_identity

    cache = DigestCache(tmp_path / "garbage" / "digests")
    cache.directory.mkdir(parents=True)
    for weights in model.glob("*.safetensors"):
        cache.entry_path(file_identity(os.stat(weights))).write_bytes(b"\xff{not json")
    (cache.directory / ".0-0.json.999999-1.tmp").write_text("{")
    return tmp_path / "garbage"


CACHE_CASES = {
    "a regular file": (_cache_file, True),
    "a dangling symlink": (_cache_dangling_link, True),
    "inside the model": (lambda tmp_path, model, out: model / ".cache", True),
    "inside OUT": (lambda tmp_path, model, out: out / "cache", True),
    "full of garbage": (_cache_of_garbage, False),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_a_bad_digest_cache_never_fails_apply(case, model, tmp_path, capsys, monkeypatch):
    """TNEDIT_CACHE_DIR unusable: apply succeeds with at most one warning line, and records the real digests."""
    out = tmp_path / "out"
    make_cache, warns = CACHE_CASES[case]
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(make_cache(tmp_path, model, out)))
    before = {p.name: sha(p) for p in model.rglob("*") if p.is_file()}
    err = apply_ok(capsys, str(model), "--neurons", ALL_LAYERS, "-o", str(out))
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == int(warns), err
    assert all(line.startswith("tnedit: warning: digest cache") for line in lines), err
    assert {p.name: sha(p) for p in model.rglob("*") if p.is_file()} == before, "the model was written"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(p.name for p in model.iterdir()), "README.md", "tnedit.json", "tnedit_revert.safetensors"]
    ), "OUT holds more than the checkpoint"
    for f, entry in json.loads((out / "tnedit.json").read_text())["weights"].items():
        assert entry["source_sha256"] == sha(model / f) and entry["sha256"] == sha(out / f), f


def test_a_read_only_digest_cache_never_fails_apply(read_only_dir, model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TNEDIT_CACHE_DIR", str(read_only_dir))
    err = apply_ok(capsys, str(model), "--neurons", ALL_LAYERS, "-o", str(tmp_path / "out"))
    assert err.count("\n") == 1 and "digest cache" in err and "Read-only file system" in err, err
    prov = json.loads((tmp_path / "out" / "tnedit.json").read_text())
    assert prov["weights"]["model.safetensors"]["source_sha256"] == sha(model / "model.safetensors")
