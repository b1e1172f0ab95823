"""tnedit: find, edit and ship multilingual transfer neurons as ordinary Hugging Face checkpoints.

The curated library API, imported on first use (``import tnedit`` loads nothing heavy)::

    from tnedit import IdentifySettings, run_identify, make_edit_spec, apply_to_checkpoint
"""

from tnedit.exports import lazy_exports
from tnedit.versions import __version__, package_versions

_EXPORTS = {
    "NeuronSet": "tnedit.formats.neurons",
    "load_neurons": "tnedit.formats.neurons",
    "Provenance": "tnedit.formats.provenance",
    "read_provenance": "tnedit.formats.provenance",
    "load_model": "tnedit.model.loading",
    "load_corpus": "tnedit.corpus",
    "open_checkpoint": "tnedit.checkpoint",
    "IdentifySettings": "tnedit.identify.settings",
    "LapeSettings": "tnedit.identify.settings",
    "run_identify": "tnedit.identify.pipeline",
    "run_lape": "tnedit.identify.lape",
    "random_control": "tnedit.identify.controls",
    "make_edit_spec": "tnedit.edit.spec",
    "ApplyOptions": "tnedit.edit.settings",
    "apply_to_checkpoint": "tnedit.edit.bake",
    "revert_checkpoint": "tnedit.edit.revert",
    "apply_to_model": "tnedit.edit.runtime",
    "RuntimeEdit": "tnedit.edit.runtime",
    "EvaluateSettings": "tnedit.evaluate.settings",
    "run_evaluation": "tnedit.evaluate.pipeline",
    "write_report": "tnedit.evaluate.pipeline",
    "TuneSettings": "tnedit.tune.settings",
    "run_tune": "tnedit.tune.pipeline",
    "PushSettings": "tnedit.hub",
    "push_checkpoint": "tnedit.hub",
    "load_recipe": "tnedit.recipes.loading",
    "RecipeRunner": "tnedit.recipes.runner",
    "NullReporter": "tnedit.reporting",
    "TqdmReporter": "tnedit.reporting",
}

__all__ = ["__version__", "package_versions", *sorted(_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
