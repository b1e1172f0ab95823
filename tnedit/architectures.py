"""Declarative per-architecture facts: where the MLP output projection lives and how to read it.

Every other module asks this table instead of branching on ``model_type``. The module is a leaf: it
imports only tnedit.errors and no heavy library, so the CLI can consult it without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tnedit.errors import UnsupportedArchitectureError
from tnedit.experts import Experts, NeuronSpace, dense_space, moe_space

Layout = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class Architecture:
    """How one family of decoder models stores and computes its MLP neurons.

    A neuron is the i-th input of the MLP output projection. In a ``linear`` layout the weight is
    ``[hidden, intermediate]`` and the neuron owns column i; in GPT-2's ``conv1d`` layout the weight
    is ``[intermediate, hidden]`` and the neuron owns row i.
    """

    name: str
    model_types: tuple[str, ...]
    # Dotted paths of the decoder ModuleList, tried in order; they double as checkpoint key prefixes.
    layer_paths: tuple[str, ...]
    out_proj: str  # relative to a decoder layer
    layout: Layout
    act: str  # module whose output is the activation LAPE thresholds (the gate act for gated MLPs)
    gated: bool
    # R, the residual just before the MLP adds its output, is the input of this module ...
    residual_input_of: str | None
    # ... or, for parallel-attention blocks, the layer input plus this attention module's output.
    parallel_attention: str | None = None
    # A config key that switches the parallel form on (GPT-NeoX); None = always parallel when set.
    parallel_flag: str | None = None
    # A norm applied to the MLP output before the residual add (Gemma 2/3 sandwich norm).
    out_norm: str | None = None
    out_norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (offset + weight)
    # The norm after the last decoder layer, an attribute of the module that holds the decoder ModuleList;
    # HF's last output_hidden_states entry is its output (identify --centroids hidden-states applies it).
    final_norm: str = "norm"
    num_layers_keys: tuple[str, ...] = ("num_hidden_layers",)
    hidden_keys: tuple[str, ...] = ("hidden_size",)
    intermediate_keys: tuple[str, ...] = ("intermediate_size",)
    intermediate_multiple: int | None = None  # intermediate = multiple × hidden when no key is set
    text_config_key: str | None = None  # multimodal wrappers keep the decoder's config here
    fused_gate_up: bool = False
    # Mixture-of-experts families: where the experts live; ``out_proj`` is then the dense layers' projection.
    experts: Experts | None = None
    notes: str = ""

    @property
    def out_proj_weight(self) -> str:
        return f"{self.out_proj}.weight"

    def is_parallel(self, config: Mapping[str, Any]) -> bool:
        if self.parallel_attention is None:
            return False
        if self.parallel_flag is None:
            return True
        return bool(text_config(config, self).get(self.parallel_flag, False))

    def residual_rule(self, config: Mapping[str, Any]) -> tuple[str, str]:
        """("input_of", module) or ("parallel", attention module) for this configuration."""
        if self.is_parallel(config):
            return ("parallel", str(self.parallel_attention))
        if self.residual_input_of is None:
            raise UnsupportedArchitectureError(f"{self.name}: no residual rule for this configuration")
        return ("input_of", self.residual_input_of)


_LLAMA_PATHS = ("model.layers", "layers")


def _gated(name: str, types: tuple[str, ...], **kw: Any) -> Architecture:
    base: dict[str, Any] = dict(
        layer_paths=_LLAMA_PATHS,
        out_proj="mlp.down_proj",
        layout="linear",
        act="mlp.act_fn",
        gated=True,
        residual_input_of="post_attention_layernorm",
    )
    base.update(kw)
    return Architecture(name=name, model_types=types, **base)


_GEMMA_SANDWICH = dict(
    residual_input_of="pre_feedforward_layernorm",
    out_norm="post_feedforward_layernorm",
    out_norm_offset=1.0,
    notes="sandwich norms: R is the input of pre_feedforward_layernorm; the MLP output passes "
    "through post_feedforward_layernorm, a (1 + w) RMSNorm, before it is added",
)

ARCHITECTURES: tuple[Architecture, ...] = (
    _gated("llama", ("llama",)),
    _gated("mistral", ("mistral",)),
    _gated("qwen2", ("qwen2",)),
    _gated("qwen3", ("qwen3",)),
    _gated("gemma", ("gemma",)),
    _gated("gemma2", ("gemma2",), **_GEMMA_SANDWICH),
    _gated("gemma3_text", ("gemma3_text",), **_GEMMA_SANDWICH),
    _gated(
        "gemma3",
        ("gemma3",),
        layer_paths=(
            "model.language_model.layers",
            "language_model.model.layers",
            "language_model.layers",
            "model.layers",
        ),
        text_config_key="text_config",
        **_GEMMA_SANDWICH,
    ),
    _gated(
        "phi3",
        ("phi3",),
        act="mlp.activation_fn",
        fused_gate_up=True,
        notes="gate and up projections are fused in gate_up_proj; down_proj is separate",
    ),
    _gated(
        "cohere",
        ("cohere",),
        residual_input_of=None,
        parallel_attention="self_attn",
        hidden_keys=("hidden_size",),
        notes="parallel block: attention and MLP read the same normed input",
    ),
    Architecture(
        name="gpt2",
        model_types=("gpt2",),
        layer_paths=("transformer.h", "h"),
        out_proj="mlp.c_proj",
        layout="conv1d",
        act="mlp.act",
        gated=False,
        residual_input_of="ln_2",
        final_norm="ln_f",
        num_layers_keys=("n_layer",),
        hidden_keys=("n_embd",),
        intermediate_keys=("n_inner",),
        intermediate_multiple=4,
        notes="Conv1D stores [intermediate, hidden]: neuron i is row i",
    ),
    Architecture(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layer_paths=("gpt_neox.layers", "layers"),
        out_proj="mlp.dense_4h_to_h",
        layout="linear",
        act="mlp.act",
        gated=False,
        residual_input_of="post_attention_layernorm",
        parallel_attention="attention",
        parallel_flag="use_parallel_residual",
        final_norm="final_layer_norm",
    ),
    Architecture(
        name="bloom",
        model_types=("bloom",),
        layer_paths=("transformer.h", "h"),
        out_proj="mlp.dense_4h_to_h",
        layout="linear",
        act="mlp.gelu_impl",
        gated=False,
        residual_input_of="post_attention_layernorm",
        final_norm="ln_f",
        num_layers_keys=("n_layer", "num_hidden_layers"),
        hidden_keys=("hidden_size", "n_embed"),
        intermediate_keys=(),
        intermediate_multiple=4,
        notes="the attention module adds the residual itself; R is the input of post_attention_layernorm",
    ),
    Architecture(
        name="opt",
        model_types=("opt",),
        layer_paths=("model.decoder.layers", "decoder.layers"),
        out_proj="fc2",
        layout="linear",
        act="activation_fn",
        gated=False,
        residual_input_of="final_layer_norm",
        final_norm="final_layer_norm",
        intermediate_keys=("ffn_dim",),
        notes="fc1/fc2 live on the decoder layer itself; assumes do_layer_norm_before (all but 350m)",
    ),
)

def _moe(name: str, experts: Experts, **kw: Any) -> Architecture:
    return _gated(name, (name,), out_proj=experts.dense_out_proj, experts=experts, **kw)


def _routed(per_expert: str | None = "mlp.experts.{expert}.down_proj.weight", **kw: Any) -> Experts:
    base: dict[str, Any] = dict(block="mlp", module="mlp.experts", fused_down="mlp.experts.down_proj",
                                per_expert_down=per_expert, count_keys=("num_experts", "num_local_experts"),
                                width_keys=("moe_intermediate_size",))
    base.update(kw)
    return Experts(**base)


_QWEN_DENSE = dict(dense_list_key="mlp_only_layers", sparse_step_key="decoder_sparse_step")

# Mixture-of-experts entries: expert facts as transformers 5 stores and runs them (docs/MOE.md).
MOE_ARCHITECTURES: tuple[Architecture, ...] = (
    _moe("mixtral", _routed("block_sparse_moe.experts.{expert}.w2.weight", count_keys=("num_local_experts",),
                            width_keys=("intermediate_size",)),
         notes="checkpoints keep experts under block_sparse_moe (w1/w3/w2); transformers loads them as mlp.experts"),
    _moe("qwen2_moe", _routed(shared_down="mlp.shared_expert.down_proj", shared_gate="mlp.shared_expert_gate",
                              shared_width_keys=("shared_expert_intermediate_size",), **_QWEN_DENSE),
         notes="a sigmoid-gated shared expert; layers in mlp_only_layers (or off decoder_sparse_step) are dense"),
    _moe("qwen3_moe", _routed(**_QWEN_DENSE), notes="layers in mlp_only_layers (or off decoder_sparse_step) are dense"),
    _moe("olmoe", _routed(count_keys=("num_experts",), width_keys=("intermediate_size",))),
    _moe("deepseek_v3", _routed(count_keys=("n_routed_experts",), shared_down="mlp.shared_experts.down_proj",
                                shared_width_multiplier_key="n_shared_experts",
                                first_dense_key="first_k_dense_replace"),
         notes="the first first_k_dense_replace layers are dense; shared experts are added with weight 1"),
    _moe("gpt_oss", _routed(None, count_keys=("num_local_experts",), width_keys=("intermediate_size",),
                            transposed=True),
         notes="experts fused on disk as [experts, intermediate, hidden] with a bias per expert (not a neuron)"),
)

# Mixture-of-experts variants outside the registry: refused by name, so their experts are never skipped silently.
MOE_TYPES: frozenset[str] = frozenset(
    {"deepseek_v2", "dbrx", "jamba", "phimoe", "granitemoe", "granitemoehybrid", "llama4", "llama4_text",
     "minimax", "qwen3_next", "jetmoe", "ernie4_5_moe", "glm4_moe", "hunyuan_v1_moe", "dots1", "bailing_moe",
     "qwen3_vl_moe", "flex_olmo", "lfm2_moe", "longcat_flash", "nllb_moe", "switch_transformers"}
)

_BY_TYPE: dict[str, Architecture] = {t: a for a in ARCHITECTURES + MOE_ARCHITECTURES for t in a.model_types}


def register_architecture(arch: Architecture) -> None:
    """Declare a further family (dense, or mixture-of-experts with ``experts=Experts(...)``) for this process."""
    for model_type in arch.model_types:
        _BY_TYPE[model_type] = arch


class UnknownArchitecture(UnsupportedArchitectureError):
    """A model_type outside the table, or a config without a fact the entry needs (still a ValueError)."""


def supported_model_types() -> list[str]:
    return sorted(_BY_TYPE)


def get_architecture(model_type: str) -> Architecture:
    if model_type in _BY_TYPE:
        return _BY_TYPE[model_type]
    if model_type in MOE_TYPES:
        moe = ", ".join(a.name for a in MOE_ARCHITECTURES)
        raise UnknownArchitecture(
            f"model_type '{model_type}' is a mixture-of-experts variant tnedit does not know (its experts would be "
            f"skipped); supported mixture-of-experts types: {moe} (declare others with register_architecture)"
        )
    raise UnknownArchitecture(
        f"model_type '{model_type}' is not supported; supported types: " + ", ".join(supported_model_types())
    )


def architecture_for_config(config: Mapping[str, Any]) -> Architecture:
    model_type = config.get("model_type")
    if not model_type:
        raise UnknownArchitecture("config.json has no 'model_type' key")
    return get_architecture(str(model_type))


def text_config(config: Mapping[str, Any], arch: Architecture) -> Mapping[str, Any]:
    """The decoder's own config: the nested text config of a multimodal wrapper, else the config."""
    if arch.text_config_key and isinstance(config.get(arch.text_config_key), Mapping):
        return config[arch.text_config_key]
    return config


