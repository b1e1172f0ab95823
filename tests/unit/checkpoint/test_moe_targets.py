"""checkpoint.targets: where each MoE projection lives on disk, the checks open_checkpoint makes, and the
streaming patch of fused 3-D tensors by experts' rows. Torch-free: checkpoints are written with numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tnedit.checkpoint import Target, copy_with_patches, open_checkpoint, read_header, view_shape, write_safetensors
from tnedit.errors import CheckpointError

H, W, E, LAYERS = 8, 4, 3, 2


def _config(model_type: str, **extra) -> dict:
    base = {"model_type": model_type, "num_hidden_layers": LAYERS, "hidden_size": H}
    if model_type == "mixtral":
        base.update(intermediate_size=W, num_local_experts=E)
    elif model_type == "gpt_oss":
        base.update(intermediate_size=W, num_local_experts=E)
    else:  # qwen2_moe: layer 0 dense (width 6), a shared expert of width 5
        base.update(intermediate_size=6, moe_intermediate_size=W, num_experts=E, shared_expert_intermediate_size=5,
                    mlp_only_layers=[0], decoder_sparse_step=1)
    base.update(extra)
    return base


def _write(path: Path, config: dict, tensors: dict[str, np.ndarray]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
    write_safetensors(path / "model.safetensors", {k: (v, dtypes[v.dtype]) for k, v in tensors.items()}, {})
    return path


def _mixtral_keys(fused: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"model.embed_tokens.weight": rng.standard_normal((10, H), dtype=np.float32)}
    for layer in range(LAYERS):
        p = f"model.layers.{layer}"
        out[f"{p}.block_sparse_moe.gate.weight"] = rng.standard_normal((E, H), dtype=np.float32)
        if fused:
            out[f"{p}.mlp.experts.down_proj"] = rng.standard_normal((E, H, W), dtype=np.float32)
        else:
            for e in range(E):
                out[f"{p}.block_sparse_moe.experts.{e}.w2.weight"] = rng.standard_normal((H, W), dtype=np.float32)
    return out


def _qwen_keys() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {"model.layers.0.mlp.down_proj.weight": rng.standard_normal((H, 6), dtype=np.float32)}
    out["model.layers.1.mlp.experts.down_proj"] = rng.standard_normal((E, H, W), dtype=np.float32)
    out["model.layers.1.mlp.shared_expert.down_proj.weight"] = rng.standard_normal((H, 5), dtype=np.float32)
    return out


def test_targets_of_every_layout(tmp_path):
    disk = open_checkpoint(_write(tmp_path / "disk", _config("mixtral"), _mixtral_keys(False)))
    assert disk.target(1, 2) == Target("model.layers.1.block_sparse_moe.experts.2.w2.weight", 1, None)
    fused = open_checkpoint(_write(tmp_path / "fused", _config("mixtral"), _mixtral_keys(True)))
    assert fused.target(1, 2) == Target("model.layers.1.mlp.experts.down_proj", 1, (2 * H, 3 * H))
    qwen = open_checkpoint(_write(tmp_path / "qwen", _config("qwen2_moe"), _qwen_keys()))
    assert qwen.target(0, None) == Target("model.layers.0.mlp.down_proj.weight", 1, None)
    assert qwen.target(1, "shared") == Target("model.layers.1.mlp.shared_expert.down_proj.weight", 1, None)
    assert qwen.target(1, 0).rows == (0, H)
    oss_keys = {f"model.layers.{n}.mlp.experts.down_proj": np.zeros((E, W, H), np.float32) for n in range(LAYERS)}
    oss = open_checkpoint(_write(tmp_path / "oss", _config("gpt_oss"), oss_keys))
    assert oss.target(0, 1) == Target("model.layers.0.mlp.experts.down_proj", 0, (W, 2 * W))
    assert view_shape((E, W, H)) == (E * W, H)


def test_the_fingerprint_ignores_every_projection_and_sees_the_rest(tmp_path):
    keys = _mixtral_keys(True)
    base = open_checkpoint(_write(tmp_path / "a", _config("mixtral"), keys)).fingerprint()
    keys["model.layers.1.mlp.experts.down_proj"] = keys["model.layers.1.mlp.experts.down_proj"] * 0
    assert open_checkpoint(_write(tmp_path / "b", _config("mixtral"), keys)).fingerprint() == base
    keys["model.layers.1.block_sparse_moe.gate.weight"] = keys["model.layers.1.block_sparse_moe.gate.weight"] + 1
    assert open_checkpoint(_write(tmp_path / "c", _config("mixtral"), keys)).fingerprint() != base


def _drop(name):
    return lambda t: t.pop(name)


def _reshape(name, shape):
    return lambda t: t.update({name: np.zeros(shape, np.float32)})


CASES = [
    ("a per-expert key missing", False, _drop("model.layers.1.block_sparse_moe.experts.2.w2.weight"),
     ["model.layers.1.block_sparse_moe.experts.2.w2.weight", "missing"]),
    ("no experts at all in a layer", False,
     lambda t: [t.pop(f"model.layers.1.block_sparse_moe.experts.{e}.w2.weight") for e in range(E)],
     ["model.layers.1.block_sparse_moe.experts.0.w2.weight", "model.layers.1.mlp.experts.down_proj", "missing"]),
    ("a per-expert key of the wrong shape", False, _reshape("model.layers.0.block_sparse_moe.experts.1.w2.weight",
                                                            (H, W + 1)),
     ["experts.1.w2.weight", f"[{H}, {W + 1}]", f"expected [{H}, {W}]"]),
    ("a fused tensor of the wrong shape", True, _reshape("model.layers.1.mlp.experts.down_proj", (E, W, H)),
     ["model.layers.1.mlp.experts.down_proj", f"expected [{E}, {H}, {W}]"]),
    ("a fused tensor of another dtype", True,
     lambda t: t.update({"model.layers.0.mlp.experts.down_proj": np.zeros((E, H, W), np.int64)}),
     ["model.layers.0.mlp.experts.down_proj", "I64"]),
    ("both layouts in one layer", True,
     lambda t: t.update({"model.layers.1.block_sparse_moe.experts.0.w2.weight": np.zeros((H, W), np.float32)}),
     ["both", "model.layers.1.mlp.experts.down_proj"]),
]


@pytest.mark.parametrize("case,fused,mutate,needles", CASES, ids=[c[0] for c in CASES])
def test_open_checkpoint_refuses_bad_expert_tensors(case, fused, mutate, needles, tmp_path):
    keys = _mixtral_keys(fused)
    mutate(keys)
    path = _write(tmp_path / "ckpt", _config("mixtral"), keys)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_a_missing_shared_expert_or_dense_layer_is_named(tmp_path):
    for name in ("model.layers.1.mlp.shared_expert.down_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        keys = _qwen_keys()
        keys.pop(name)
        if name.endswith("mlp.down_proj.weight"):  # layer 0 must still be found by its fused experts
            keys["model.layers.0.mlp.experts.down_proj"] = np.zeros((E, H, W), np.float32)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            open_checkpoint(_write(tmp_path / name, _config("qwen2_moe"), keys))


def test_config_declared_expert_quantization_names_the_storage(tmp_path):
    config = _config("gpt_oss", quantization_config={"quant_method": "mxfp4"})
    path = _write(tmp_path / "q", config, {"x": np.zeros(1, np.float32)})
    with pytest.raises(CheckpointError, match=r"quantized expert storage \(mxfp4: .*down_proj_blocks/_scales\)"):
        open_checkpoint(path)
    dense = _write(tmp_path / "d", {"model_type": "llama", "quantization_config": {"quant_method": "fp8"}}, {})
    with pytest.raises(CheckpointError, match=r"quantized checkpoint \(fp8\)"):  # dense: the message of old
        open_checkpoint(dense)


def _fused_file(tmp_path: Path, shape: tuple[int, ...]) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal(shape, dtype=np.float32)
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"a": (np.ones(3, np.float32), "F32"), "w": (weight, "F32")}, {})
    return path, weight


@pytest.mark.parametrize("chunk", [4 * 1024 * 1024, 3 * W * 4, W * 4])
def test_streaming_patch_of_fused_experts_by_rows_and_its_revert(chunk, tmp_path, monkeypatch):
    """Two experts of one [E, H, W] tensor, in blocks that straddle their slabs, then put back byte for byte."""
    import tnedit.checkpoint.streaming as streaming
    from tnedit.edit.bake import SlicePatch

    monkeypatch.setattr(streaming, "CHUNK", chunk)
    src, weight = _fused_file(tmp_path, (E, H, W))
    patch = SlicePatch(1).add([0, 3], [0.0, 2.0], rows=(0, H)).add([1], [0.5], rows=(2 * H, 3 * H))
    copy_with_patches(src, tmp_path / "out.safetensors", {"w": patch}, read_header(src))
    expected = weight.copy()
    expected[0, :, 0], expected[0, :, 3], expected[2, :, 1] = 0.0, weight[0, :, 3] * 2, weight[2, :, 1] * 0.5
    out = read_header(tmp_path / "out.safetensors")
    data = (tmp_path / "out.safetensors").read_bytes()
    got = np.frombuffer(data[out.tensors["w"].begin : out.tensors["w"].end], np.float32).reshape(E, H, W)
    assert got.tobytes() == expected.tobytes()
    first, second = patch.originals()
    assert first.tobytes() == weight[0][:, [0, 3]].tobytes() and second.tobytes() == weight[2][:, [1]].tobytes()
    back = SlicePatch(1).add([0, 3], original=first, rows=(0, H)).add([1], original=second, rows=(2 * H, 3 * H))
    copy_with_patches(tmp_path / "out.safetensors", tmp_path / "back.safetensors", {"w": back}, out)
    assert (tmp_path / "back.safetensors").read_bytes() == src.read_bytes()


def test_streaming_patch_of_transposed_experts_by_flattened_rows(tmp_path, monkeypatch):
    import tnedit.checkpoint.streaming as streaming
    from tnedit.edit.bake import SlicePatch

    monkeypatch.setattr(streaming, "CHUNK", 3 * H * 4)
    src, weight = _fused_file(tmp_path, (E, W, H))
    patch = SlicePatch(0).add([1, 3], [0.0, 0.5], rows=(W, 2 * W)).add([0], [3.0], rows=(2 * W, 3 * W))
    copy_with_patches(src, tmp_path / "out.safetensors", {"w": patch}, read_header(src))
    expected = weight.copy()
    expected[1, 1], expected[1, 3], expected[2, 0] = 0.0, weight[1, 3] * 0.5, weight[2, 0] * 3
    out = read_header(tmp_path / "out.safetensors")
    data = (tmp_path / "out.safetensors").read_bytes()
    got = np.frombuffer(data[out.tensors["w"].begin : out.tensors["w"].end], np.float32).reshape(E, W, H)
    assert got.tobytes() == expected.tobytes()
    assert [o.shape for o in patch.originals()] == [(2, H), (1, H)]


def test_one_dimensional_tensors_are_still_refused(tmp_path):
    from tnedit.edit.bake import SlicePatch

    src, _ = _fused_file(tmp_path, (E, H, W))
    with pytest.raises(CheckpointError, match="'a' has shape \\[3\\]"):
        copy_with_patches(src, tmp_path / "out.safetensors", {"a": SlicePatch(1, [0], [0.0])}, read_header(src))
