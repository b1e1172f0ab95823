"""Finding transfer neurons (Tezuka & Inoue, EMNLP 2025), LAPE, random controls and overlap.

One concern per module: ``settings`` (the typed settings and their parsing), ``plan`` (the settings
resolved once), ``scoring`` (the closed-form score and its brute-force reference), ``passes`` (running
fp64 sums), ``resume`` (the runner and the on-disk resume state), ``selection`` (top k, ``select``),
``pipeline`` (:func:`run_identify`), ``controls`` (random controls, ``compare``), ``lape`` and
``stats`` (η²). The public names below are imported lazily, so ``import tnedit.identify.settings``
(what the CLI needs for ``--help``) stays torch-free.
"""

from __future__ import annotations

from tnedit.exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "PassSettings": "settings",
    "IdentifySettings": "settings",
    "LapeSettings": "settings",
    "SelectSettings": "settings",
    "lape_settings": "settings",
    "IdentifyPlan": "plan",
    "resolve_plan": "plan",
    "Corpus": "plan",
    "run_identify": "pipeline",
    "IdentifyResult": "pipeline",
    "LanguageStats": "pipeline",
    "run_lape": "lape",
    "run_select": "selection",
    "select_from_scores": "selection",
    "select_top": "selection",
    "random_control": "controls",
    "run_random_control": "controls",
    "model_shape": "controls",
    "compare": "controls",
    "Comparison": "controls",
    "with_k": "controls",
    "compute_centroids": "passes",
    "score_neurons": "passes",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
