"""Last-token capture through hooks: the one forward-pass path identify and evaluate read hidden states by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tnedit.architectures import norm_epsilon
from tnedit.model.batching import Batch, gather_last, token_view
from tnedit.model.hooks import HookSet
from tnedit.model.loading import LoadedModel, stat_device


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
    abs_sum: dict[int, torch.Tensor] = field(default_factory=dict)  # (B, m) float64: sum of |a| over real tokens
    tokens: torch.Tensor | None = None  # (B,) float64: real tokens per row, with "abs_sum"
    logits: torch.Tensor | None = None  # (B, T, V), only from run(batch, logits=True)


class LastTokenCapture:
    """Hooks that record, at the last real token, what identify and evaluate need.

    ``want`` is a subset of {"h", "r", "a", "abs_sum"}: raw decoder-layer outputs, the pre-MLP residual
    R, the output-projection inputs (neuron activations), and per row the sum of ``|a|`` over every real
    (attention-masked) token, not only the last one (float64, for the mean |activation| of each neuron).
    Use as a context manager; call :meth:`run` per batch.
    """

    def __init__(self, lm: LoadedModel, want: Sequence[str], layers: Sequence[int] | None = None):
        self.lm = lm
        self.want = set(want)
        self.layers = list(range(len(lm.layers))) if layers is None else list(layers)
        self.states = LastTokenStates()
        self._last: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._hooks = HookSet()
        self._layer_inputs: dict[int, torch.Tensor] = {}

    def __enter__(self) -> LastTokenCapture:
        for layer in self.layers:
            self._install(layer)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.remove()

    def _install(self, layer: int) -> None:
        lm, arch, hooks = self.lm, self.lm.arch, self._hooks
        module = lm.layers[layer]
        if "h" in self.want:
            hooks.add_post(module, self._store_output("h", layer))
        if "a" in self.want:
            lm.watch_neurons(layer, hooks, self._store_columns(layer))
        if "abs_sum" in self.want:
            lm.watch_neurons(layer, hooks, self._store_abs_sum(layer))
        if "r" in self.want:
            kind, name = arch.residual_rule(lm.config)
            if kind == "input_of":
                hooks.add_pre(lm.layer_module(layer, name), self._store_input("r", layer))
            else:
                hooks.add_pre(module, self._keep_layer_input(layer), with_kwargs=True)
                hooks.add_post(lm.layer_module(layer, name), self._parallel_residual(layer))
            if arch.out_norm:
                norm = lm.layer_module(layer, arch.out_norm)
                hooks.add_pre(norm, self._out_norm_scale(layer, norm))

    def _store_input(self, kind: str, layer: int) -> Any:
        def hook(_module: Any, args: Any) -> None:
            getattr(self.states, kind)[layer] = gather_last(_first(args), self._last)

        return hook

    def _store_output(self, kind: str, layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            getattr(self.states, kind)[layer] = gather_last(_first(out), self._last)

        return hook

    def _store_columns(self, layer: int) -> Any:
        def consumer(x: torch.Tensor, _routed: torch.Tensor | None) -> None:
            self.states.a[layer] = gather_last(x, self._last)

        return consumer

    def _store_abs_sum(self, layer: int) -> Any:
        def consumer(columns: torch.Tensor, _routed: torch.Tensor | None) -> None:
            real = self._mask.bool()
            x = token_view(columns, real.shape[0])
            device = stat_device(x.device)
            real = real.to(x.device)
            rows = [x[b][real[b]].to(device, torch.float64).abs().sum(0) for b in range(x.shape[0])]
            self.states.abs_sum[layer] = torch.stack(rows)  # row by row: no (B, T, m) float64 copy

        return consumer

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
        eps = norm_epsilon(norm)
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
        self._mask = batch.attention_mask
        if "abs_sum" in self.want:
            self.states.tokens = batch.attention_mask.sum(1).to("cpu", torch.float64)
        with torch.inference_mode():
            model = self.lm.model if logits else self.lm.base_model()
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        if logits:
            self.states.logits = out.logits
        return self.states

