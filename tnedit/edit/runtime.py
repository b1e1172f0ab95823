"""An edit on a loaded model: in its weights (:func:`apply_to_model`, exactly as apply bakes) or as hooks.

The baked form acts at every position; :class:`RuntimeEdit` can restrict the same edit to chosen
positions, which is what the paper's analyses do. torch is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tnedit.architectures import Architecture, decoder_layers, get_architecture, neuron_space, resolve_module
from tnedit.edit.numeric import patch_slices, restore_slices
from tnedit.edit.spec import EditSpec, Positions, check_neuron_range, make_edit_spec
from tnedit.errors import InputError, LibraryUsageError
from tnedit.experts import dense_space
from tnedit.formats.neurons import Neuron, NeuronSet
from tnedit.model.experts import add_expert_edit, projection_weight, use_tnedit_experts
from tnedit.model.hooks import HookSet

_TORCH_TO_SAFETENSORS = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
}


def _arch_of(model: Any, arch: Architecture | None) -> Architecture:
    return arch if arch is not None else get_architecture(model.config.model_type)


def _host_storage(weight: Any, dtype: str) -> np.ndarray:
    import torch

    cpu = weight.detach().to("cpu").contiguous()
    if dtype == "BF16":
        return cpu.view(torch.int16).numpy().view(np.uint16).copy()
    return cpu.numpy().copy()


def _from_host(host: np.ndarray, like: Any) -> Any:
    import torch

    if like.dtype == torch.bfloat16:
        return torch.from_numpy(host.view(np.int16)).view(torch.bfloat16).to(like.device)
    return torch.from_numpy(host).to(like.device)


@dataclass
class EditHandle:
    """Restores the original weights of an in-memory edit."""

    _saved: list[tuple[Any, int, tuple[int, ...], np.ndarray]]
    spec: EditSpec

    def restore(self) -> None:
        import torch

        for weight, axis, indices, original in reversed(self._saved):
            dtype = _TORCH_TO_SAFETENSORS[str(weight.dtype)]
            host = _host_storage(weight, dtype)
            restore_slices(host, axis, indices, original)
            with torch.no_grad():
                weight.copy_(_from_host(host, weight))
        self._saved.clear()


def _edit_weight(weight: Any, axis: int, indices: tuple[int, ...], factors: tuple[float, ...], where: str) -> Any:
    """Scale one weight's neuron slices in place; returns the original slices."""
    import torch

    dtype = _TORCH_TO_SAFETENSORS.get(str(weight.dtype))
    if dtype is None:
        raise InputError(f"cannot edit weights of dtype {weight.dtype}")
    host = _host_storage(weight, dtype)
    original = patch_slices(host, dtype, axis, indices, factors, where)
    with torch.no_grad():
        weight.copy_(_from_host(host, weight))
    return original


def apply_to_model(
    model: Any,
    neurons: NeuronSet | Sequence[Neuron] | EditSpec,
    op: str = "zero",
    factor: Any = None,
    arch: Architecture | None = None,
) -> EditHandle:
    """Edit a loaded transformers model's output-projection weights in place, exactly as apply bakes.

    Returns a handle whose :meth:`EditHandle.restore` puts the original values back.
    """
    spec = neurons if isinstance(neurons, EditSpec) else make_edit_spec(neurons, op, factor)
    arch = _arch_of(model, arch)
    layers = decoder_layers(model, arch)
    check_neuron_range(spec, model_neuron_space(model, arch, layers), "apply_to_model")
    handle = EditHandle([], spec)
    try:
        for edit in spec.by_layer():
            weight, axis = projection_weight(layers[edit.layer], arch, edit.expert)
            where = f"layer {edit.layer} ({_projection_name(arch, edit.expert)})"
            original = _edit_weight(weight, axis, edit.indices, edit.factors, where)
            handle._saved.append((weight, axis, edit.indices, original))
    except BaseException:
        handle.restore()  # all or nothing: a failure in a later layer must not leave earlier ones edited
        raise
    return handle


def model_neuron_space(model: Any, arch: Architecture, layers: Any) -> Any:
    """The neuron space of a loaded model: from its config for an MoE family, from the weights for a dense one."""
    if arch.experts is not None:
        return neuron_space(model.config.to_dict(), arch)
    weight, axis = projection_weight(layers[0], arch, None)
    return dense_space(len(layers), weight.shape[axis])


def _projection_name(arch: Architecture, expert: Any) -> str:
    if expert is None:
        return f"{arch.out_proj}.weight"
    if arch.experts is not None and expert == "shared":
        return f"{arch.experts.shared_down}.weight"
    return f"{arch.experts.fused_down if arch.experts else arch.out_proj}[{expert}]"


