"""apply / revert on tiny mixture-of-experts models, every on-disk expert layout.

The baked checkpoint must give the logits of the source model with the same slices edited in memory
by this test (``down_proj[e, :, i]``, ``[e, i, :]`` for gpt-oss, Linear columns for shared experts and
dense layers); every other byte must be the source's, and revert must give back the source's files.
The on-disk slices are named here from docs/MOE.md, independently of tnedit.checkpoint.targets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.checkpoints import sha
from tests.support.tiny import make_tiny
from tests.support.tiny_moe import DENSE_FIRST, EXPERT_WIDTH, MOE_TYPES, SHARED_WIDTH, make_tiny_moe
from tnedit.checkpoint import read_header
from tnedit.edit.bake import apply_to_checkpoint
from tnedit.edit.revert import revert_checkpoint
from tnedit.edit.runtime import RuntimeEdit
from tnedit.edit.spec import make_edit_spec
from tnedit.errors import CheckpointError, NeuronSetError
from tnedit.formats.neurons import Neuron
from tnedit.formats.provenance import REVERT_NAME, read_provenance
from tnedit.reporting import Reporter

LAYOUTS = [(t, False) for t in MOE_TYPES] + [(t, True) for t in MOE_TYPES if t != "gpt_oss"]
LAYOUT_IDS = [f"{t}-{'fused' if fused else 'disk'}" for t, fused in LAYOUTS]
IDS = torch.tensor([[1, 40, 41, 42, 77, 100, 5, 9, 60, 61, 62, 63], [1, 8, 300, 12, 13, 14, 200, 2, 90, 91, 92, 93]])
OPS = [("zero", None, 0.0), ("scale", 0.5, 0.5)]


def quiet() -> Reporter:
    return Reporter()


def moe_neurons(model_type: str) -> list[Neuron]:
    """Neurons in several routed experts of layers 1 and 2, the shared expert and the dense layer 0 where they exist."""
    last = EXPERT_WIDTH - 1
    neurons = [Neuron(1, 3, expert=0), Neuron(1, last, expert=0), Neuron(1, 9, expert=2), Neuron(2, 0, expert=1),
               Neuron(2, 5, expert=3), Neuron(2, last, expert=3)]
    if model_type in SHARED_WIDTH:
        neurons += [Neuron(1, SHARED_WIDTH[model_type] - 1, expert="shared"), Neuron(2, 2, expert="shared")]
    if model_type in DENSE_FIRST:
        neurons += [Neuron(0, 4), Neuron(0, 47)]
    return neurons


def disk_slice(model_type: str, fused: bool, n: Neuron) -> tuple[str, tuple[Any, ...]]:
    """(key, numpy index) of a neuron's slice on disk, from docs/MOE.md §2.1 and §4."""
    p = f"model.layers.{n.layer}"
    if n.expert is None:
        return f"{p}.mlp.down_proj.weight", (slice(None), n.index)
    if n.expert == "shared":
        shared = "shared_expert" if model_type == "qwen2_moe" else "shared_experts"
        return f"{p}.mlp.{shared}.down_proj.weight", (slice(None), n.index)
    if model_type == "gpt_oss":
        return f"{p}.mlp.experts.down_proj", (n.expert, n.index, slice(None))
    if fused:
        return f"{p}.mlp.experts.down_proj", (n.expert, slice(None), n.index)
    if model_type == "mixtral":
        return f"{p}.block_sparse_moe.experts.{n.expert}.w2.weight", (slice(None), n.index)
    return f"{p}.mlp.experts.{n.expert}.down_proj.weight", (slice(None), n.index)


def edit_in_memory(model: Any, model_type: str, neurons: list[Neuron], factor: float) -> None:
    with torch.no_grad():
        for n in neurons:
            mlp = model.model.layers[n.layer].mlp
            if n.expert is None:
                mlp.down_proj.weight[:, n.index] *= factor
            elif n.expert == "shared":
                shared = mlp.shared_expert if model_type == "qwen2_moe" else mlp.shared_experts
                shared.down_proj.weight[:, n.index] *= factor
            elif model_type == "gpt_oss":
                mlp.experts.down_proj[n.expert, n.index, :] *= factor
            else:
                mlp.experts.down_proj[n.expert, :, n.index] *= factor


