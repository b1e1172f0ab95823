"""Mixture-of-experts facts, declared per family, and the neuron space of a layer.

A neuron of an MoE layer is ``(layer, expert, index)``: the ``index``-th input of that expert's output
projection, with ``expert`` an int for a routed expert and ``"shared"`` for the shared expert; a dense
MLP layer's neuron has no expert. Statistics lay a layer's neurons side by side in one row of
*columns* (routed experts in order, then the shared expert), so the score and count arrays stay
``[layers, width]``; :class:`NeuronSpace` maps between the two. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tnedit.errors import NeuronSetError, UnsupportedArchitectureError
from tnedit.formats.neurons import SHARED, ExpertTag, Neuron, expert_label


@dataclass(frozen=True)
class Experts:
    """Where one MoE family keeps its experts, in memory and on disk, and which layers are dense.

    Paths are relative to a decoder layer. ``per_expert_down`` is the on-disk key of one routed
    expert's output projection (``{expert}`` is replaced); ``fused_down`` the 3-D parameter that
    holds all of them, in memory and in fused checkpoints: ``[experts, hidden, width]``, or
    ``[experts, width, hidden]`` when ``transposed`` (gpt-oss).
    """

    block: str  # the MoE block module (its output is the MLP output)
    module: str  # the fused experts module, called with (hidden [T, H], top_k_index [T, k], top_k_weights [T, k])
    fused_down: str
    per_expert_down: str | None
    count_keys: tuple[str, ...]
    width_keys: tuple[str, ...]
    transposed: bool = False
    # The shared expert's output projection (an nn.Linear) and, when its output is gated, the module
    # whose sigmoid scales it per token (Qwen2-MoE).
    shared_down: str | None = None
    shared_gate: str | None = None
    shared_width_keys: tuple[str, ...] = ()
    shared_width_multiplier_key: str | None = None  # DeepSeek: shared width = width × n_shared_experts
    # Dense layers: those before ``first_dense_key`` (DeepSeek's first_k_dense_replace), those listed in
    # ``dense_list_key``, or those where (layer + 1) % ``sparse_step_key`` != 0 (Qwen-MoE).
    first_dense_key: str | None = None
    dense_list_key: str | None = None
    sparse_step_key: str | None = None
    dense_out_proj: str = "mlp.down_proj"
    dense_width_keys: tuple[str, ...] = ("intermediate_size",)


@dataclass(frozen=True)
class Block:
    """One expert's (or a dense MLP's) neurons: columns ``offset .. offset + width - 1`` of its layer."""

    expert: ExpertTag
    offset: int
    width: int


def _first_int(config: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _required(config: Mapping[str, Any], keys: tuple[str, ...], what: str) -> int:
    value = _first_int(config, keys)
    if value is None:
        raise UnsupportedArchitectureError(f"config has none of {list(keys)} for the {what}")
    return value


class NeuronSpace:
    """The neurons of every layer of one model, as blocks of columns; a dense model has one block per layer."""

    def __init__(self, layers: list[tuple[Block, ...]], moe: bool):
        self.layers = layers
        self.moe = moe
        self.width = max((sum(b.width for b in blocks) for blocks in layers), default=0)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def blocks(self, layer: int) -> tuple[Block, ...]:
        return self.layers[layer]

    def layer_width(self, layer: int) -> int:
        return sum(b.width for b in self.layers[layer])

    def is_moe_layer(self, layer: int) -> bool:
        return any(b.expert is not None for b in self.layers[layer])

    def block(self, layer: int, expert: ExpertTag) -> Block | None:
        return next((b for b in self.layers[layer] if b.expert == expert), None)

    def neuron_at(self, layer: int, column: int) -> tuple[ExpertTag, int]:
        """(expert, index) of a column; a column past the layer's width is an error."""
        for block in self.layers[layer]:
            if block.offset <= column < block.offset + block.width:
                return block.expert, column - block.offset
        raise NeuronSetError(f"layer {layer} has no column {column} (width {self.layer_width(layer)})")

    def check(self, layer: int, expert: ExpertTag, index: int, where: str) -> None:
        """One line for a neuron this MoE model does not have: an expert on a dense layer, or the reverse."""
        if not 0 <= layer < len(self.layers):
            last = len(self.layers) - 1
            raise NeuronSetError(f"{where}: layer {layer} is out of range (the model has layers 0..{last})")
        block = self.block(layer, expert)
        if block is None:
            raise NeuronSetError(f"{where}: {self._mismatch(layer, expert)}")
        if not 0 <= index < block.width:
            raise NeuronSetError(
                f"{where}: neuron index {index} of {expert_label(expert)} in layer {layer} is out of range "
                f"({block.width} neurons: 0..{block.width - 1})"
            )

    def columns(self) -> list[list[list[Any]]]:
        """Per layer, ``[expert, width]`` of each block in column order: what a scores file records."""
        return [[[b.expert, b.width] for b in blocks] for blocks in self.layers]

    def padding(self) -> list[int]:
        """Per layer, the first column past its neurons (the rest of the row of ``width`` is padding)."""
        return [self.layer_width(layer) for layer in range(len(self.layers))]

    def neuron(self, layer: int, column: int, score: float | None = None) -> Neuron:
        """The neuron of a column, as a neurons file names it (with its expert, in an MoE model)."""
        if not self.moe:
            return Neuron(layer, column, score=score)
        expert, index = self.neuron_at(layer, column)
        return Neuron(layer, index, score=score, expert=expert)

    def _mismatch(self, layer: int, expert: ExpertTag) -> str:
        if expert is None:
            kinds = ", ".join(expert_label(b.expert) for b in self.layers[layer] if b.expert is not None)
            return (f"layer {layer} is a mixture-of-experts layer: each of its neurons needs an expert (an 'expert' "
                    f"key, or {layer}:e0:INDEX / {layer}:shared:INDEX in a list; the layer has {_short(kinds)})")
        if not self.is_moe_layer(layer):
            return f"layer {layer} is a dense MLP layer: its neurons take no 'expert' key (got {expert!r})"
        routed = sum(isinstance(b.expert, int) for b in self.layers[layer])
        shared = ' and "shared"' if self.block(layer, SHARED) else ""
        return f"layer {layer} has no expert {expert!r} (routed experts 0..{routed - 1}{shared})"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(",", 1)[0] + ", …"


