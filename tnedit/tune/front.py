"""The sets tune measured, as perplexity ratios: the Pareto front, the choice, its JSON file and plot.

A point's target damage is its calibration perplexity ratio on the language to break; its kept damage
the worst ratio over the kept languages. The front holds the points no other point beats on both.
The choice is the point of most target damage within the calibration budget whose kept damage also
stays within the validation budget on the held-out split (:func:`choose`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnedit.errors import TuneError
from tnedit.tune.search import Measurement

FRONT_FORMAT = "tnedit.tune-front/1"
MAX_VALIDATIONS = 4  # the best calibration points checked on the validation split, in order


@dataclass
class Point:
    """One measured set, as perplexity ratios against the unedited model."""

    measurement: Measurement
    target_ratio: float
    kept_ratios: dict[str, float]
    feasible: bool  # within the calibration budget
    validation: dict[str, float] | None = None  # ratios on the validation split, when checked
    on_front: bool = False

    @property
    def worst_kept(self) -> float:
        return max(self.kept_ratios.values())

    def to_dict(self) -> dict[str, Any]:
        return {**self.measurement.to_dict(), "target_ratio": self.target_ratio, "kept_ratios": self.kept_ratios,
                "worst_kept_ratio": self.worst_kept, "feasible": self.feasible, "on_front": self.on_front,
                "validation": self.validation}


def to_points(measurements: Sequence[Measurement], base: dict[str, float], target: str, kept: Sequence[str],
              budget: float) -> list[Point]:
    """Ratios of every measurement; ``budget`` is the calibration perplexity rise allowed (0.07 = 7 %)."""
    points = []
    for m in measurements:
        ratios = {lang: math.exp(m.losses[lang] - base[lang]) for lang in [target, *kept]}
        kept_ratios = {lang: ratios[lang] for lang in kept}
        points.append(Point(m, ratios[target], kept_ratios, max(kept_ratios.values()) - 1.0 <= budget + 1e-12))
    _mark_front(points)
    return points


def _mark_front(points: list[Point]) -> None:
    for p in points:
        p.on_front = not any(
            q.target_ratio >= p.target_ratio and q.worst_kept <= p.worst_kept
            and (q.target_ratio > p.target_ratio or q.worst_kept < p.worst_kept) for q in points)


def choose(points: list[Point], validate: Callable[[Measurement], dict[str, float]], validation_budget: float) -> Point:
    """The feasible point of most target damage that also keeps the kept languages within budget on validation."""
    ranked = sorted((p for p in points if p.feasible and p.measurement.prefix > 0),
                    key=lambda p: (-p.target_ratio, p.measurement.prefix, p.measurement.label))
    for point in ranked[:MAX_VALIDATIONS]:
        point.validation = validate(point.measurement)
        if _worst_kept(point) - 1.0 <= validation_budget:
            return point
    tried = ", ".join(f"{p.measurement.label} (kept ×{_worst_kept(p):.3f})" for p in ranked[:MAX_VALIDATIONS]
                      if p.validation) or "none within the calibration budget"
    raise TuneError(f"tune: no set stays within +{validation_budget:.1%} on the validation split; tried {tried}. "
                    "Raise --max-ppl-increase or --calibration (more sentences generalise better)")


def _worst_kept(point: Point) -> float:
    """The worst kept language's perplexity ratio on the validation split."""
    return max(v for lang, v in (point.validation or {}).items() if lang in point.kept_ratios)


def front_document(points: Sequence[Point], chosen: Point, *, target: str, kept: Sequence[str],
                   base_perplexity: dict[str, float], order: Sequence[tuple[int, int]],
                   settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON of the front file: every point tried (flags say which are on the front), the greedy order
    (a point's set is the first ``prefix`` neurons of it) and the choice."""
    return {
        "format": FRONT_FORMAT,
        "target": target,
        "kept": list(kept),
        "base_perplexity": dict(base_perplexity),
        "settings": settings,
        "order": [list(n) for n in order],
        "chosen": chosen.measurement.label,
        "points": [p.to_dict() for p in points],
    }


def plot_front(points: Sequence[Point], chosen: Point, path: Path, *, target: str, budget: float) -> None:
    """Target damage against worst kept damage, on log axes, with the front, the budget and the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for stage, marker in (("greedy", "o"), ("trial", "^")):
        chosen_stage = [p for p in points if p.measurement.stage == stage]
        ax.scatter([p.worst_kept for p in chosen_stage], [p.target_ratio for p in chosen_stage], marker=marker,
                   alpha=0.6, label=f"{stage} ({len(chosen_stage)})")
    front = sorted((p for p in points if p.on_front), key=lambda p: p.worst_kept)
    ax.plot([p.worst_kept for p in front], [p.target_ratio for p in front], color="black", lw=1, label="Pareto front")
    ax.axvline(1.0 + budget, color="red", ls="--", lw=1, label=f"calibration budget +{budget:.0%}")
    ax.scatter([chosen.worst_kept], [chosen.target_ratio], s=160, facecolors="none", edgecolors="red", lw=2,
               label=f"chosen ({chosen.measurement.prefix} neurons)")
    ax.set_yscale("log")
    ax.set_xlabel("worst kept-language perplexity ratio (calibration)")
    ax.set_ylabel(f"{target} perplexity ratio (calibration)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name without the suffix
    plt.close(fig)