def load(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def raw_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name → (dtype, shape, raw bytes) over every weight file of a directory."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        if f.name == REVERT_NAME:
            continue
        data = f.read_bytes()
        for name, info in read_header(f).tensors.items():
            out[name] = (info.dtype, info.shape, data[info.begin : info.end])
    return out


def weight_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("*.safetensors") if p.name != REVERT_NAME)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One tiny model per layout, built once (an edit never writes its source)."""
    root = tmp_path_factory.mktemp("moe-sources")
    return {(t, fused): make_tiny_moe(t, root, fused=fused) for t, fused in LAYOUTS}


def _check_bytes(src: Path, out: Path, model_type: str, fused: bool, neurons: list[Neuron], factor: float) -> set[str]:
    """Every untargeted tensor byte-identical; in targeted ones, exactly the neurons' slices scaled. Returns the
    targeted names."""
    before, after = raw_tensors(src), raw_tensors(out)
    assert before.keys() == after.keys()
    changed: dict[str, np.ndarray] = {}
    for n in neurons:
        key, index = disk_slice(model_type, fused, n)
        dtype, shape, _ = before[key]
        assert dtype == "F32"
        changed.setdefault(key, np.zeros(shape, dtype=bool))[index] = True
    for name, (dtype, shape, data) in before.items():
        if name not in changed:
            assert after[name] == (dtype, shape, data), f"{name} changed"
            continue
        old = np.frombuffer(data, dtype=np.float32).reshape(shape)
        new = np.frombuffer(after[name][2], dtype=np.float32).reshape(shape)
        mask = changed[name]
        assert old[~mask].tobytes() == new[~mask].tobytes(), f"{name}: bytes outside the edited slices changed"
        expected = np.zeros_like(old[mask]) if factor == 0 else old[mask] * np.float32(factor)
        assert new[mask].tobytes() == expected.tobytes(), f"{name}: edited slices are not the scaled originals"
    return set(changed)


@pytest.mark.parametrize("op,factor,value", OPS, ids=[o[0] for o in OPS])
@pytest.mark.parametrize("model_type,fused", LAYOUTS, ids=LAYOUT_IDS)
def test_baked_moe_edit_equals_in_memory_edit_and_reverts(model_type, fused, op, factor, value, sources, tmp_path):
    src = sources[(model_type, fused)]
    neurons = moe_neurons(model_type)
    out = tmp_path / "edited"
    spec = make_edit_spec(neurons, op, factor)
    apply_to_checkpoint(str(src), spec, out, reporter=quiet())

    original = load(src)
    unedited = logits(original)
    with RuntimeEdit(original, spec, "all"):  # tnedit's own hook, on the unedited weights
        hooked = logits(original)
    edit_in_memory(original, model_type, neurons, value)
    baked = logits(load(out))
    torch.testing.assert_close(baked, logits(original), atol=1e-5, rtol=0)
    torch.testing.assert_close(baked, hooked, atol=1e-5, rtol=0)
    assert not torch.allclose(baked, unedited, atol=1e-4), "the edit changed nothing"

    targeted = _check_bytes(src, out, model_type, fused, neurons, value)
    edited_tensors = {t for w in read_provenance(out).weights.values() for t in (w.edited_tensors or [])}
    assert edited_tensors == targeted
    revert_keys = read_header(out / REVERT_NAME).tensors
    assert any("::rows=" in k for k in revert_keys) == (fused or model_type == "gpt_oss")

    back = revert_checkpoint(out, tmp_path / "back", reporter=quiet())
    assert weight_files(back) == weight_files(src)
    for f in weight_files(src):
        assert sha(back / f) == sha(src / f), f


def test_provenance_lists_experts_and_reads_them_back(sources, tmp_path):
    neurons = moe_neurons("qwen2_moe")
    out = tmp_path / "edited"
    apply_to_checkpoint(str(sources[("qwen2_moe", True)]), make_edit_spec(neurons, "scale", 0.5), out,
                        reporter=quiet())
    raw = json.loads((out / "tnedit.json").read_text())
    entries = {tuple(e) for e in raw["edit"]["neurons"]}
    assert (1, 3, 0.5, 0) in entries and (1, 23, 0.5, "shared") in entries and (0, 4, 0.5) in entries
    assert raw["edit"]["per_layer"] == {"0": 2, "1": 4, "2": 4}
    back = read_provenance(out).edit.edited_neurons("x")
    assert sorted((n.layer, n.index, str(n.expert), n.factor) for n in back) == sorted(
        (n.layer, n.index, str(n.expert), 0.5) for n in neurons
    )


def test_small_row_blocks_give_the_same_bytes(sources, tmp_path, monkeypatch):
    """Blocks of a few rows, straddling experts' slabs, write what one block per tensor writes."""
    import tnedit.checkpoint.streaming as streaming

    for model_type in ("qwen3_moe", "gpt_oss"):
        src = sources[(model_type, True if model_type != "gpt_oss" else False)]
        spec = make_edit_spec(moe_neurons(model_type), "scale", 0.3)
        apply_to_checkpoint(str(src), spec, tmp_path / f"{model_type}-whole", reporter=quiet())
        with monkeypatch.context() as m:
            m.setattr(streaming, "CHUNK", 200)  # 3 rows of 16 fp32, or 1 of 32
            apply_to_checkpoint(str(src), spec, tmp_path / f"{model_type}-blocks", reporter=quiet())
            back = revert_checkpoint(tmp_path / f"{model_type}-blocks", tmp_path / f"{model_type}-back",
                                     reporter=quiet())
        for f in ("model.safetensors", REVERT_NAME):
            assert sha(tmp_path / f"{model_type}-whole" / f) == sha(tmp_path / f"{model_type}-blocks" / f)
        assert sha(back / "model.safetensors") == sha(src / "model.safetensors")


