"""How a neuron set reads in one line: its own factors, what tune measured, where its centroids came from.

For ``inspect``, the model card and the evaluation report; standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tnedit.formats.neurons import DEFAULT_CENTROIDS, Method


def centroids_text(method: Method | None) -> str | None:
    """``"centroids: hidden-states (...)"`` for ``inspect`` when a set's centroids are not the default, else None."""
    if method is None or method.centroids == DEFAULT_CENTROIDS:
        return None
    return f"centroids: {method.centroids} (the last layer's centroid after the final norm)"


def own_factors_text(op: str, factor: float | None, factors: Iterable[float]) -> str | None:
    """``"their own factors (-0.38, -0.21)"`` when the neurons' factors are not all the operation's one, else None.

    A tune set carries a factor per neuron; saying "zeroed" of it would misdescribe the checkpoint.
    """
    expected = 0.0 if op == "zero" else factor
    distinct = sorted({float(f) for f in factors})
    if not distinct or distinct == [expected]:
        return None
    shown = ", ".join(f"{f:g}" for f in distinct[:4]) + (", …" if len(distinct) > 4 else "")
    return f"their own factors ({shown})"


def tune_summary(method: dict[str, Any]) -> str | None:
    """What ``tnedit tune`` measured for a set it chose (``method.extra.tune``), in one line, e.g.
    ``keep en within +10%; calibration ja ×1.096e+05, en ×1.057; validation ja ×8.823e+04, en ×1.076``."""
    tune = (method.get("extra") or {}).get("tune")
    if not isinstance(tune, dict):
        return None

    def ratios(values: Any) -> str:
        shown = (values or {}).items() if isinstance(values, dict) else []
        return ", ".join(f"{lang} ×{v:.4g}" for lang, v in shown if isinstance(v, int | float)) or "–"

    target = method.get("language")
    kept = [lang for lang in method.get("languages") or [] if lang != target]
    bound = (tune.get("settings") or {}).get("max_ppl_increase")
    within = f" within +{bound:.0%}" if isinstance(bound, int | float) else ""
    calibration = tune.get("calibration") or {}
    measured = ratios({target: calibration.get("target_ratio"), **(calibration.get("kept_ratios") or {})})
    return f"keep {','.join(kept)}{within}; calibration {measured}; validation {ratios(tune.get('validation'))}"
