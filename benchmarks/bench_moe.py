#!/usr/bin/env python
"""What reading and editing routed experts costs: tnedit's experts implementation against transformers' default.

A random Qwen3-MoE-shaped model (4 layers, hidden 256, 32 experts of width 128, top-4) runs forward passes of
16 × 64 tokens three ways, side by side in this run: transformers' default experts implementation
(``grouped_mm``), tnedit's per-expert loop alone (what every capture and routed-expert hook runs), and that
loop with identify's neuron reading on every layer (``LoadedModel.watch_neurons``). Prints the ratios to the
default and the largest logit difference between the implementations.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.tiny_moe import moe_config  # noqa: E402
from tnedit.architectures import decoder_layers, get_architecture  # noqa: E402
from tnedit.model.experts import use_tnedit_experts, watch_neurons  # noqa: E402
from tnedit.model.hooks import HookSet  # noqa: E402

REPEATS = 5


def seconds_per_pass(model, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
        start = time.perf_counter()
        for _ in range(REPEATS):
            model(input_ids=ids)
    return (time.perf_counter() - start) / REPEATS, logits


def main() -> None:
    torch.manual_seed(0)
    config = moe_config("qwen3_moe", hidden_size=256, moe_intermediate_size=128, num_experts=32,
                        num_experts_per_tok=4, num_hidden_layers=4, intermediate_size=512, head_dim=32,
                        num_attention_heads=8, num_key_value_heads=4, mlp_only_layers=[])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(4, 300, (16, 64))
    default, reference = seconds_per_pass(model, ids)
    arch = get_architecture("qwen3_moe")
    with HookSet() as hooks:
        use_tnedit_experts(model, hooks)
        loop, logits = seconds_per_pass(model, ids)
        layers = decoder_layers(model, arch)
        for layer in range(len(layers)):
            watch_neurons(model, layers, arch, config.to_dict(), layer, hooks, lambda columns, routed: None)
        reading, _ = seconds_per_pass(model, ids)
    print(f"forward pass, 16 × 64 tokens, 32 experts top-4 (mean of {REPEATS}):")
    print(f"  transformers default     {default * 1e3:8.1f} ms   1.00")
    print(f"  tnedit experts loop      {loop * 1e3:8.1f} ms   {loop / default:.2f}")
    print(f"  + reading every neuron   {reading * 1e3:8.1f} ms   {reading / default:.2f}")
    print(f"  max |Δ logits| loop vs default: {(logits - reference).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