# --- bad input ---------------------------------------------------------------------------------------


def _refused(error: type[Exception], src: Path, neurons: list[Neuron], out: Path, *needles: str) -> str:
    with pytest.raises(error) as info:
        apply_to_checkpoint(str(src), make_edit_spec(neurons, "zero"), out, reporter=quiet())
    message = str(info.value)
    assert "\n" not in message and not out.exists()
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_expert_neurons_on_a_dense_model_are_refused(tmp_path):
    src = make_tiny("llama", tmp_path)
    _refused(NeuronSetError, src, [Neuron(1, 3, expert=2)], tmp_path / "out", "1:e2:3", "expert")


def test_dense_neuron_on_an_moe_layer_and_expert_on_a_dense_layer_are_refused(sources, tmp_path):
    _refused(NeuronSetError, sources[("mixtral", False)], [Neuron(1, 3)], tmp_path / "out",
             "layer 1 is a mixture-of-experts layer")
    _refused(NeuronSetError, sources[("qwen2_moe", True)], [Neuron(0, 3, expert=1)], tmp_path / "out",
             "layer 0 is a dense MLP layer")
    _refused(NeuronSetError, sources[("olmoe", False)], [Neuron(1, EXPERT_WIDTH, expert=1)], tmp_path / "out",
             "out of range")
    _refused(NeuronSetError, sources[("olmoe", False)], [Neuron(1, 2, expert=4)], tmp_path / "out", "expert 4")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def _set_quantization(path: Path, qc: dict[str, Any]) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = qc
    (path / "config.json").write_text(json.dumps(cfg))


def _rewrite(path: Path, change: Any) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("method", ["mxfp4", "fp8"])
def test_quantized_expert_storage_in_config_is_refused(method, sources, tmp_path):
    model_type = "gpt_oss" if method == "mxfp4" else "deepseek_v3"
    src = _copy(sources[(model_type, False)], tmp_path / "src")
    _set_quantization(src, {"quant_method": method})
    _refused(CheckpointError, src, moe_neurons(model_type)[:1], tmp_path / "out",
             f"quantized expert storage ({method}", "not supported yet", "bf16")


def test_mxfp4_blocks_without_a_config_entry_are_refused(sources, tmp_path):
    src = _copy(sources[("gpt_oss", False)], tmp_path / "src")
    key = "model.layers.0.mlp.experts.down_proj"

    def to_blocks(tensors: dict[str, np.ndarray]) -> None:
        tensors.pop(key)
        tensors[f"{key}_blocks"] = np.zeros((4, 32, 1, 8), dtype=np.uint8)
        tensors[f"{key}_scales"] = np.zeros((4, 32, 1), dtype=np.uint8)

    _rewrite(src, to_blocks)
    _refused(CheckpointError, src, moe_neurons("gpt_oss")[:1], tmp_path / "out",
             "quantized expert storage (mxfp4", f"{key}_blocks")


