"""The registry against real module trees and checkpoint keys (the torch-free --help is tests/cli/test_help.py)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.tiny import TINY_TYPES, load_tiny, make_tiny
from tnedit.architectures import (
    ARCHITECTURES,
    MOE_TYPES,
    UnknownArchitecture,
    architecture_for_config,
    decoder_layers,
    get_architecture,
    hidden_size,
    intermediate_size,
    neuron_axis,
    num_layers,
    resolve_module,
    supported_model_types,
)
from tnedit.checkpoint import open_checkpoint

REQUIRED = {
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
    "gpt2",
    "gpt_neox",
    "bloom",
    "opt",
    "cohere",
}


def test_required_types_are_registered():
    assert REQUIRED <= set(supported_model_types())
    assert {t for name, (t, _) in TINY_TYPES.items()} >= REQUIRED


@pytest.mark.parametrize("name", list(TINY_TYPES))
def test_registry_matches_module_tree_and_checkpoint(name, tmp_path):
    path = make_tiny(name, tmp_path)
    config = json.loads((path / "config.json").read_text())
    arch = architecture_for_config(config)
    model, _ = load_tiny(path)
    layers = decoder_layers(model, arch)
    assert len(layers) == num_layers(config, arch)
    hidden, inter = hidden_size(config, arch), intermediate_size(config, arch)
    for layer in layers:
        proj = resolve_module(layer, arch.out_proj)
        expected = (hidden, inter) if arch.layout == "linear" else (inter, hidden)
        assert tuple(proj.weight.shape) == expected
        assert proj.weight.shape[neuron_axis(arch)] == inter
        assert isinstance(resolve_module(layer, arch.act), torch.nn.Module)
        kind, module = arch.residual_rule(config)
        assert isinstance(resolve_module(layer, module), torch.nn.Module)
        if arch.out_norm:
            norm = resolve_module(layer, arch.out_norm)
            assert norm.weight.shape == (hidden,)
    # The MLP output projection receives exactly the activations the registry promises.
    seen = {}

    def record(_module, args):
        seen["a"] = args[0].shape

    handle = resolve_module(layers[0], arch.out_proj).register_forward_pre_hook(record)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    handle.remove()
    assert seen["a"][-1] == inter
    ckpt = open_checkpoint(path)
    for layer in range(ckpt.num_layers):
        key = ckpt.out_proj_name(layer)
        assert key in ckpt.tensor_file and key.endswith(f".{layer}.{arch.out_proj_weight}")
        # Same tensor on disk and in the module tree (multimodal wrappers rename keys on save).
        on_disk = ckpt.tensor(key)
        assert on_disk.shape == tuple(resolve_module(layers[layer], arch.out_proj).weight.shape)
    parallel = TINY_TYPES[name][1].get("use_parallel_residual", arch.parallel_flag is None and arch.parallel_attention)
    assert arch.is_parallel(config) == bool(parallel)


def test_unknown_and_moe_types_fail_loudly():
    with pytest.raises(UnknownArchitecture) as info:
        get_architecture("mamba")
    for name in ("llama", "gpt2", "gemma3_text"):
        assert name in str(info.value)
    for moe in sorted(MOE_TYPES):  # mixture-of-experts variants outside the registry: never a silent skip
        with pytest.raises(UnknownArchitecture, match=f"'{moe}' is a mixture-of-experts variant") as info:
            get_architecture(moe)
        assert "\n" not in str(info.value) and "mixtral" in str(info.value)
    assert not MOE_TYPES & set(supported_model_types())
    assert len({a.name for a in ARCHITECTURES}) == len(ARCHITECTURES)
