"""Edit specs and their three realisations: baked into files (streaming), in memory, and as hooks.

- :mod:`tnedit.edit.spec`: ``Op``/``Positions``, :class:`EditSpec`, :func:`make_edit_spec`, :func:`check_fingerprint`;
- :mod:`tnedit.edit.settings`: :class:`ApplySettings` (the ``apply`` verb's fields) and :class:`ApplyOptions`;
- :mod:`tnedit.edit.numeric`: bf16 rounding, :func:`patch_slices`/:func:`restore_slices`, :func:`storage_view`;
- :mod:`tnedit.edit.runtime`: :func:`apply_to_model`, :class:`RuntimeEdit` (hooks), :func:`last_token_mask`;
- :mod:`tnedit.edit.bake`: :func:`apply_to_checkpoint`; :mod:`tnedit.edit.revert`: :func:`revert_checkpoint`.

Names are exported lazily, so importing the package (``tnedit apply --help`` does) loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tnedit.exports import lazy_exports

_EXPORTS = {
    "Op": "spec",
    "Positions": "spec",
    "LayerEdit": "spec",
    "EditSpec": "spec",
    "make_edit_spec": "spec",
    "check_neuron_range": "spec",
    "check_fingerprint": "spec",
    "ApplySettings": "settings",
    "ApplyOptions": "settings",
    "patch_slices": "numeric",
    "restore_slices": "numeric",
    "storage_view": "numeric",
    "apply_to_model": "runtime",
    "EditHandle": "runtime",
    "RuntimeEdit": "runtime",
    "last_token_mask": "runtime",
    "apply_to_checkpoint": "bake",
    "ApplyResult": "bake",
    "SlicePatch": "bake",
    "revert_checkpoint": "revert",
}

__all__ = [
    "ApplyOptions",
    "ApplyResult",
    "ApplySettings",
    "EditHandle",
    "EditSpec",
    "LayerEdit",
    "Op",
    "Positions",
    "RuntimeEdit",
    "SlicePatch",
    "apply_to_checkpoint",
    "apply_to_model",
    "check_fingerprint",
    "check_neuron_range",
    "last_token_mask",
    "make_edit_spec",
    "patch_slices",
    "restore_slices",
    "revert_checkpoint",
    "storage_view",
]

if TYPE_CHECKING:
    from tnedit.edit.bake import ApplyResult, SlicePatch, apply_to_checkpoint
    from tnedit.edit.numeric import patch_slices, restore_slices, storage_view
    from tnedit.edit.revert import revert_checkpoint
    from tnedit.edit.runtime import EditHandle, RuntimeEdit, apply_to_model, last_token_mask
    from tnedit.edit.settings import ApplyOptions, ApplySettings
    from tnedit.edit.spec import (
        EditSpec,
        LayerEdit,
        Op,
        Positions,
        check_fingerprint,
        check_neuron_range,
        make_edit_spec,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
