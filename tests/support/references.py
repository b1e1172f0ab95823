"""Reference computations written independently of tnedit's edit code: the oracles more than one test file uses.

``hooked_logits`` is the edit as an activation hook (a_i ← factor · a_i at every position, on the input of
each layer's output projection); a baked checkpoint must give the same logits.
"""

from __future__ import annotations

import torch

from tnedit.architectures import decoder_layers, get_architecture, resolve_module


def scaling_prehook(indices: list[int], factor: float):
    """An activation hook written independently of tnedit: a_i ← factor · a_i at every position."""

    def hook(_module, args):
        x = args[0].clone()
        x[..., indices] = (x[..., indices].float() * factor).to(x.dtype)
        return (x, *args[1:])

    return hook


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def hooked_logits(model, neurons: list[tuple[int, int]], factor: float, ids: torch.Tensor) -> torch.Tensor:
    arch = get_architecture(model.config.model_type)
    layers = decoder_layers(model, arch)
    by_layer: dict[int, list[int]] = {}
    for layer, index in neurons:
        by_layer.setdefault(layer, []).append(index)
    handles = [
        resolve_module(layers[layer], arch.out_proj).register_forward_pre_hook(scaling_prehook(idx, factor))
        for layer, idx in by_layer.items()
    ]
    try:
        return logits_of(model, ids)
    finally:
        for h in handles:
            h.remove()
