"""Which tensor of a checkpoint holds each output projection, and which slice of it holds one expert's neurons.

Streaming patches see every tensor as its 2-D view ``[prod(shape[:-1]), shape[-1]]``; a neuron is a column
(``axis`` 1) or a row (``axis`` 0) of it. A dense layer's projection, a shared expert's and a per-expert
checkpoint's routed expert are whole 2-D weights. Fused checkpoints keep a layer's routed experts in one
3-D tensor, and one expert owns a *slab* of rows of its view (docs/MOE.md §4):

* ``[E, H, I]`` (the five non-gpt-oss types saved with ``save_original_format=False``): view ``[E·H, I]``;
  neuron ``(e, i)`` is column ``i`` of rows ``e·H … (e+1)·H−1``.
* ``[E, I, H]`` (gpt-oss): view ``[E·I, H]``; neuron ``(e, i)`` is row ``e·I + i``.

Which form a layer uses is read from its keys, never from the model type. Quantized expert storage
(gpt-oss MXFP4 blocks, DeepSeek FP8 with block scales) is refused here with a line that names it.
Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnedit.architectures import Architecture, architecture_for_config, neuron_axis, out_proj_key
from tnedit.errors import CheckpointError, UnsupportedArchitectureError
from tnedit.experts import SHARED, ExpertTag, NeuronSpace

Rows = tuple[int, int]  # [first, end) rows of a tensor's 2-D view

# What each quantization method stores experts as, for the refusal message.
EXPERT_QUANT = {
    "mxfp4": "experts.down_proj_blocks/_scales",
    "fp8": "F8_E4M3 weights with weight_scale_inv block scales",
}
FP8_DTYPES = {"F8_E4M3", "F8_E5M2"}
_UNSUPPORTED = "is not supported yet; use a bf16 checkpoint"


@dataclass(frozen=True)
class Target:
    """Where one projection's neurons lie: a tensor, the neuron axis of its 2-D view and, for one expert
    of a fused tensor, its slab of rows (column i within them for axis 1, row ``rows[0] + i`` for axis 0)."""

    name: str
    axis: int
    rows: Rows | None = None


@dataclass(frozen=True)
class Projection:
    """A tensor that holds output projections, with the shape config.json implies.

    ``slab`` is the number of view rows each expert owns in a fused tensor (H, or I when transposed);
    None for a 2-D weight, which holds one projection.
    """

    name: str
    shape: tuple[int, ...]
    axis: int
    slab: int | None = None

    def target(self, expert: ExpertTag) -> Target:
        if self.slab is None:
            return Target(self.name, self.axis)
        e = int(expert)  # type: ignore[arg-type]
        return Target(self.name, self.axis, (e * self.slab, (e + 1) * self.slab))


ProjectionMap = dict[tuple[int, ExpertTag], Projection]


def view_shape(shape: Iterable[int]) -> tuple[int, int]:
    """The 2-D view every patch works on: all leading axes flattened into rows."""
    dims = tuple(shape)
    return math.prod(dims[:-1]), dims[-1]


def dense_projections(prefix: str, arch: Architecture, layers: int, hidden: int, width: int) -> ProjectionMap:
    shape = (hidden, width) if arch.layout == "linear" else (width, hidden)
    axis = neuron_axis(arch)
    return {(layer, None): Projection(out_proj_key(prefix, layer, arch), shape, axis) for layer in range(layers)}


def moe_projections(keys: Container[str], prefix: str, arch: Architecture, space: NeuronSpace, hidden: int,
                    where: Path | str) -> ProjectionMap:
    """Every (layer, expert) projection of a mixture-of-experts checkpoint, each layer's expert layout from its keys."""
    spec = arch.experts
    assert spec is not None
    out: ProjectionMap = {}
    for layer in range(space.num_layers):
        base = f"{prefix}.{layer}."
        routed = [b for b in space.blocks(layer) if isinstance(b.expert, int)]
        for block in space.blocks(layer):
            if block.expert is None:
                out[(layer, None)] = Projection(base + arch.out_proj_weight, (hidden, block.width), 1)
            elif block.expert == SHARED:
                out[(layer, SHARED)] = Projection(f"{base}{spec.shared_down}.weight", (hidden, block.width), 1)
        if routed:
            out.update(_routed_projections(keys, base, arch, layer, len(routed), routed[0].width, hidden, where))
    return out


def _routed_projections(keys: Container[str], base: str, arch: Architecture, layer: int, count: int, width: int,
                        hidden: int, where: Path | str) -> ProjectionMap:
    spec = arch.experts
    assert spec is not None
    fused = base + spec.fused_down
    first = base + spec.per_expert_down.format(expert=0) if spec.per_expert_down else None
    if fused in keys and first is not None and first in keys:
        raise CheckpointError(f"{where}: layer {layer} holds both per-expert '{first}' and fused '{fused}'; "
                              "expected one expert layout")
    if fused in keys:
        shape = (count, width, hidden) if spec.transposed else (count, hidden, width)
        projection = Projection(fused, shape, 0 if spec.transposed else 1, width if spec.transposed else hidden)
        return {(layer, e): projection for e in range(count)}
    if first is not None and first in keys:
        return {(layer, e): Projection(base + str(spec.per_expert_down).format(expert=e), (hidden, width), 1)
                for e in range(count)}
    looked = f"'{first}' or '{fused}'" if first else f"'{fused}'"
    raise CheckpointError(f"{where}: tensor {looked} is missing (config says layer {layer} has {count} experts)")


def _is_moe(config: Mapping[str, Any]) -> bool:
    try:
        return architecture_for_config(config).experts is not None
    except UnsupportedArchitectureError:
        return False


def expert_quantization_error(path: Path, config: Mapping[str, Any], method: Any) -> None:
    """The refusal of a mixture-of-experts checkpoint whose config declares MXFP4 or FP8 experts."""
    if isinstance(method, str) and method in EXPERT_QUANT and _is_moe(config):
        raise CheckpointError(
            f"{path}: quantized expert storage ({method}: {EXPERT_QUANT[method]}) {_UNSUPPORTED}"
        )


def expert_storage_error(path: Path, tensors: Mapping[str, Any]) -> None:
    """Refuse quantized expert tensors found by their keys (``tensors``: name → TensorInfo), config or not."""
    for name in sorted(tensors):
        if name.endswith("_blocks") and f"{name[: -len('_blocks')]}_scales" in tensors:
            raise CheckpointError(
                f"{path}: quantized expert storage (mxfp4: '{name}' with its '_scales') {_UNSUPPORTED}"
            )
        if name.endswith("weight_scale_inv"):
            raise CheckpointError(f"{path}: quantized expert storage (fp8: '{name}') {_UNSUPPORTED}")
        if tensors[name].dtype in FP8_DTYPES:
            raise CheckpointError(
                f"{path}: quantized expert storage (fp8: '{name}' is {tensors[name].dtype}) {_UNSUPPORTED}"
            )
