"""Tiny random mixture-of-experts models of the six registry types, saved like the Hub saves them.

``make_tiny_moe("qwen2_moe", tmp_path)`` writes a model directory with per-expert keys on disk (what
``save_pretrained`` writes by default); ``fused=True`` writes the fused 3-D expert tensors instead
(``save_original_format=False``). gpt_oss is fused either way. Configs follow docs/MOE.md: 3 layers,
hidden 32, 4 experts of width 16, top-2; qwen2_moe, qwen3_moe and deepseek_v3 have a dense first layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.support.tiny import HIDDEN, VOCAB, make_tokenizer

MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss")
EXPERTS = 4
EXPERT_WIDTH = 16
LAYERS = 3

_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_CONFIGS: dict[str, dict[str, Any]] = {
    "mixtral": dict(intermediate_size=EXPERT_WIDTH, num_local_experts=EXPERTS, num_experts_per_tok=2),
    "qwen2_moe": dict(intermediate_size=48, moe_intermediate_size=EXPERT_WIDTH, shared_expert_intermediate_size=24,
                      num_experts=EXPERTS, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[0],
                      norm_topk_prob=False),
    "qwen3_moe": dict(intermediate_size=48, moe_intermediate_size=EXPERT_WIDTH, num_experts=EXPERTS,
                      num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=True,
                      head_dim=8),
    "olmoe": dict(intermediate_size=EXPERT_WIDTH, num_experts=EXPERTS, num_experts_per_tok=2, norm_topk_prob=False),
    "deepseek_v3": dict(intermediate_size=48, moe_intermediate_size=EXPERT_WIDTH, n_routed_experts=EXPERTS,
                        n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
                        routed_scaling_factor=2.5, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=4,
                        qk_nope_head_dim=4, v_head_dim=8, num_key_value_heads=4, norm_topk_prob=True,
                        rope_scaling=None),
    "gpt_oss": dict(intermediate_size=EXPERT_WIDTH, num_local_experts=EXPERTS, num_experts_per_tok=2, head_dim=8,
                    sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}
# A hybrid Mamba/attention MoE type outside the registry (its MLP is `feed_forward`, not `mlp`).
JAMBA = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=16, num_experts=4, num_experts_per_tok=2,
             expert_layer_period=2, expert_layer_offset=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
             mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=VOCAB, use_mamba_kernels=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# The types whose layer 0 is a dense MLP, and the shared expert's width of those that have one.
DENSE_FIRST = ("qwen2_moe", "qwen3_moe", "deepseek_v3")
SHARED_WIDTH = {"qwen2_moe": 24, "deepseek_v3": EXPERT_WIDTH}


def moe_config(model_type: str, **overrides: Any) -> Any:
    from transformers import AutoConfig

    if model_type == "jamba":
        return AutoConfig.for_model("jamba", **{**JAMBA, **overrides})
    return AutoConfig.for_model(model_type, **{**_COMMON, **_CONFIGS[model_type], **overrides})


def make_tiny_moe(model_type: str, tmp_path: str | Path, *, fused: bool = False, dtype: str = "float32",
                  seed: int = 0, subdir: str | None = None, **overrides: Any) -> Path:
    """Build, save and return a tiny random MoE model directory (with the tiny tokenizer); ``"jamba"`` builds
    the hybrid type outside the registry."""
    from transformers import AutoModelForCausalLM

    cfg = moe_config(model_type, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # random routers spread tokens over every expert; biases make gpt_oss's visible
        for name, param in model.named_parameters():
            if name.endswith(("router.bias", "down_proj_bias")):
                param.normal_(0.0, 0.05)
    model = model.to(getattr(torch, dtype)).eval()
    out = Path(tmp_path) / (subdir or f"tiny-{model_type}{'-fused' if fused else ''}-{dtype}")
    model.save_pretrained(out, save_original_format=not fused)
    make_tokenizer(True).save_pretrained(out)
    return out
