"""What tune writes under ``-o``: the chosen set (``tnedit.neurons/1``), the front as JSON and as a plot.

Each file is written atomically, and only after the search is done, so an interrupted run leaves its
resume state and nothing that could pass as a result.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tnedit.formats.neurons import Method, Neuron, NeuronSet
from tnedit.formats.outputs import atomic_file
from tnedit.identify.outputs import writing
from tnedit.model.loading import LoadedModel, dtype_name
from tnedit.settings import settings_to_dict
from tnedit.tune.front import Point, front_document, plot_front
from tnedit.tune.settings import TuneSettings
from tnedit.versions import __version__


@dataclass
class TuneOutputs:
    neurons: Path
    front: Path
    plot: Path


def output_names(language: str) -> list[str]:
    return [f"neurons-{language}-selective.json", f"front-{language}.json", f"front-{language}.png"]


def search_settings(settings: TuneSettings) -> dict[str, Any]:
    """The settings a neuron set and a front record (the model and the paths are recorded elsewhere)."""
    skipped = {"model", "output", "resume", "data", "device"}
    return {k: v for k, v in settings_to_dict(settings).items() if k not in skipped}


def selective_set(settings: TuneSettings, lm: LoadedModel, chosen: Point, order: Sequence[tuple[int, int]],
                  neuron_type: np.ndarray, data: dict[str, Any]) -> NeuronSet:
    """The chosen point as a neuron set: the first ``prefix`` neurons of the greedy order, with their factors.

    A factor of 0 is left implicit, so ``tnedit apply`` zeroes those neurons with its default ``--op zero``.
    """
    factors = chosen.measurement.factors
    neurons = []
    for layer, index in order[: chosen.measurement.prefix]:
        factor = factors[str(int(neuron_type[layer, index]))]
        neurons.append(Neuron(layer, index, None, None if factor == 0.0 else factor))
    tune = {"settings": search_settings(settings), "chosen": chosen.measurement.label,
            "calibration": {"target_ratio": chosen.target_ratio, "kept_ratios": chosen.kept_ratios},
            "validation": chosen.validation, "factors": dict(factors)}
    method = Method(kind="tune", language=settings.lang, languages=[settings.lang, *settings.kept_languages()],
                    layers=sorted({n.layer for n in neurons}), k=len(neurons), data=data, position="all",
                    dtype=dtype_name(lm.dtype), tokenizer=lm.tokenizer_facts(), seed=settings.seed,
                    tnedit_version=__version__, extra={"tune": tune})
    return NeuronSet(neurons, lm.model_info(), method)


def write_outputs(settings: TuneSettings, neuron_set: NeuronSet, points: Sequence[Point], chosen: Point,
                  front: dict[str, Any], out_dir: Path) -> TuneOutputs:
    """The three files, each written to a temporary sibling first: none is renamed into place unless all
    three were written (the renames follow one another at the end)."""
    paths = [out_dir / name for name in output_names(settings.lang)]
    with writing(out_dir), contextlib.ExitStack() as stack:
        neurons_tmp, front_tmp, plot_tmp = (stack.enter_context(atomic_file(p)) for p in paths)
        neurons_tmp.write_text(neuron_set.to_json(), encoding="utf-8")
        front_tmp.write_text(json.dumps(front, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        plot_front(points, chosen, plot_tmp, target=settings.lang, budget=settings.calibration_budget())
    return TuneOutputs(*paths)


__all__ = ["TuneOutputs", "front_document", "output_names", "selective_set", "write_outputs"]
