"""apply / revert / inspect on tiny models: baked edits equal activation hooks, bytes outside edits never change."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.support.checkpoints import sha
from tests.support.hostile import run_cli as hostile_run_cli
from tests.support.references import hooked_logits, logits_of
from tests.support.tiny import TINY_TYPES, load_tiny, make_tiny
from tnedit.architectures import get_architecture, neuron_axis
from tnedit.edit import RuntimeEdit, apply_to_model, make_edit_spec
from tnedit.formats.neurons import Neuron

NEURONS = "0:3,0:17,1:5,2:63,3:0"
NEURON_LIST = [(0, 3), (0, 17), (1, 5), (2, 63), (3, 0)]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """tests.support.hostile.run_cli, with --quiet added to apply and revert (their progress bars)."""
    return hostile_run_cli([*args, "--quiet"] if args and args[0] in ("apply", "revert") else args, capsys)


def dir_hashes(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): sha(p) for p in sorted(path.rglob("*")) if p.is_file()}


IDS = torch.tensor([[1, 40, 41, 42, 77, 100, 5, 9], [1, 8, 300, 12, 13, 14, 200, 2]])


@pytest.mark.parametrize("name", list(TINY_TYPES))
@pytest.mark.parametrize("op,factor", [("zero", None), ("scale", "0.5")])
def test_baked_equals_activation_hook_every_type(name, op, factor, tmp_path, capsys):
    src = make_tiny(name, tmp_path)
    out = tmp_path / "edited"
    args = ["apply", str(src), "--neurons", NEURONS, "-o", str(out), "--op", op]
    if factor:
        args += ["--factor", factor]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    original, _ = load_tiny(src)
    edited, _ = load_tiny(out)
    expected = hooked_logits(original, NEURON_LIST, 0.0 if op == "zero" else 0.5, IDS)
    baked = logits_of(edited, IDS)
    torch.testing.assert_close(baked, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(baked, logits_of(original, IDS), atol=1e-6), "the edit changed nothing"
    # The runtime hook tnedit ships for evaluate is the same edit.
    spec = make_edit_spec([Neuron(*n) for n in NEURON_LIST], op, factor)
    with RuntimeEdit(original, spec, positions="all"):
        torch.testing.assert_close(logits_of(original, IDS), baked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma3_text"])
def test_bf16_zero_is_exact(name, tmp_path, capsys):
    src = make_tiny(name, tmp_path, dtype="bfloat16")
    out = tmp_path / "edited"
    assert run_cli(["apply", str(src), "--neurons", NEURONS, "-o", str(out)], capsys)[0] == 0
    original, _ = load_tiny(src)
    edited, _ = load_tiny(out)
    assert torch.equal(logits_of(edited, IDS), hooked_logits(original, NEURON_LIST, 0.0, IDS))


def _shard(src: Path, dst: Path, max_shard_size: str) -> Path:
    model, tok = load_tiny(src)
    model.save_pretrained(dst, max_shard_size=max_shard_size)
    tok.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_only_targeted_bytes_change(tie, sharded, dtype, tmp_path, capsys):
    src = make_tiny("llama", tmp_path, dtype=dtype, tie=tie)
    if sharded:
        src = _shard(src, tmp_path / "sharded", "20KB")
        assert (src / "model.safetensors.index.json").is_file()
    before = dir_hashes(src)
    out = tmp_path / "edited"
    assert (
        run_cli(
            ["apply", str(src), "--neurons", "1:5:0.25,2:7,3:63", "--op", "scale", "--factor", "3", "-o", str(out)],
            capsys,
        )[0]
        == 0
    )
    assert dir_hashes(src) == before, "the source checkpoint was modified"
    arch = get_architecture("llama")
    edited_names = {f"model.layers.{layer}.mlp.down_proj.weight": idx for layer, idx in [(1, 5), (2, 7), (3, 63)]}
    prov = json.loads((out / "tnedit.json").read_text())
    for f in sorted(p.name for p in src.glob("*.safetensors")):
        a, b = (src / f).read_bytes(), (out / f).read_bytes()
        assert len(a) == len(b)
        (n,) = struct.unpack("<Q", a[:8])
        assert a[: 8 + n] == b[: 8 + n], "header (order, dtypes, __metadata__) must be the source's bytes"
        assert json.loads(a[8 : 8 + n])["__metadata__"]["format"] == "pt"
        assert prov["weights"][f]["sha256"] == hashlib.sha256(b).hexdigest()
        with safe_open(src / f, "pt") as fa, safe_open(out / f, "pt") as fb:
            for key in fa.keys():
                ta, tb = fa.get_tensor(key), fb.get_tensor(key)
                if key not in edited_names:
                    assert torch.equal(ta.view(torch.uint8), tb.view(torch.uint8)), key
                    continue
                col = edited_names[key]
                axis = neuron_axis(arch)
                keep = [i for i in range(ta.shape[axis]) if i != col]
                assert torch.equal(ta[:, keep], tb[:, keep]), f"{key}: untouched columns changed"
                factor = 0.25 if col == 5 else 3.0
                expected = (ta[:, col].float() * factor).to(ta.dtype)  # fp32 math, rounded once
                assert torch.equal(tb[:, col], expected)
    for side in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (src / side).is_file():
            assert sha(src / side) == sha(out / side), side


def _as_hub_cache(src: Path, cache: Path, commit: str = "c" * 40) -> Path:
    """Lay ``src`` out as snapshot_download does: blobs named by SHA-256, linked from snapshots/<commit>/."""
    blobs, snap = cache / "blobs", cache / "snapshots" / commit
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        digest = sha(f)
        shutil.copyfile(f, blobs / digest)
        (snap / f.name).symlink_to(Path("../..") / "blobs" / digest)
    return snap


@pytest.mark.parametrize("link", [False, True])
def test_untouched_hub_blobs_are_copied_without_rehashing(link, tmp_path, capsys, monkeypatch):
    from tnedit.checkpoint import streaming

    src = _as_hub_cache(_shard(make_tiny("llama", tmp_path), tmp_path / "sharded", "20KB"), tmp_path / "hub")
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    edited_file = index["model.layers.3.mlp.down_proj.weight"]
    hashed: list[str] = []

    def spy(real):
        return lambda path, *args, **kwargs: hashed.append(path.name) or real(path, *args, **kwargs)

    real_copy, real_sha = streaming.copy_with_patches, streaming.sha256_file
    monkeypatch.setattr(streaming, "copy_with_patches", spy(real_copy))
    monkeypatch.setattr(streaming, "sha256_file", spy(real_sha))
    out = tmp_path / "edited"
    args = ["apply", str(src), "--neurons", "3:5", "-o", str(out)] + (["--link"] if link else [])
    assert run_cli(args, capsys)[0] == 0
    weights = json.loads((out / "tnedit.json").read_text())["weights"]
    assert len(weights) > 2 and not [f for f in hashed if f in weights], "untouched Hub blobs were re-hashed"
    for f, entry in weights.items():
        assert not (out / f).is_symlink()
        assert entry["sha256"] == sha(out / f), f
        assert (entry["sha256"] == sha(src / f)) == (f != edited_file), f
        assert entry["source_sha256"] == sha(src / f), f  # the edited one's from its blob's name, unhashed


def test_zero_is_positive_zero_and_pipeline_generates(tmp_path, capsys):
    from transformers import pipeline

    src = make_tiny("llama", tmp_path, dtype="bfloat16")
    out = tmp_path / "edited"
    assert run_cli(["apply", str(src), "--neurons", NEURONS, "-o", str(out)], capsys)[0] == 0
    with safe_open(out / "model.safetensors", "pt") as fh:
        col = fh.get_tensor("model.layers.0.mlp.down_proj.weight")[:, 3]
    assert torch.equal(col.view(torch.int16), torch.zeros_like(col.view(torch.int16))), "zero must be +0.0 bits"
    gen = pipeline("text-generation", model=str(out), device="cpu")
    text = gen("The cat", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The cat") and len(text) > len("The cat")


@pytest.mark.parametrize("sharded", [False, True])
def test_revert_is_byte_identical(sharded, tmp_path, capsys):
    src = make_tiny("gpt2", tmp_path, dtype="bfloat16")
    (src / "README.md").write_text("---\nlicense: apache-2.0\ntags: [demo]\n---\n# Tiny\nSource card text.\n")
    if sharded:
        src = _shard(src, tmp_path / "sharded", "20KB")
        (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Tiny\n")
    out, back = tmp_path / "edited", tmp_path / "reverted"
    assert (
        run_cli(["apply", str(src), "--neurons", NEURONS, "--op", "scale", "--factor", "-1.5", "-o", str(out)], capsys)[
            0
        ]
        == 0
    )
    assert dir_hashes(out) != dir_hashes(src)
    assert run_cli(["revert", str(out), "-o", str(back)], capsys)[0] == 0
    assert dir_hashes(back) == dir_hashes(src)


def test_model_card_and_provenance(tmp_path, capsys):
    src = make_tiny("llama", tmp_path)
    (src / "README.md").write_text("---\nlicense: llama3\nlanguage: [en, ja]\n---\n# Base\nThe base card body.\n")
    out = tmp_path / "edited"
    assert run_cli(["apply", str(src), "--neurons", NEURONS, "-o", str(out)], capsys)[0] == 0
    from tnedit.formats.card import read_front_matter

    card = (out / "README.md").read_text()
    meta = read_front_matter(card)
    assert meta["license"] == "llama3"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "tnedit" in meta["tags"] and meta["base_model"]
    assert "The base card body." in card and "every token position" in card
    assert "| 0 | 2 |" in card  # per-layer edit table: layer 0 has two neurons
    prov = json.loads((out / "tnedit.json").read_text())
    assert prov["edit"]["n_neurons"] == 5 and prov["edit"]["op"] == "zero"
    assert prov["versions"]["torch"] and prov["versions"]["transformers"]
    assert prov["command"].startswith("tnedit apply")
    assert set(prov["weights"]) == {"model.safetensors"}


def test_typed_provenance_reads_back_what_apply_wrote(tmp_path, capsys):
    """tnedit.json parsed into Provenance and written again is the same text; the card renders from either form."""
    from tnedit.formats.card import render_card
    from tnedit.formats.provenance import NOT_A_CHECKPOINT, Provenance, read_provenance

    src = make_tiny("llama", tmp_path)
    out = tmp_path / "edited"
    assert run_cli(["apply", str(src), "--neurons", NEURONS, "-o", str(out)], capsys)[0] == 0
    text = (out / "tnedit.json").read_text(encoding="utf-8")
    prov = read_provenance(out, complete=True, missing=NOT_A_CHECKPOINT)
    assert prov.to_json() == text
    assert Provenance.from_dict(prov.to_dict(), "x") == prov
    assert prov.source.model_type == "llama" and prov.edit.op == "zero" and prov.revert_sha256
    assert [(n.layer, n.index, n.factor) for n in prov.edit.edited_neurons("x")] == [
        (layer, index, 0.0) for layer, index in NEURON_LIST
    ]
    assert render_card(prov, None) == render_card(json.loads(text), None)


def test_in_memory_apply_matches_baked_and_restores(tmp_path, capsys):
    src = make_tiny("gemma3_text", tmp_path)
    out = tmp_path / "edited"
    assert (
        run_cli(["apply", str(src), "--neurons", NEURONS, "--op", "scale", "--factor", "2", "-o", str(out)], capsys)[0]
        == 0
    )
    model, _ = load_tiny(src)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    handle = apply_to_model(model, [Neuron(*n) for n in NEURON_LIST], op="scale", factor=2)
    baked, _ = load_tiny(out)
    torch.testing.assert_close(logits_of(model, IDS), logits_of(baked, IDS), atol=0, rtol=0)
    handle.restore()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_plain_list_csv_json_and_per_neuron_factor(tmp_path, capsys):
    src = make_tiny("llama", tmp_path)
    csv_file = tmp_path / "n.csv"
    csv_file.write_text("layer,index,factor\n1,5,0.5\n2,9,2\n")
    json_file = tmp_path / "n.json"
    json_file.write_text(json.dumps([[1, 5, 0.5], {"layer": 2, "index": 9, "factor": 2}]))
    out_csv, out_json, out_inline = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert (
        run_cli(["apply", str(src), str(csv_file), "-o", str(out_csv), "--op", "scale", "--factor", "1"], capsys)[0]
        == 0
    )
    assert (
        run_cli(["apply", str(src), str(json_file), "-o", str(out_json), "--op", "scale", "--factor", "1"], capsys)[0]
        == 0
    )
    assert (
        run_cli(
            ["apply", str(src), "--neurons", "1:5:0.5,2:9:2", "-o", str(out_inline), "--op", "scale", "--factor", "1"],
            capsys,
        )[0]
        == 0
    )
    digest = sha(out_csv / "model.safetensors")
    assert digest == sha(out_json / "model.safetensors") == sha(out_inline / "model.safetensors")
    assert digest != sha(src / "model.safetensors")


def test_top_k_and_layers_filter(tmp_path, capsys):
    from tnedit.formats.neurons import Method, ModelInfo, NeuronSet

    src = make_tiny("llama", tmp_path)
    from tnedit.checkpoint import open_checkpoint

    ck = open_checkpoint(src)
    info = ModelInfo(str(src), "llama", ck.num_layers, ck.intermediate_size, ck.fingerprint())
    ns = NeuronSet(
        [Neuron(2, 1, 0.9), Neuron(0, 2, 0.8), Neuron(1, 3, 0.7), Neuron(3, 4, 0.6)],
        info,
        Method(kind="transfer", type=1, language="ja"),
    )
    path = ns.save(tmp_path / "neurons.json")
    out = tmp_path / "edited"
    assert run_cli(["apply", str(src), str(path), "--top-k", "3", "--layers", "0-1", "-o", str(out)], capsys)[0] == 0
    prov = json.loads((out / "tnedit.json").read_text())
    assert prov["edit"]["neurons"] == [[0, 2, 0.0], [1, 3, 0.0]]
    assert prov["neuron_set"]["sha256"] == ns.sha256()


def test_duplicates_are_merged_with_a_warning(tmp_path, capsys):
    src = make_tiny("llama", tmp_path)
    out = tmp_path / "edited"
    code, _, err = run_cli(["apply", str(src), "--neurons", "1:5,1:5,2:3", "-o", str(out)], capsys)
    assert code == 0 and "duplicated" in err and "1:5" in err
    assert json.loads((out / "tnedit.json").read_text())["edit"]["n_neurons"] == 2


def test_interrupted_apply_leaves_nothing(tmp_path, capsys, monkeypatch):
    import tnedit.edit.bake as bake_module

    src = make_tiny("llama", tmp_path)
    before = dir_hashes(src)

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bake_module, "_write_revert_file", boom)
    code, _, err = run_cli(["apply", str(src), "--neurons", NEURONS, "-o", str(tmp_path / "edited")], capsys)
    assert code == 130 and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
    assert dir_hashes(src) == before


def test_inspect(tmp_path, capsys):
    from tnedit.formats.neurons import Method, NeuronSet

    ns = NeuronSet(
        [Neuron(2, 1, 0.9), Neuron(0, 2, 0.8), Neuron(2, 3, 0.7)],
        method=Method(kind="transfer", type=1, language="ja", k=3),
    )
    path = ns.save(tmp_path / "neurons.json")
    code, out, _ = run_cli(["inspect", str(path)], capsys)
    assert code == 0
    assert "3 neurons" in out and "0:1  2:2" in out and "type-1" in out
    code, out, _ = run_cli(["inspect", str(path), "--json"], capsys)
    assert json.loads(out)["per_layer"] == {"0": 1, "2": 2}


# --- bad input -----------------------------------------------------------------------------------


def expect_error(args: list[str], capsys, *needles: str, out: Path | None = None) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tnedit: error:"), err
    for needle in needles:
        assert needle in err, (needle, err)
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.tnedit-tmp-*"))
    return err


@pytest.fixture
def tiny(tmp_path):
    return make_tiny("llama", tmp_path)


def test_error_missing_path(tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(["apply", str(tmp_path / "nope"), "--neurons", "0:1", "-o", str(out)], capsys, "nope", out=out)


def test_error_bin_only(tmp_path, capsys, tiny):
    bad = tmp_path / "binonly"
    bad.mkdir()
    (bad / "config.json").write_text((tiny / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    expect_error(
        ["apply", str(bad), "--neurons", "0:1", "-o", str(out)],
        capsys,
        "binonly",
        "convert",
        "save_pretrained",
        out=out,
    )


def test_error_index_missing_shard_and_disagreeing(tmp_path, capsys, tiny):
    sharded = _shard(tiny, tmp_path / "sharded", "20KB")
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    out = tmp_path / "out"
    broken = json.loads(json.dumps(index))
    first = next(iter(broken["weight_map"]))
    broken["weight_map"][first] = "model-99999-of-99999.safetensors"
    index_path.write_text(json.dumps(broken))
    expect_error(["apply", str(sharded), "--neurons", "0:1", "-o", str(out)], capsys, "model-99999", "missing", out=out)
    wrong = json.loads(json.dumps(index))
    shards = sorted(set(wrong["weight_map"].values()))
    key = next(k for k, v in wrong["weight_map"].items() if v == shards[0])
    wrong["weight_map"][key] = shards[1]
    index_path.write_text(json.dumps(wrong))
    expect_error(["apply", str(sharded), "--neurons", "0:1", "-o", str(out)], capsys, key, out=out)


def test_error_quantized(tmp_path, capsys, tiny):
    out = tmp_path / "out"
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tiny / "config.json").write_text(json.dumps(cfg))
    expect_error(["apply", str(tiny), "--neurons", "0:1", "-o", str(out)], capsys, "quantized", "bitsandbytes", out=out)
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    cfg.pop("quantization_config")
    (gguf_dir / "config.json").write_text(json.dumps(cfg))
    (gguf_dir / "model-q4.gguf").write_bytes(b"GGUF")
    expect_error(["apply", str(gguf_dir), "--neurons", "0:1", "-o", str(out)], capsys, "GGUF", out=out)


def test_error_quantized_tensors(tmp_path, capsys):
    from safetensors.numpy import save_file

    src = make_tiny("llama", tmp_path)
    with safe_open(src / "model.safetensors", "np") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors["model.layers.0.mlp.down_proj.qweight"] = np.zeros((4, 4), dtype=np.int32)
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    expect_error(["apply", str(src), "--neurons", "0:1", "-o", str(out)], capsys, "qweight", out=out)


@pytest.mark.parametrize(
    "neurons,needle",
    [
        ("9:1", "layer 9"),
        ("1:64", "index 64"),
        ("1:-2", "index must be a non-negative integer"),
        ("x:1", "layer"),
        ("1", "layer,index"),
    ],
)
def test_error_neuron_out_of_range_or_malformed(neurons, needle, tmp_path, capsys, tiny):
    out = tmp_path / "out"
    expect_error(["apply", str(tiny), "--neurons", neurons, "-o", str(out)], capsys, needle, out=out)


def test_error_fingerprint_mismatch_and_force(tmp_path, capsys, tiny):
    from tnedit.formats.neurons import Method, ModelInfo, NeuronSet

    other = ModelInfo("other/model", "llama", 4, 64, "sha256:0000")
    path = NeuronSet([Neuron(1, 2)], other, Method(kind="transfer")).save(tmp_path / "n.json")
    out = tmp_path / "out"
    expect_error(["apply", str(tiny), str(path), "-o", str(out)], capsys, "fingerprint", "--force", str(path), out=out)
    code, _, err = run_cli(["apply", str(tiny), str(path), "-o", str(out), "--force"], capsys)
    assert code == 0 and "fingerprint mismatch" in err and out.is_dir()


def test_error_out_exists_and_overwrite(tmp_path, capsys, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(["apply", str(tiny), "--neurons", "0:1", "-o", str(out)], capsys)
    assert code == 2 and "--overwrite" in err and (out / "keep.txt").exists()
    assert run_cli(["apply", str(tiny), "--neurons", "0:1", "-o", str(out), "--overwrite"], capsys)[0] == 0
    assert not (out / "keep.txt").exists() and (out / "tnedit.json").is_file()
    expect_error(["apply", str(tiny), "--neurons", "0:1", "-o", str(tiny / "sub")], capsys, "source")


@pytest.mark.parametrize("factor", ["nan", "inf", "-inf", "abc", ""])
def test_error_bad_factor(factor, tmp_path, capsys, tiny):
    out = tmp_path / "out"
    expect_error(
        ["apply", str(tiny), "--neurons", "0:1", "--op", "scale", "--factor", factor, "-o", str(out)],
        capsys,
        "factor",
        out=out,
    )


@pytest.mark.parametrize(
    "content,suffix,needle",
    [
        ("{not json", ".json", "not valid JSON"),
        ('{"format": "tnedit.neurons/9", "neurons": []}', ".json", "'format'"),
        ('{"format": "tnedit.neurons/1", "neurons": [{"layer": 1}]}', ".json", "'index'"),
        ('{"format": "tnedit.neurons/1"}', ".json", "'neurons'"),
        ("layer,index\n1,2\n3\n", ".csv", "row 2"),
        ("", ".csv", "empty"),
        ('[[1, 2, "nan"]]', ".json", "factor"),
    ],
)
def test_error_malformed_neurons_file(content, suffix, needle, tmp_path, capsys, tiny):
    path = tmp_path / f"neurons{suffix}"
    path.write_text(content)
    out = tmp_path / "out"
    expect_error(["apply", str(tiny), str(path), "-o", str(out)], capsys, needle, str(path), out=out)


def test_error_unknown_and_moe_types(tmp_path, capsys, tiny):
    unknown_moe = "'jamba' is a mixture-of-experts variant tnedit does not know"
    for model_type, needle in [("mamba", "supported types: "), ("jamba", unknown_moe)]:
        cfg = json.loads((tiny / "config.json").read_text())
        cfg["model_type"] = model_type
        (tiny / "config.json").write_text(json.dumps(cfg))
        out = tmp_path / "out"
        err = expect_error(["apply", str(tiny), "--neurons", "0:1", "-o", str(out)], capsys, needle, out=out)
        if model_type == "mamba":
            assert "llama" in err and "gpt2" in err


def test_revert_refuses_tampered_checkpoint(tmp_path, capsys, tiny):
    out = tmp_path / "edited"
    assert run_cli(["apply", str(tiny), "--neurons", NEURONS, "-o", str(out)], capsys)[0] == 0
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    back = tmp_path / "back"
    expect_error(["revert", str(out), "-o", str(back)], capsys, "SHA-256", out=back)
    expect_error(["revert", str(tiny), "-o", str(back)], capsys, "tnedit.json", out=back)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_row_block_streaming_equals_one_block(name, tmp_path, capsys, monkeypatch):
    """Tiny blocks (a few rows) must give the same bytes as one whole-tensor block, and revert."""
    import tnedit.checkpoint.streaming as streaming

    src = make_tiny(name, tmp_path, dtype="bfloat16")
    args = ["--neurons", "0:0,0:63,1:5,2:31,2:32,3:7", "--op", "scale", "--factor", "0.3"]
    assert run_cli(["apply", str(src), *args, "-o", str(tmp_path / "whole")], capsys)[0] == 0
    monkeypatch.setattr(streaming, "CHUNK", 200)  # 1-3 rows per block
    assert run_cli(["apply", str(src), *args, "-o", str(tmp_path / "blocks")], capsys)[0] == 0
    assert dir_hashes(tmp_path / "whole").keys() == dir_hashes(tmp_path / "blocks").keys()
    for f in ("model.safetensors", "tnedit_revert.safetensors"):
        assert sha(tmp_path / "whole" / f) == sha(tmp_path / "blocks" / f), f
    assert run_cli(["revert", str(tmp_path / "blocks"), "-o", str(tmp_path / "back")], capsys)[0] == 0
    assert sha(tmp_path / "back" / "model.safetensors") == sha(src / "model.safetensors")
    # The revert file is an ordinary safetensors file holding the original slices in their dtype.
    from safetensors.torch import load_file

    revert = load_file(str(tmp_path / "blocks" / "tnedit_revert.safetensors"))
    key = next(k for k in revert if k.endswith("::original"))
    assert revert[key].dtype == torch.bfloat16