# --- runtime hooks ------------------------------------------------------------------------------


def last_token_mask(attention_mask: Any) -> Any:
    """One True per row at its last real token, for left or right padding."""
    import torch

    mask = attention_mask.bool()
    width = mask.shape[1]
    last = width - 1 - torch.flip(mask.long(), dims=[1]).argmax(dim=1)
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0], device=mask.device), last] = True
    return out


class RuntimeEdit:
    """Forward pre-hooks that scale neuron activations (the output projection's inputs).

    ``positions``: ``all`` multiplies every position, equal to the baked edit; ``last`` only each
    row's last real token and ``prompt`` every real prompt token, as in the paper. For ``last`` and
    ``prompt`` call :meth:`set_attention_mask` before each forward; passes whose length differs from
    that mask (cached generation steps) are left unedited, so generated tokens are never edited.
    """

    def __init__(self, model: Any, spec: EditSpec, positions: Positions = "all", arch: Architecture | None = None):
        if positions not in ("all", "last", "prompt"):
            raise InputError(f"--positions must be all, last or prompt, got {positions!r}")
        self.model = model
        self.spec = spec
        self.positions = positions
        self.arch = _arch_of(model, arch)
        self.layers = decoder_layers(model, self.arch)
        check_neuron_range(spec, model_neuron_space(model, self.arch, self.layers), "runtime edit")
        self._mask: Any = None
        self._hooks = HookSet()

    def set_attention_mask(self, attention_mask: Any) -> None:
        if self.positions == "all":
            self._mask = None
        elif self.positions == "last":
            self._mask = last_token_mask(attention_mask)
        else:
            self._mask = attention_mask.bool()

    def __enter__(self) -> RuntimeEdit:
        import torch

        for edit in self.spec.by_layer():
            idx = torch.tensor(edit.indices, dtype=torch.long)
            factors = torch.tensor(edit.factors, dtype=torch.float32)
            if isinstance(edit.expert, int):  # a routed expert: inside tnedit's experts loop
                use_tnedit_experts(self.model, self._hooks)
                experts = resolve_module(self.layers[edit.layer], self.arch.experts.module)
                add_expert_edit(self._hooks, experts, self._expert_edit(edit.expert, idx, factors))
                continue
            name = self.arch.out_proj if edit.expert is None else str(self.arch.experts.shared_down)
            self._hooks.add_pre(resolve_module(self.layers[edit.layer], name), self._hook(idx, factors))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.remove()

    def _hook(self, idx: Any, factors: Any) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            mask = self._position_mask(x)
            if mask is False:
                return None
            return (_scaled(x, idx, factors, mask), *args[1:])

        return hook

    def _expert_edit(self, expert: int, idx: Any, factors: Any) -> Any:
        """Scales routed expert ``expert``'s activations at the chosen positions, inside the experts loop."""

        def edit(routed_to: int, token: Any, a: Any, tokens: int) -> Any:
            if routed_to != expert:
                return a
            mask = self._flat_mask(tokens, a.device)  # the experts see (batch × time) rows
            if mask is False:
                return a
            return _scaled(a, idx, factors, None if mask is None else mask[token.to(mask.device)])

        return edit

    def _position_mask(self, x: Any) -> Any:
        """None = every position; False = skip this pass; else a bool mask shaped like x[..., 0]."""
        if x.dim() == 2:  # layers that flatten (batch, time) first, e.g. OPT
            return self._flat_mask(x.shape[0], x.device)
        mask = self._current_mask()
        if mask is None:
            return None
        mask = mask.to(x.device)
        return mask if tuple(mask.shape) == tuple(x.shape[:2]) else False

    def _flat_mask(self, rows: int, device: Any) -> Any:
        """The position mask over ``rows`` flattened (batch × time) rows; None = every row; False = skip the pass."""
        mask = self._current_mask()
        if mask is None:
            return None
        return mask.to(device).reshape(-1) if mask.numel() == rows else False

    def _current_mask(self) -> Any:
        if self.positions == "all":
            return None
        if self._mask is None:
            raise LibraryUsageError("RuntimeEdit: call set_attention_mask() before each forward")
        return self._mask


def _scaled(x: Any, idx: Any, factors: Any, mask: Any) -> Any:
    """``x`` with columns ``idx`` multiplied by ``factors`` (exact zeros for 0) where ``mask`` (None = everywhere)."""
    i, f = idx.to(x.device), factors.to(x.device)
    x = x.clone()
    picked = x[..., i]
    scaled = (picked.float() * f).to(x.dtype)
    scaled = scaled.masked_fill(f == 0, 0)
    if mask is not None:
        scaled = scaled.where(mask.to(x.device).unsqueeze(-1), picked)
    x[..., i] = scaled
    return x