# Where multimodal wrappers keep their decoder's config: every text_config_key of the registry.
NESTED_CONFIG_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(a.text_config_key for a in ARCHITECTURES if a.text_config_key)
)

# The attribute that holds a norm module's epsilon, by library convention, tried in order.
NORM_EPS_ATTRIBUTES: tuple[str, ...] = ("eps", "variance_epsilon")


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, else the same key of a wrapper's nested decoder config; for configs not yet matched."""
    if config.get(key):
        return config[key]
    for nested in NESTED_CONFIG_KEYS:
        inner = config.get(nested)
        if isinstance(inner, Mapping) and inner.get(key):
            return inner[key]
    return None


def norm_epsilon(norm: Any, default: float = 1e-6) -> float:
    for name in NORM_EPS_ATTRIBUTES:
        if hasattr(norm, name):
            return float(getattr(norm, name))
    return default


def _first_key(cfg: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def num_layers(config: Mapping[str, Any], arch: Architecture) -> int:
    value = _first_key(text_config(config, arch), arch.num_layers_keys)
    if value is None:
        raise UnknownArchitecture(f"config has none of {list(arch.num_layers_keys)} for the layer count")
    return value


def hidden_size(config: Mapping[str, Any], arch: Architecture) -> int:
    value = _first_key(text_config(config, arch), arch.hidden_keys)
    if value is None:
        raise UnknownArchitecture(f"config has none of {list(arch.hidden_keys)} for the hidden size")
    return value


def intermediate_size(config: Mapping[str, Any], arch: Architecture) -> int:
    """The width of a layer's neurons: the MLP's intermediate size, or for a mixture-of-experts model the
    widest layer's columns (its routed experts side by side, then the shared expert; see tnedit.experts)."""
    if arch.experts is not None:
        return neuron_space(config, arch).width
    return dense_intermediate_size(config, arch)


def dense_intermediate_size(config: Mapping[str, Any], arch: Architecture) -> int:
    cfg = text_config(config, arch)
    value = _first_key(cfg, arch.intermediate_keys)
    if value is not None:
        return value
    if arch.intermediate_multiple is not None:
        return arch.intermediate_multiple * hidden_size(config, arch)
    raise UnknownArchitecture(f"config has none of {list(arch.intermediate_keys)} for the intermediate size")


def neuron_space(config: Mapping[str, Any], arch: Architecture) -> NeuronSpace:
    """Every layer's neurons as blocks of columns: one block per layer for a dense model."""
    layers = num_layers(config, arch)
    if arch.experts is None:
        return dense_space(layers, dense_intermediate_size(config, arch))
    try:
        return moe_space(text_config(config, arch), arch.experts, layers)
    except UnsupportedArchitectureError as exc:
        raise UnknownArchitecture(f"{arch.name}: {exc}") from None


class ConfigShape:
    """Layer count and widths read through the registry, for any object with ``config`` and ``arch``."""

    config: Mapping[str, Any]
    arch: Architecture

    @property
    def num_layers(self) -> int:
        return num_layers(self.config, self.arch)

    @property
    def intermediate_size(self) -> int:
        return intermediate_size(self.config, self.arch)

    @property
    def hidden_size(self) -> int:
        return hidden_size(self.config, self.arch)

    @property
    def neuron_space(self) -> NeuronSpace:
        return neuron_space(self.config, self.arch)

    def expert_projection_shapes(self) -> list[tuple[int, str, tuple[int, ...]]]:
        """What a mixture-of-experts model's fingerprint hashes for its projections: ``(hidden, width)`` per
        layer, the same for a checkpoint and a loaded model, whatever the experts' on-disk layout."""
        shape = (self.hidden_size, self.intermediate_size)
        return [(layer, self.arch.out_proj_weight, shape) for layer in range(self.num_layers)]


def out_proj_key(prefix: str, layer: int, arch: Architecture) -> str:
    return f"{prefix}.{layer}.{arch.out_proj_weight}"


def layer_zero_keys(prefix: str, arch: Architecture) -> tuple[str, ...]:
    """Keys one of which layer 0 of a checkpoint holds: its MLP output projection, or its experts' (either form)."""
    keys = [out_proj_key(prefix, 0, arch)]
    if arch.experts is not None:
        if arch.experts.per_expert_down:
            keys.append(f"{prefix}.0.{arch.experts.per_expert_down.format(expert=0)}")
        keys.append(f"{prefix}.0.{arch.experts.fused_down}")
    return tuple(keys)


def find_layer_prefix(keys: Iterable[str], arch: Architecture) -> str:
    """The layer path whose layer-0 output projection (or experts) is among the checkpoint keys."""
    key_set = set(keys)
    for prefix in arch.layer_paths:
        if key_set.intersection(layer_zero_keys(prefix, arch)):
            return prefix
    tried = ", ".join(k for p in arch.layer_paths for k in layer_zero_keys(p, arch))
    raise UnknownArchitecture(f"no MLP output projection found in the checkpoint (looked for {tried})")


def neuron_axis(arch: Architecture) -> int:
    """The weight axis that indexes neurons: 1 for Linear columns, 0 for Conv1D rows."""
    return 1 if arch.layout == "linear" else 0


def resolve_module(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def decoder_layers(model: Any, arch: Architecture) -> Any:
    """The decoder ModuleList of a loaded model (CausalLM wrapper or base model)."""
    for path in arch.layer_paths:
        try:
            return resolve_module(model, path)
        except (AttributeError, IndexError):
            continue
    raise UnknownArchitecture(f"{arch.name}: none of {list(arch.layer_paths)} found on the model")
