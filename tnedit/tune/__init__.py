"""``tnedit tune``: language-selective neuron edits with a measured bound on the languages kept.

``settings`` (:class:`TuneSettings`), ``data`` (the calibration/validation split), ``probe`` (masked
forward passes and attribution), ``search`` (the measured greedy path), ``refine`` (Optuna trials),
``front`` (the Pareto front and the choice), ``state`` (resume), ``outputs`` and ``pipeline``
(:func:`run_tune`). Exported lazily, so ``tnedit tune --help`` stays torch-free.
"""

from __future__ import annotations

from tnedit.exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "TuneSettings": "settings",
    "TuneResult": "pipeline",
    "run_tune": "pipeline",
    "Probe": "probe",
    "load_tune_data": "data",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
