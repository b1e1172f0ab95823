"""Loading a model for analysis, batching under right padding, and last-token capture via hooks.

This is the one forward-pass path: identify and evaluate both read hidden states through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
from tnedit.neurons import ModelInfo, fingerprint

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

    @property
    def context_length(self) -> int | None:
        """Positions the model can read (see CONTEXT_LENGTH_KEYS); None when the config does not say (ALiBi)."""
        return context_length(self.config, self.arch)

    def fingerprint(self) -> str:
        """The checkpoint's fingerprint, from its files (the loaded dtype may differ); shape-only without files."""
        if self.path is not None:
            return open_checkpoint(self.path).fingerprint()
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


# --- batching ------------------------------------------------------------------------------------


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


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_index: torch.Tensor  # position of the last real token per row (right padding)
    rows: list[int]  # indices into the caller's sentence list


@dataclass
class EncodedTexts:
    """Token ids of sentences, and which of them were cut to ``max_length``."""

    ids: list[list[int]]
    truncated: list[bool]
    max_length: int | None = None

    @property
    def n_truncated(self) -> int:
        return sum(self.truncated)


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int | None = None) -> EncodedTexts:
    """Tokenize ``texts`` (special tokens included), truncating to ``max_length`` and noting which were cut.

    Each sentence is first tokenized whole (verbose=False: a long one is expected here, not worth
    the tokenizer's warning); only the ones longer than ``max_length`` are tokenized again with the
    tokenizer's own truncation, so special tokens stay where the tokenizer puts them.
    """
    ids = [tokenizer(t, verbose=False)["input_ids"] for t in texts]
    truncated = [max_length is not None and len(x) > max_length for x in ids]
    for i, cut in enumerate(truncated):
        if cut:
            ids[i] = tokenizer(texts[i], truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise InputError(f"{len(empty)} sentence(s) tokenize to nothing, e.g. row {empty[0] + 1}: {texts[empty[0]]!r}")
    return EncodedTexts(ids, truncated, max_length)


def _batches(
    encoded: Sequence[Sequence[int]], batch_size: int, device: torch.device | str, pad: int
) -> Iterator[Batch]:
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        yield Batch(ids.to(device), mask.to(device), (mask.sum(1) - 1).to(device), rows)


def encode_batches(
    tokenizer: Any,
    texts: Sequence[str] | EncodedTexts,
    batch_size: int,
    device: torch.device | str = "cpu",
    max_length: int | None = None,
) -> Iterator[Batch]:
    """Right-padded batches of ``texts`` (or of already :func:`encode_texts`-ed ones), grouped by length.

    Rows come back in length order; ``Batch.rows`` maps them to the caller's indices. Statistics
    are sums, so order does not change them beyond fp64 rounding.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    encoded = texts if isinstance(texts, EncodedTexts) else encode_texts(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return _batches(encoded.ids, batch_size, device, pad)


def gather_last(x: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """(B, T, D) → (B, D) at each row's last real token.

    A flattened (B·T, D) input (OPT's decoder layer reshapes before its MLP) is viewed as (B, T, D).
    """
    if x.dim() == 2:
        x = x.view(last_index.shape[0], -1, x.shape[-1])
    return x[torch.arange(x.shape[0], device=x.device), last_index.to(x.device)]


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output


# --- capture -------------------------------------------------------------------------------------


@dataclass
class LastTokenStates:
    """Per-layer last-token tensors of one batch, each (B, ·) in the model's dtype.

    ``out_scale[l]`` is the per-dimension factor that turns ``a_i v_i`` into neuron i's exact
    contribution to the residual when an output norm follows the MLP (Gemma 2/3); None otherwise.
    """

    h: dict[int, torch.Tensor] = field(default_factory=dict)
    r: dict[int, torch.Tensor] = field(default_factory=dict)
    a: dict[int, torch.Tensor] = field(default_factory=dict)
    out_scale: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # (B, T, V), only from run(batch, logits=True)


class LastTokenCapture:
    """Hooks that record, at the last real token, what identify and evaluate need.

    ``want`` is a subset of {"h", "r", "a"}: raw decoder-layer outputs, the pre-MLP residual R,
    and the output-projection inputs (neuron activations). Use as a context manager; call
    :meth:`run` per batch.
    """

    def __init__(self, lm: LoadedModel, want: Sequence[str], layers: Sequence[int] | None = None):
        self.lm = lm
        self.want = set(want)
        self.layers = list(range(len(lm.layers))) if layers is None else list(layers)
        self.states = LastTokenStates()
        self._last: torch.Tensor | None = None
        self._handles: list[Any] = []
        self._layer_inputs: dict[int, torch.Tensor] = {}

    def __enter__(self) -> LastTokenCapture:
        for layer in self.layers:
            self._install(layer)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _install(self, layer: int) -> None:
        lm, arch = self.lm, self.lm.arch
        module = lm.layers[layer]
        if "h" in self.want:
            self._handles.append(module.register_forward_hook(self._store_output("h", layer)))
        if "a" in self.want:
            self._handles.append(lm.out_proj(layer).register_forward_pre_hook(self._store_input("a", layer)))
        if "r" in self.want:
            kind, name = arch.residual_rule(lm.config)
            if kind == "input_of":
                target = lm.layer_module(layer, name)
                self._handles.append(target.register_forward_pre_hook(self._store_input("r", layer)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._keep_layer_input(layer), with_kwargs=True))
                attn = lm.layer_module(layer, name)
                self._handles.append(attn.register_forward_hook(self._parallel_residual(layer)))
            if arch.out_norm:
                norm = lm.layer_module(layer, arch.out_norm)
                self._handles.append(norm.register_forward_pre_hook(self._out_norm_scale(layer, norm)))

    def _store_input(self, kind: str, layer: int) -> Any:
        def hook(_module: Any, args: Any) -> None:
            getattr(self.states, kind)[layer] = gather_last(_first(args), self._last)

        return hook

    def _store_output(self, kind: str, layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            getattr(self.states, kind)[layer] = gather_last(_first(out), self._last)

        return hook

    def _keep_layer_input(self, layer: int) -> Any:
        def hook(_module: Any, args: Any, kwargs: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            self._layer_inputs[layer] = gather_last(x, self._last)

        return hook

    def _parallel_residual(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            attn = gather_last(_first(out), self._last)
            self.states.r[layer] = self._layer_inputs.pop(layer) + attn

        return hook

    def _out_norm_scale(self, layer: int, norm: Any) -> Any:
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
        offset = self.lm.arch.out_norm_offset

        def hook(_module: Any, args: Any) -> None:
            y = gather_last(_first(args), self._last).float()
            inv_rms = torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
            self.states.out_scale[layer] = (offset + norm.weight.float()) * inv_rms

        return hook

    def run(self, batch: Batch, logits: bool = False) -> LastTokenStates:
        """One forward pass of the base model (no LM head); returns this batch's states.

        With ``logits=True`` the whole causal LM runs instead and ``states.logits`` holds its
        next-token logits at every position, so one pass serves hidden states and LM metrics.
        """
        self.states = LastTokenStates()
        self._last = batch.last_index
        with torch.inference_mode():
            model = self.lm.model if logits else self.lm.base_model()
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        if logits:
            self.states.logits = out.logits
        return self.states


def last_token_states(lm: LoadedModel, texts: Sequence[str], neurons: Any = None, batch_size: int = 16) -> torch.Tensor:
    """[sentences, layers, hidden] raw decoder-layer outputs at the last token, float64.

    ``neurons`` (a NeuronSet, or None) are zeroed at the last token only, as the paper's
    representation analyses do; rows come back in the order of ``texts``. Sentences longer than the
    model's context are cut to it (see :func:`resolve_max_length`).
    """
    from tnedit.edit import RuntimeEdit, make_edit_spec

    layers = list(range(lm.num_layers))
    spec = make_edit_spec(neurons) if neurons is not None else None
    out: dict[int, torch.Tensor] = {}
    with LastTokenCapture(lm, ["h"], layers) as cap:
        for batch in encode_batches(lm.tokenizer, texts, batch_size, lm.device, resolve_max_length(lm, None)):
            if spec is None:
                states = cap.run(batch)
            else:
                with RuntimeEdit(lm.model, spec, positions="last", arch=lm.arch) as edit:
                    edit.set_attention_mask(batch.attention_mask)
                    states = cap.run(batch)
            for j, row in enumerate(batch.rows):
                out[row] = torch.stack([states.h[layer][j].double() for layer in layers])
    return torch.stack([out[i] for i in range(len(texts))])


# --- batches and progress ----------------------------------------------------------------------


def stat_device(device: torch.device) -> torch.device:
    """Where running fp64 statistics of tensors on ``device`` are kept."""
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, quiet: bool, initial: int = 0) -> Any:
    """A tqdm bar over batches, or an object with the same two methods that shows nothing."""
    if quiet:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, unit="batch", leave=False, dynamic_ncols=True)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
