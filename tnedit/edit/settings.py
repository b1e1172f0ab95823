"""The settings of ``tnedit apply``, declared once: the CLI options are generated from these fields.

:class:`ApplySettings` holds what the user chooses (the neurons, the operation, which of them, how OUT
is written); :meth:`ApplySettings.edit_spec` turns it and a loaded neuron set into the validated
:class:`~tnedit.edit.spec.EditSpec` (:func:`~tnedit.edit.spec.make_edit_spec` is the one place that
checks an operation, its factor and the selection), :meth:`ApplySettings.options` into the
:class:`ApplyOptions` that :func:`~tnedit.edit.bake.apply_to_checkpoint` takes. Torch-free and light:
``tnedit apply --help`` imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tnedit.edit.spec import EditSpec, Op, make_edit_spec
from tnedit.formats.layers import parse_layers
from tnedit.formats.neurons import NeuronSet
from tnedit.settings import setting

# One wording for the switch apply, revert, evaluate and push share.
NO_CACHE_HELP = (
    "Hash every weight file: neither read nor write the digest cache ($TNEDIT_CACHE_DIR, else "
    "$XDG_CACHE_HOME/tnedit or ~/.cache/tnedit) that spares unchanged local files a second hashing."
)


@dataclass(frozen=True)
class ApplyOptions:
    """How apply reads the source and writes OUT, and what it records.

    ``inputs`` are paths OUT may neither be nor hold (besides the source and the neurons file);
    ``command`` is recorded in ``tnedit.json``; ``no_cache`` hashes every source file instead of
    trusting the digest cache (:mod:`tnedit.checkpoint.digests`), which is then neither read nor written.
    """

    revision: str | None = None
    overwrite: bool = False
    force: bool = False
    link: bool = False
    command: str | None = None
    inputs: tuple[str | Path, ...] = ()
    no_cache: bool = False


@dataclass
class ApplySettings:
    """One edit baked into a checkpoint (``tnedit apply``; a recipe's edit step adds its name to it)."""

    model: str = setting("", cli=False, recipe=False, help="A local checkpoint directory or a Hub id.")
    out: str | None = setting(None, cli=False, recipe=False, help="Output checkpoint directory.")
    neurons: str | None = setting(None, help='Neurons: a neurons file, or inline "LAYER:INDEX[:FACTOR],...".')
    op: Op = setting("zero", help="What to do to each neuron.", show_default=True)
    factor: float | str | None = setting(
        None, help="Scale factor for --op scale (per-neuron factors in the file override it)."
    )
    top_k: int | None = setting(None, help="Keep only the first K neurons within --layers of the (ranked) set.")
    layers: str | list[int] | None = setting(
        None, help="Keep only neurons in these layers (before --top-k picks the first K): 0-11, 0,3,5-7 or 0.0:0.5."
    )
    revision: str | None = setting(None, recipe=False, help="Hub revision (branch, tag or commit) of MODEL.")
    overwrite: bool = setting(False, recipe=False, help="Replace OUT if it exists.")
    force: bool = setting(False, recipe=False, help="Apply even if the neuron set was made for another model.")
    link: bool = setting(False, recipe=False, help="Hardlink untouched weight files instead of copying them.")
    no_cache: bool = setting(False, recipe=False, help=NO_CACHE_HELP)

    def layer_list(self, neuron_set: NeuronSet) -> list[int] | None:
        """``layers`` as layer numbers (fractions need the neuron set's layer count); None keeps every layer."""
        if self.layers is None:
            return None
        return parse_layers(self.layers, neuron_set.model.num_layers if neuron_set.model else None)

    def edit_spec(self, neuron_set: NeuronSet) -> EditSpec:
        """The validated edit of ``neuron_set``: the operation, its factor, the first ``top_k`` within ``layers``."""
        return make_edit_spec(neuron_set, self.op, self.factor, top_k=self.top_k, layers=self.layer_list(neuron_set))

    def options(self, command: str | None = None, inputs: Iterable[str | Path] = ()) -> ApplyOptions:
        return ApplyOptions(self.revision, self.overwrite, self.force, self.link, command, tuple(inputs),
                            no_cache=self.no_cache)
