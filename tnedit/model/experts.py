"""Neurons of mixture-of-experts layers on a loaded model: their activations, their write vectors, their edits.

transformers 5 fuses a layer's routed experts into one module with 3-D parameters, so no per-expert
Linear exists to hook. tnedit registers its own experts implementation (``ALL_EXPERTS_FUNCTIONS``),
the eager per-expert loop, which also hands each expert's activations ``a`` (the input of its output
projection) to listeners and lets edits scale them. A layer's neurons are then read as one row of
columns (see :mod:`tnedit.experts`): routed expert ``e``'s column ``i`` holds ``w · a_i`` (the router
weight of ``e`` at that token times the activation; 0 where the token is not routed to ``e``), the
shared expert's columns ``g · a_i`` (its sigmoid gate, or 1). Neuron i then adds ``column_i · v_i`` to
the residual, exactly as a dense neuron adds ``a_i · v_i``, so every statistic applies unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tnedit.architectures import Architecture, neuron_axis, neuron_space, resolve_module
from tnedit.experts import SHARED, Block, ExpertTag, NeuronSpace
from tnedit.model.hooks import HookSet

IMPLEMENTATION = "tnedit"
# consumer(columns (..., width), routed (..., width) bool or None = every token counts)
Consumer = Callable[[torch.Tensor, "torch.Tensor | None"], None]
# edit(expert, token rows, a (rows, width), tokens in the pass) -> a, inside the experts loop
ExpertEdit = Callable[[int, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _gate_up(module: Any, x: torch.Tensor, expert: int) -> torch.Tensor:
    if module.is_transposed:  # gpt_oss: [E, H, 2I] with a bias
        return x @ module.gate_up_proj[expert] + module.gate_up_proj_bias[expert]
    return torch.nn.functional.linear(x, module.gate_up_proj[expert])


def _down(module: Any, a: torch.Tensor, expert: int) -> torch.Tensor:
    if module.is_transposed:
        return a @ module.down_proj[expert] + module.down_proj_bias[expert]
    return torch.nn.functional.linear(a, module.down_proj[expert])


def experts_forward(module: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The eager per-expert loop of transformers' experts modules, with tnedit's edits and listeners."""
    edits: list[ExpertEdit] = getattr(module, "_tnedit_edits", [])
    listeners: list[Callable[..., None]] = getattr(module, "_tnedit_listeners", [])
    out = torch.zeros_like(hidden_states)
    recorded = None
    for expert in top_k_index.unique().tolist():
        if not 0 <= expert < module.down_proj.shape[0]:
            continue  # masked slots (expert parallelism) carry the sentinel num_experts
        token, slot = torch.where(top_k_index == expert)
        a = module._apply_gate(_gate_up(module, hidden_states[token], expert))
        for edit in edits:
            a = edit(expert, token, a, hidden_states.shape[0])
        if listeners:
            if recorded is None:
                recorded = a.new_zeros(*top_k_index.shape, a.shape[-1])
            recorded[token, slot] = a
        y = _down(module, a, expert) * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    for listener in listeners:
        listener(top_k_index, top_k_weights, recorded)
    return out