def test_fp8_scales_without_a_config_entry_are_refused(sources, tmp_path):
    src = _copy(sources[("deepseek_v3", False)], tmp_path / "src")
    key = "model.layers.1.mlp.experts.0.down_proj.weight_scale_inv"
    _rewrite(src, lambda t: t.update({key: np.ones((1, 1), dtype=np.float32)}))
    _refused(CheckpointError, src, moe_neurons("deepseek_v3")[:1], tmp_path / "out",
             "quantized expert storage (fp8", key)


def test_other_quantization_of_an_moe_model_keeps_the_general_message(sources, tmp_path):
    src = _copy(sources[("mixtral", False)], tmp_path / "src")
    _set_quantization(src, {"quant_method": "gptq"})
    _refused(CheckpointError, src, moe_neurons("mixtral")[:1], tmp_path / "out", "quantized checkpoint (gptq)")


FUSED = "model.layers.1.mlp.experts.down_proj"
DENSE0 = "model.layers.0.mlp.down_proj.weight"


def _rename(old: str, new: str):
    def mutate(tensors: dict[str, np.ndarray]) -> None:
        for part in ("original", "indices"):
            tensors[f"{new}::{part}"] = tensors.pop(f"{old}::{part}")

    return mutate


def _shift_indices(tensors: dict[str, np.ndarray]) -> None:
    tensors[f"{FUSED}::rows=0:32::indices"] = tensors[f"{FUSED}::rows=0:32::indices"] + EXPERT_WIDTH


REVERT_CASES = [
    ("rows not an expert's", _rename(f"{FUSED}::rows=0:32", f"{FUSED}::rows=1:33"), ["rows 1:33", "not one expert"]),
    ("fused without rows", _rename(f"{FUSED}::rows=0:32", FUSED), ["must name the expert rows"]),
    ("rows of a 2-D weight", _rename(DENSE0, f"{DENSE0}::rows=0:32"), ["rows 0:32", "not one expert"]),
    ("rows malformed", _rename(f"{FUSED}::rows=0:32", f"{FUSED}::rows=a:b"), ["::rows=R0:R1"]),
    ("indices past the expert", _shift_indices, ["::rows=0:32::indices", f"0..{EXPERT_WIDTH - 1}"]),
]


@pytest.mark.parametrize("case,mutate,needles", REVERT_CASES, ids=[c[0] for c in REVERT_CASES])
def test_revert_refuses_a_malformed_expert_entry(case, mutate, needles, sources, tmp_path):
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "edited"
    apply_to_checkpoint(str(sources[("qwen3_moe", True)]), make_edit_spec(moe_neurons("qwen3_moe"), "zero"), out,
                        reporter=quiet())
    revert = out / REVERT_NAME
    tensors, metadata = load_file(str(revert)), read_header(revert).metadata
    mutate(tensors)
    revert.unlink()
    save_file(tensors, str(revert), metadata=metadata)
    prov = json.loads((out / "tnedit.json").read_text())
    prov["revert_sha256"] = sha(revert)
    (out / "tnedit.json").write_text(json.dumps(prov))
    with pytest.raises(CheckpointError) as info:
        revert_checkpoint(out, tmp_path / "back", reporter=quiet())
    message = str(info.value)
    assert "\n" not in message and REVERT_NAME in message and not (tmp_path / "back").exists()
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize("model_type,fused", [("mixtral", False), ("qwen2_moe", True)])
def test_sharded_moe_checkpoint_applies_and_reverts(model_type, fused, sources, tmp_path):
    src = tmp_path / "sharded"
    load(sources[(model_type, fused)]).save_pretrained(src, max_shard_size="40KB", save_original_format=not fused)
    assert len(weight_files(src)) > 2
    out = tmp_path / "edited"
    apply_to_checkpoint(str(src), make_edit_spec(moe_neurons(model_type), "scale", 0.5), out, reporter=quiet())
    _check_bytes(src, out, model_type, fused, moe_neurons(model_type), 0.5)
    back = revert_checkpoint(out, tmp_path / "back", reporter=quiet())
    assert {f: sha(back / f) for f in weight_files(src)} == {f: sha(src / f) for f in weight_files(src)}