def space_from_columns(columns: list[list[list[Any]]]) -> NeuronSpace:
    """The space a scores file's ``neuron_columns`` describe."""
    layers = []
    for blocks in columns:
        offset, out = 0, []
        for expert, width in blocks:
            out.append(Block(expert, offset, width))
            offset += width
        layers.append(tuple(out))
    return NeuronSpace(layers, moe=True)


def dense_space(num_layers: int, width: int) -> NeuronSpace:
    return NeuronSpace([(Block(None, 0, width),)] * num_layers, moe=False)


def is_dense_layer(config: Mapping[str, Any], experts: Experts, layer: int) -> bool:
    if experts.first_dense_key is not None and layer < int(config.get(experts.first_dense_key) or 0):
        return True
    if experts.dense_list_key is not None and layer in (config.get(experts.dense_list_key) or []):
        return True
    step = int(config.get(experts.sparse_step_key) or 1) if experts.sparse_step_key else 1
    return step > 1 and (layer + 1) % step != 0


def num_experts(config: Mapping[str, Any], experts: Experts) -> int:
    return _required(config, experts.count_keys, "number of experts")


def expert_width(config: Mapping[str, Any], experts: Experts) -> int:
    return _required(config, experts.width_keys, "expert intermediate size")


def shared_width(config: Mapping[str, Any], experts: Experts) -> int | None:
    if experts.shared_down is None:
        return None
    if experts.shared_width_multiplier_key is not None:
        copies = _first_int(config, (experts.shared_width_multiplier_key,))
        return None if copies is None else copies * expert_width(config, experts)
    return _first_int(config, experts.shared_width_keys)


def moe_layer_blocks(config: Mapping[str, Any], experts: Experts) -> tuple[Block, ...]:
    count, width = num_experts(config, experts), expert_width(config, experts)
    blocks = [Block(e, e * width, width) for e in range(count)]
    shared = shared_width(config, experts)
    if shared:
        blocks.append(Block(SHARED, count * width, shared))
    return tuple(blocks)


def moe_space(config: Mapping[str, Any], experts: Experts, layers: int) -> NeuronSpace:
    moe_blocks = moe_layer_blocks(config, experts)
    dense: tuple[Block, ...] | None = None
    out = []
    for layer in range(layers):
        if is_dense_layer(config, experts, layer):
            dense = dense or (Block(None, 0, _required(config, experts.dense_width_keys, "dense intermediate size")),)
            out.append(dense)
        else:
            out.append(moe_blocks)
    return NeuronSpace(out, moe=True)

