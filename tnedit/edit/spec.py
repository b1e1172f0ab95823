"""What an edit is: which neurons change and by what factor, checked against the model they are for.

An edit ``a_i ← α·a_i`` of neuron i is baked by multiplying the output projection's column i (row i
for GPT-2's Conv1D) by α. :func:`make_edit_spec` is the one place that validates an operation, its
factor and the ``top_k``/``layers`` selection; :func:`check_fingerprint` the one comparison of a neuron
set's model with a checkpoint. Torch-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tnedit.errors import InputError, NeuronSetError
from tnedit.formats.neurons import Neuron, NeuronSet, merge_duplicates, own_factors_text, parse_factor

if TYPE_CHECKING:
    from tnedit.checkpoint import Checkpoint

Op = Literal["zero", "scale"]
Positions = Literal["all", "last", "prompt"]


@dataclass(frozen=True)
class LayerEdit:
    layer: int
    indices: tuple[int, ...]
    factors: tuple[float, ...]


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
        grouped: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for n in self.neurons:
            grouped[n.layer].append((n.index, self.factor_of(n)))
        out = []
        for layer in sorted(grouped):
            pairs = sorted(grouped[layer])
            out.append(LayerEdit(layer, tuple(i for i, _ in pairs), tuple(f for _, f in pairs)))
        return out

    def per_layer_counts(self) -> dict[int, int]:
        return {e.layer: len(e.indices) for e in self.by_layer()}

    def describe(self) -> str:
        own = own_factors_text(self.op, self.factor, (self.factor_of(n) for n in self.neurons))
        if own:
            return f"scale {len(self.neurons)} neurons by {own}"
        if self.op == "zero":
            return f"zero {len(self.neurons)} neurons"
        return f"scale {len(self.neurons)} neurons by {self.factor:g}"


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
            parse_factor(n.factor, f"neuron {n.layer}:{n.index}")
    kept, duplicates = merge_duplicates(neuron_set.neurons)
    if op == "zero":
        kept = [Neuron(n.layer, n.index, n.score, None) if n.factor == 0.0 else n for n in kept]
    return EditSpec(op, value, tuple(kept), tuple(duplicates))  # type: ignore[arg-type]


def check_neuron_range(spec: EditSpec, num_layers: int, width: int, where: str) -> None:
    NeuronSet(list(spec.neurons)).validate_shape(num_layers, width, where)


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
