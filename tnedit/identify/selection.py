"""Selection: rank (layer, neuron) pairs of the candidate layers globally and keep the top k.

identify and ``tnedit select`` rank the same way, from the float32 scores of a scores file, so a
re-ranked file gives identify's own neuron set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnedit.errors import InputError
from tnedit.formats.layers import format_layers, parse_layers
from tnedit.formats.neurons import Method, Neuron, NeuronSet
from tnedit.formats.scores import ScoresFile
from tnedit.identify.outputs import check_output_json, save_neuron_set
from tnedit.identify.settings import SHARED_LANGUAGE, SelectSettings, default_layers
from tnedit.identify.stats import eta2_summary
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.versions import __version__

SCORE_FORMULA = "mean_s[cos(R + a_i v_i, C) - cos(R, C)]"


def select_top(scores: np.ndarray | torch.Tensor, layers: Sequence[int], k: int) -> list[Neuron]:
    """The k best (layer, neuron) pairs of ``layers``, ranked globally by score (descending).

    Ties break by (layer, index) ascending; NaN scores rank last. ``k`` larger than the number of
    candidates returns all of them (callers warn).
    """
    arr = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    layers = list(layers)
    sub = arr[layers].astype(np.float64)
    flat = np.where(np.isnan(sub), -np.inf, sub).ravel()
    k = min(int(k), flat.size)
    if k <= 0:
        return []
    order = np.argsort(-flat, kind="stable")[:k]
    m = sub.shape[1]
    return [Neuron(layers[i // m], int(i % m), score=float(flat[i])) for i in order]


def cap_k(k: int, n_candidates: int, what: str, reporter: Reporter) -> int:
    """``k`` itself, or every candidate (with a warning) when there are fewer than ``k``."""
    if k < 1:
        raise InputError(f"--k must be at least 1, got {k}")
    if k > n_candidates:
        reporter.warn(f"--k {k} exceeds the {n_candidates} candidate neurons of {what}; keeping all {n_candidates}")
        return n_candidates
    return k


def select_from_scores(
    scores: ScoresFile,
    neuron_type: int,
    k: int,
    layers: str | Sequence[int] | None = None,
    *,
    reporter: Reporter | None = None,
) -> NeuronSet:
    """Re-rank a scores file into a neuron set (no forward pass). Same ranking as identify's."""
    reporter = resolve_reporter(reporter)
    if neuron_type not in scores.scores:
        have = ", ".join(f"type{t}" for t in sorted(scores.scores))
        where = scores.path or "scores"
        raise InputError(f"{where}: no scores for type {neuron_type} (key 'type{neuron_type}'; the file has {have})")
    num_layers = scores.scores[neuron_type].shape[0]
    candidates = parse_layers(layers, num_layers)
    if candidates is None:
        candidates = scores.candidate_layers.get(neuron_type) or default_layers(neuron_type, num_layers)
    scores32 = scores.scores[neuron_type].astype(np.float32)
    n_candidates = len(candidates) * scores32.shape[1]
    k_kept = cap_k(k, n_candidates, f"type {neuron_type} in layers {format_layers(candidates)}", reporter)
    neurons = select_top(scores32, candidates, k_kept)
    extra: dict[str, Any] = {
        "centroid": "shared (en+L2)/2" if neuron_type == 1 else "L2",
        "n_candidates": n_candidates,
        "score": SCORE_FORMULA,
    }
    if scores.eta2 is not None and scores.n_en and scores.n_l2:
        extra.update(eta2_summary(neurons, scores.eta2, scores.n_en + scores.n_l2))
    method = _transfer_method(scores, neuron_type, candidates, len(neurons), extra)
    return NeuronSet(neurons=neurons, model=scores.model, method=method)


def _transfer_method(scores: ScoresFile, neuron_type: int, layers: list[int], k: int,
                     extra: dict[str, Any]) -> Method:
    base = dict(scores.method)
    return Method(
        kind="transfer",
        type=neuron_type,
        language=scores.language,
        languages=[SHARED_LANGUAGE, scores.language],
        layers=list(layers),
        k=k,
        data=base.get("data", {}),
        position="last",
        dtype=base.get("dtype"),
        tokenizer=base.get("tokenizer", {}),
        seed=None,
        tnedit_version=__version__,
        extra={**base.get("extra", {}), **extra},
    )


# --- tnedit select -------------------------------------------------------------------------------


@dataclass
class SelectResult:
    neurons: NeuronSet
    path: Path
    language: str
    type: int


def default_select_path(scores_path: str | os.PathLike[str], language: str, neuron_type: int, k: int) -> Path:
    return Path(scores_path).with_name(f"neurons-{language}-type{neuron_type}-k{k}.json")


def run_select(settings: SelectSettings, *, reporter: Reporter | None = None) -> SelectResult:
    """Re-rank ``settings.scores`` and write the neuron set (``-o``, else next to the scores file)."""
    if settings.output is not None:  # before reading: a refused output costs nothing
        check_output_json(settings.output, overwrite=settings.overwrite, inputs=[settings.scores])
    scores = ScoresFile.load(settings.scores)
    neuron_type = int(settings.type)
    neurons = select_from_scores(scores, neuron_type, settings.k, settings.layers, reporter=reporter)
    if settings.output is not None:
        out = Path(settings.output)
    else:
        out = default_select_path(settings.scores, scores.language, neuron_type, len(neurons))
        check_output_json(out, overwrite=settings.overwrite, inputs=[settings.scores])
    save_neuron_set(neurons, out)
    return SelectResult(neurons, out, scores.language, neuron_type)
