"""Loading a causal LM for analysis: device, dtype, the registry entry, the tokenizer and the context length."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tnedit.architectures import (
    Architecture,
    ConfigShape,
    architecture_for_config,
    decoder_layers,
    resolve_module,
    text_config,
)
from tnedit.checkpoint import open_checkpoint, resolve_source
from tnedit.errors import InputError
from tnedit.formats.digest import fingerprint
from tnedit.formats.neurons import ModelInfo
from tnedit.model.distributed import current_world, device_map_memory
from tnedit.model.experts import Consumer, neuron_weight_parts, watch_neurons
from tnedit.model.hooks import HookSet

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# Config keys that hold how many positions a model can read, in the order they are tried: most models
# say max_position_embeddings, GPT-2 n_positions (and the older n_ctx), ChatGLM/Qwen-1 seq_length.
CONTEXT_LENGTH_KEYS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")

# The default --max-length never exceeds this: configs advertise 32k-128k positions, and statistics over
# sentences never need them, while one runaway line (a whole document on one line of the data) would need
# gigabytes of activations per batch. An explicit --max-length may go higher, up to the model's context.
MAX_LENGTH_CAP = 4096


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device: unknown device '{device}' (expected cpu, cuda, mps or auto)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this torch build or machine has no CUDA device (use cpu or auto)")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    mps = getattr(torch.backends, "mps", None)
    if chosen.type == "mps" and not (mps and mps.is_available()):
        raise InputError(f"--device {device}: MPS is not available on this machine (use cpu or auto)")
    return chosen


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"--dtype: unknown dtype '{dtype}' (expected auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


@dataclass
class LoadedModel(ConfigShape):
    """A causal LM plus the registry facts and tokenizer needed to read its neurons."""

    model: Any
    tokenizer: Any
    arch: Architecture
    config: dict[str, Any]
    name_or_path: str
    revision: str | None = None
    path: Path | None = None  # the checkpoint directory on disk, when loaded from one
    layers: Any = field(init=False)

    def __post_init__(self) -> None:
        self.layers = decoder_layers(self.model, self.arch)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def layer_module(self, layer: int, dotted: str) -> Any:
        return resolve_module(self.layers[layer], dotted)

    def out_proj(self, layer: int) -> Any:
        return self.layer_module(layer, self.arch.out_proj)

    def layer_device(self, layer: int) -> torch.device:
        """Where layer ``layer``'s weights live (its statistics are summed there)."""
        return next(self.layers[layer].parameters()).device

    @property
    def is_moe(self) -> bool:
        return self.arch.experts is not None

    def watch_neurons(self, layer: int, hooks: HookSet, consumer: Consumer) -> None:
        """``consumer(columns, routed)`` at each forward pass: the layer's neuron columns (tnedit.model.experts)."""
        watch_neurons(self.model, self.layers, self.arch, self.config, layer, hooks, consumer)

    def neuron_weight_parts(self, layer: int) -> list[torch.Tensor]:
        """The layer's write vectors as views, one ``(hidden, block width)`` per block of columns (no copy)."""
        return neuron_weight_parts(self.layers[layer], self.arch, self.neuron_space, layer)

    @property
    def context_length(self) -> int | None:
        """Positions the model can read (see CONTEXT_LENGTH_KEYS); None when the config does not say (ALiBi)."""
        return context_length(self.config, self.arch)

    def fingerprint(self) -> str:
        """The checkpoint's fingerprint, from its files (the loaded dtype may differ); shape-only without files."""
        if self.path is not None:
            return open_checkpoint(self.path).fingerprint()
        if self.is_moe:
            return fingerprint(self.config["model_type"], self.expert_projection_shapes())
        shapes = [(i, self.arch.out_proj_weight, tuple(self.out_proj(i).weight.shape)) for i in range(len(self.layers))]
        return fingerprint(self.config["model_type"], shapes)

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name_or_path=self.name_or_path,
            model_type=self.config["model_type"],
            num_layers=self.num_layers,
            intermediate_size=self.intermediate_size,
            fingerprint=self.fingerprint(),
            revision=self.revision,
            hidden_size=self.hidden_size,
        )

    def base_model(self) -> Any:
        """The decoder stack without the LM head: statistics never need logits."""
        return self.model.base_model

    def tokenizer_facts(self) -> dict[str, Any]:
        probe = self.tokenizer("a")["input_ids"]
        return {
            "adds_bos": bool(self.tokenizer.bos_token_id is not None and probe[:1] == [self.tokenizer.bos_token_id]),
            "adds_eos": bool(self.tokenizer.eos_token_id is not None and probe[-1:] == [self.tokenizer.eos_token_id]),
            "bos_token": self.tokenizer.bos_token,
            "padding_side": "right",
        }


def load_model(
    source: str,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str = "auto",
    device_map: str | None = None,
) -> LoadedModel:
    """Load a causal LM for analysis: eval mode, right padding, a pad token, a registry entry."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(source, revision=revision)
    # The same checks as apply, before transformers sees the files: a model tnedit cannot edit
    # (.bin only, quantized, corrupt headers) fails here with one line.
    config = open_checkpoint(resolved.path).config
    arch = architecture_for_config(config)
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype)}
    if device_map:
        kwargs["device_map"] = device_map
        kwargs.update(device_map_memory(current_world()))  # under a launcher: this rank's GPUs only
    target = None if device_map else pick_device(device)  # refuse a missing device before loading weights
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    if target is not None:
        model.to(target)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        arch=arch,
        config=config,
        name_or_path=source,
        revision=resolved.revision,
        path=resolved.path,
    )


# --- context length ----------------------------------------------------------------------------


def context_entry(config: Mapping[str, Any], arch: Architecture) -> tuple[str, int] | None:
    """(key, value) of the first positive CONTEXT_LENGTH_KEYS entry, a wrapper's text config first."""
    for cfg in (text_config(config, arch), config):
        for key in CONTEXT_LENGTH_KEYS:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return key, value
    return None


def context_length(config: Mapping[str, Any], arch: Architecture) -> int | None:
    entry = context_entry(config, arch)
    return entry[1] if entry is not None else None


def resolve_max_length(lm: LoadedModel, requested: int | None, where: str = "--max-length") -> int:
    """Tokens per sentence: ``requested``, else the model's context length capped at MAX_LENGTH_CAP.

    A longer sentence would index past the position embeddings (GPT-2: IndexError), so a request
    beyond the context is refused rather than passed on.
    """
    entry = context_entry(lm.config, lm.arch)
    if requested is None:
        return min(entry[1], MAX_LENGTH_CAP) if entry is not None else MAX_LENGTH_CAP
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise InputError(f"{where}: expected a positive number of tokens, got {requested!r}")
    if entry is not None and requested > entry[1]:
        raise InputError(f"{where} {requested}: exceeds the model's context length of {entry[1]} tokens "
                         f"({entry[0]} in config.json)")
    return requested


def stat_device(device: torch.device) -> torch.device:
    """Where running fp64 statistics of tensors on ``device`` are kept."""
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