def use_tnedit_experts(model: Any, hooks: HookSet) -> None:
    """Run the model's experts through :func:`experts_forward` until ``hooks`` are removed, which puts the
    previous implementation back (logits agree with the default's to float rounding)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, experts_forward)
    previous = getattr(model.config, "_experts_implementation", None)
    if previous != IMPLEMENTATION:
        model.set_experts_implementation(IMPLEMENTATION)
        hooks.add_callback(lambda: model.set_experts_implementation(previous))


def _attach(module: Any, attribute: str, item: Any) -> Callable[[], None]:
    if not hasattr(module, attribute):
        setattr(module, attribute, [])
    getattr(module, attribute).append(item)
    return lambda: getattr(module, attribute).remove(item)


def add_expert_edit(hooks: HookSet, module: Any, edit: ExpertEdit) -> None:
    hooks.add_callback(_attach(module, "_tnedit_edits", edit))


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[-1] == width else torch.nn.functional.pad(x, (0, width - x.shape[-1]))


class _MoeLayerReader:
    """Assembles one MoE layer's columns from its experts, shared expert and gate, then calls the consumer."""

    def __init__(self, layer_module: Any, arch: Architecture, blocks: tuple[Block, ...], width: int,
                 consumer: Consumer):
        self.experts = arch.experts
        self.layer_module = layer_module
        self.blocks, self.width, self.consumer = blocks, width, consumer
        self.routed_count = sum(isinstance(b.expert, int) for b in blocks)
        self._parts: dict[str, Any] = {}

    def install(self, hooks: HookSet) -> None:
        spec = self.experts
        block = resolve_module(self.layer_module, spec.block)
        hooks.add_pre(block, self._start)
        hooks.add_callback(_attach(resolve_module(self.layer_module, spec.module), "_tnedit_listeners", self._routed))
        if spec.shared_down:
            hooks.add_pre(resolve_module(self.layer_module, spec.shared_down), self._shared)
        if spec.shared_gate:
            hooks.add_post(resolve_module(self.layer_module, spec.shared_gate), self._gate)
        hooks.add_post(block, self._finish)

    def _start(self, _module: Any, args: Any) -> None:
        self._parts = {"shape": tuple(args[0].shape[:-1])}

    def _routed(self, index: torch.Tensor, weights: torch.Tensor, a: torch.Tensor | None) -> None:
        tokens, width = index.shape[0], self.blocks[0].width
        columns = torch.zeros(tokens, self.routed_count, width, dtype=torch.float32, device=index.device)
        if a is not None:
            weighted = weights.float().unsqueeze(-1) * a.float()
            columns.scatter_(1, index.unsqueeze(-1).expand(-1, -1, width), weighted)
        routed = torch.zeros(tokens, self.routed_count, dtype=torch.bool, device=index.device)
        routed.scatter_(1, index.clamp_max(self.routed_count - 1), index < self.routed_count)
        self._parts["routed"] = (columns.reshape(tokens, -1), routed.repeat_interleave(width, dim=1))

    def _shared(self, _module: Any, args: Any) -> None:
        self._parts["shared"] = args[0].reshape(-1, args[0].shape[-1]).float()

    def _gate(self, _module: Any, _args: Any, out: Any) -> None:
        self._parts["gate"] = torch.sigmoid(out.reshape(-1, 1).float())

    def _finish(self, *_: Any) -> None:
        columns, routed = self._parts.pop("routed")
        pieces, masks = [columns], [routed]
        if "shared" in self._parts:
            shared = self._parts["shared"] * self._parts.get("gate", 1.0)
            pieces.append(shared)
            masks.append(torch.ones_like(shared, dtype=torch.bool))
        shape = self._parts["shape"]
        x = _pad(torch.cat(pieces, dim=1), self.width).reshape(*shape, self.width)
        mask = _pad(torch.cat(masks, dim=1), self.width).reshape(*shape, self.width)
        self._parts = {}
        self.consumer(x, mask)


def watch_neurons(model: Any, layers: Any, arch: Architecture, config: Any, layer: int, hooks: HookSet,
                  consumer: Consumer) -> None:
    """Call ``consumer`` with layer ``layer``'s neuron columns at every forward pass (see the module doc).

    A dense model's columns are its output projection's input, as is; an MoE model's (dense layers
    included) are padded to the model's width.
    """
    space = neuron_space(config, arch)
    module = layers[layer]
    if not space.is_moe_layer(layer):
        width = space.width

        def dense(_module: Any, args: Any) -> None:
            x = args[0]
            consumer(_pad(x, width) if arch.experts is not None else x, None)

        hooks.add_pre(resolve_module(module, arch.out_proj), dense)
        return
    use_tnedit_experts(model, hooks)
    _MoeLayerReader(module, arch, space.blocks(layer), space.width, consumer).install(hooks)


def projection_weight(layer_module: Any, arch: Architecture, expert: ExpertTag) -> tuple[torch.Tensor, int]:
    """(weight, neuron axis) of one output projection in memory: a dense layer's, the shared expert's, or a
    routed expert's slab of the fused 3-D parameter (a view, so edits in place reach the model)."""
    if expert is None:
        return resolve_module(layer_module, arch.out_proj).weight, neuron_axis(arch)
    spec = arch.experts
    if expert == SHARED:
        return resolve_module(layer_module, str(spec.shared_down)).weight, 1
    fused = resolve_module(layer_module, spec.module).down_proj
    return fused[int(expert)], 0 if spec.transposed else 1


def neuron_weight_parts(layer_module: Any, arch: Architecture, space: NeuronSpace, layer: int) -> list[torch.Tensor]:
    """The layer's write vectors as ``(hidden, block width)`` views, one per block of columns in order (a dense
    layer's output projection, each routed expert's slab, the shared expert): no copy of the weights."""
    parts = []
    for block in space.blocks(layer):
        weight, axis = projection_weight(layer_module, arch, block.expert)
        parts.append(weight.detach() if axis == 1 else weight.detach().t())
    return parts
