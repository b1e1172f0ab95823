"""What an edit is: which neurons change and by what factor, checked against the model they are for.

An edit ``a_i ← α·a_i`` of neuron i is baked by multiplying the output projection's column i (row i
for GPT-2's Conv1D) by α. :func:`make_edit_spec` is the one place that validates an operation, its
factor and the ``top_k``/``layers`` selection; :func:`check_fingerprint` the one comparison of a neuron
set's model with a checkpoint. Torch-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from tnedit.errors import InputError, NeuronSetError
from tnedit.experts import NeuronSpace, expert_label
from tnedit.formats.descriptions import own_factors_text
from tnedit.formats.neurons import ExpertTag, Neuron, NeuronSet, merge_duplicates, parse_factor

if TYPE_CHECKING:
    from tnedit.checkpoint import Checkpoint

Op = Literal["zero", "scale"]
Positions = Literal["all", "last", "prompt"]


@dataclass(frozen=True)
class LayerEdit:
    """The neurons of one output projection to scale: a dense layer's, or one expert's (``expert``)."""

    layer: int
    indices: tuple[int, ...]
    factors: tuple[float, ...]
    expert: ExpertTag = None


@dataclass(frozen=True)
class EditSpec:
    """Which neurons to change and by what factor. Built by :func:`make_edit_spec`."""

    op: Op
    factor: float
    neurons: tuple[Neuron, ...]
    duplicates: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    def factor_of(self, neuron: Neuron) -> float:
        return self.factor if neuron.factor is None else neuron.factor

    def by_layer(self) -> list[LayerEdit]:
        """One edit per output projection, in (layer, expert) order: routed experts, then the shared one."""
        grouped: dict[tuple[int, ExpertTag], list[tuple[int, float]]] = defaultdict(list)
        for n in self.neurons:
            grouped[(n.layer, n.expert)].append((n.index, self.factor_of(n)))
        out = []
        for layer, expert in sorted(grouped, key=_projection_order):
            pairs = sorted(grouped[(layer, expert)])
            out.append(LayerEdit(layer, tuple(i for i, _ in pairs), tuple(f for _, f in pairs), expert))
        return out

    def entries(self) -> list[list[Any]]:
        """Every neuron as provenance records it: ``[layer, index, factor]``, an expert's with the expert appended."""
        return [[n.layer, n.index, self.factor_of(n), *n.key[2:]] for n in self.neurons]

    def per_layer_counts(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for edit in self.by_layer():
            counts[edit.layer] += len(edit.indices)
        return dict(counts)

    def per_expert_counts(self) -> dict[int, dict[str, int]]:
        """``{layer: {"e0": n, "shared": n, "dense": n}}`` for an edit of expert neurons; empty otherwise."""
        if all(n.expert is None for n in self.neurons):
            return {}
        counts: dict[int, dict[str, int]] = defaultdict(dict)
        for edit in self.by_layer():
            counts[edit.layer][expert_label(edit.expert)] = len(edit.indices)
        return dict(counts)

    def describe(self) -> str:
        own = own_factors_text(self.op, self.factor, (self.factor_of(n) for n in self.neurons))
        if own:
            return f"scale {len(self.neurons)} neurons by {own}"
        if self.op == "zero":
            return f"zero {len(self.neurons)} neurons"
        return f"scale {len(self.neurons)} neurons by {self.factor:g}"


def _projection_order(key: tuple[int, ExpertTag]) -> tuple[int, int, int]:
    layer, expert = key
    return (layer, 0, -1) if expert is None else (layer, 1, expert) if isinstance(expert, int) else (layer, 2, 0)


def _factor_for(op: str, factor: Any) -> float:
    if op not in ("zero", "scale"):
        raise InputError(f"--op must be 'zero' or 'scale', got {op!r}")
    if op == "zero":
        if factor is not None and parse_factor(factor, "--factor") != 0.0:
            raise InputError("--op zero takes no --factor (use --op scale --factor F)")
        return 0.0
    if factor is None:
        raise InputError("--op scale needs --factor F (a finite number)")
    return parse_factor(factor, "--factor")


def make_edit_spec(
    neurons: NeuronSet | Sequence[Neuron],
    op: str = "zero",
    factor: Any = None,
    top_k: int | None = None,
    layers: Iterable[int] | None = None,
) -> EditSpec:
    """Validate the operation and factor, keep the first ``top_k`` neurons within ``layers``, merge duplicates."""
    value = _factor_for(op, factor)
    neuron_set = neurons if isinstance(neurons, NeuronSet) else NeuronSet(list(neurons))
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    # --layers first: "--top-k 200 --layers 1-10" means the best 200 within layers 1-10.
    neuron_set = neuron_set.in_layers(layers).top(top_k)
    if not neuron_set.neurons:
        raise InputError("no neurons left to edit (check --layers / --top-k)")
    for n in neuron_set.neurons:  # library callers build Neuron objects without parse_factor
        if n.factor is not None:
            parse_factor(n.factor, f"neuron {n.label}")
    kept, duplicates = merge_duplicates(neuron_set.neurons)
    if op == "zero":
        kept = [replace(n, factor=None) if n.factor == 0.0 else n for n in kept]
    return EditSpec(op, value, tuple(kept), tuple(duplicates))  # type: ignore[arg-type]


def check_neuron_range(spec: EditSpec, space: NeuronSpace, where: str) -> None:
    """One line for the first neuron the model does not have (a layer, an expert or an index out of range)."""
    check_neurons(spec.neurons, space, where)


def check_neurons(neurons: Iterable[Neuron], space: NeuronSpace, where: str) -> None:
    if not space.moe:
        NeuronSet(list(neurons)).validate_shape(space.num_layers, space.width, where)
        return
    for n in neurons:
        space.check(n.layer, n.expert, n.index, where)


def check_fingerprint(ckpt: Checkpoint, neuron_set: NeuronSet | None, where: str, force: bool) -> str | None:
    """Refuse a neuron set made for another model. Returns a warning to show, or None.

    A shape-only fingerprint of tnedit 0.1 that matches by shape is accepted with a warning (it
    cannot tell a same-shaped fine-tune apart); a different one is refused unless ``force``.
    """
    if neuron_set is None or neuron_set.model is None:
        return None
    theirs = neuron_set.model.fingerprint
    status = ckpt.fingerprint_status(theirs)
    if status == "same":
        return None
    if status == "legacy":
        return (
            f"{where}: the neuron set was made by an older tnedit that checked shapes only ({theirs}); it matches "
            f"{ckpt.path} by shape, which cannot tell apart another model of the same shapes (a fine-tune)"
        )
    mine = ckpt.fingerprint()
    message = (
        f"{where}: fingerprint mismatch: the neurons were identified on {neuron_set.model.name_or_path} "
        f"({neuron_set.model.model_type}, {neuron_set.model.num_layers} layers × "
        f"{neuron_set.model.intermediate_size}, {theirs}), but {ckpt.path} is "
        f"{ckpt.model_type}, {ckpt.num_layers} layers × {ckpt.intermediate_size} ({mine})"
    )
    if not force:
        raise NeuronSetError(message + "; pass --force to apply anyway")
    return message
