"""Selection: rank (layer, neuron) pairs of the candidate layers globally and keep the top k.

identify and ``tnedit select`` rank the same way, from the float32 scores of a scores file, so a
re-ranked file gives identify's own neuron set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnedit.errors import InputError
from tnedit.experts import NeuronSpace, space_from_columns
from tnedit.formats.layers import format_layers, parse_layers
from tnedit.formats.neurons import CENTROID_SOURCES, DEFAULT_CENTROIDS, Method, Neuron, NeuronSet
from tnedit.formats.scores import MEAN_ABS, ScoresFile
from tnedit.identify.outputs import check_output_json, save_neuron_set
from tnedit.identify.settings import SHARED_LANGUAGE, SelectSettings, check_exclude_massive, default_layers
from tnedit.identify.stats import eta2_summary
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.versions import __version__

SCORE_FORMULA = "mean_s[cos(R + a_i v_i, C) - cos(R, C)]"
MASSIVE_QUANTILE = 0.01  # neuron sets mark their neurons in the model's top 1 % of mean |activation|


def massive_neurons(mean_abs: np.ndarray, quantile: float) -> tuple[np.ndarray, float | None]:
    """(mask, threshold): the ``ceil(quantile · N)`` of all N neurons with the largest mean |activation|.

    Ranked on the float32 values a scores file stores (so identify and ``select`` agree), ties by
    (layer, index) ascending; ``threshold`` is the smallest value in the mask (None when it is empty).
    """
    values = np.asarray(mean_abs, dtype=np.float32).astype(np.float64)
    flat = values.ravel()
    count = min(flat.size, math.ceil(quantile * flat.size - 1e-9)) if quantile > 0 else 0
    order = np.argsort(-flat, kind="stable")[:count]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(values.shape), (float(flat[order[-1]]) if count else None)


def _massive_extra(scores: ScoresFile, neurons: Sequence[Neuron], exclude: float,
                   excluded: np.ndarray | None, candidates: Sequence[int]) -> dict[str, Any]:
    """The method extras of the massive-activation marking (and of ``--exclude-massive``)."""
    if scores.mean_abs_activation is None:
        return {}
    marked, threshold = massive_neurons(scores.mean_abs_activation, MASSIVE_QUANTILE)
    extra: dict[str, Any] = {"massive": {
        "language": SHARED_LANGUAGE, "quantile": MASSIVE_QUANTILE, "threshold": threshold,
        "neurons": [[n.layer, n.index] for n in neurons if marked[n.layer, n.index]],
    }}
    if excluded is not None:
        _, cut = massive_neurons(scores.mean_abs_activation, exclude)
        extra["exclude_massive"] = {"quantile": exclude, "threshold": cut, "count": int(excluded.sum()),
                                    "in_candidates": int(excluded[list(candidates)].sum())}
    return extra


def _exclusion(scores: ScoresFile, exclude: float) -> np.ndarray | None:
    """The mask of ``--exclude-massive`` (None when off); a scores file without the activations is refused."""
    check_exclude_massive(exclude)
    if not exclude:
        return None
    if scores.mean_abs_activation is None:
        where = scores.path or "scores"
        raise InputError(f"{where}: --exclude-massive needs the tensor '{MEAN_ABS}', which this scores file lacks; "
                         "rerun tnedit identify to write it")
    return massive_neurons(scores.mean_abs_activation, exclude)[0]


def select_top(scores: np.ndarray | torch.Tensor, layers: Sequence[int], k: int,
               excluded: np.ndarray | None = None) -> list[Neuron]:
    """The k best (layer, neuron) pairs of ``layers``, ranked globally by score (descending).

    Ties break by (layer, index) ascending; NaN scores rank last. ``excluded`` (a boolean
    ``[layers, intermediate]`` mask) removes neurons from the candidates. ``k`` larger than the number
    of candidates returns all of them (callers warn).
    """
    arr = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    layers = list(layers)
    sub = arr[layers].astype(np.float64)
    flat = np.where(np.isnan(sub), -np.inf, sub).ravel()
    allowed = np.arange(flat.size) if excluded is None else np.flatnonzero(~np.asarray(excluded)[layers].ravel())
    k = min(int(k), allowed.size)
    if k <= 0:
        return []
    order = allowed[np.argsort(-flat[allowed], kind="stable")[:k]]
    m = sub.shape[1]
    return [Neuron(layers[i // m], int(i % m), score=float(flat[i])) for i in order]


def padding_mask(space: NeuronSpace, width: int) -> np.ndarray:
    """``[layers, width]``, True past each layer's neurons (an MoE model's narrower layers)."""
    return np.arange(width)[None, :] >= np.asarray(space.padding())[:, None]


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
    exclude_massive: float = 0.0,
    reporter: Reporter | None = None,
) -> NeuronSet:
    """Re-rank a scores file into a neuron set (no forward pass). Same ranking as identify's.

    ``exclude_massive`` Q > 0 removes the top-Q fraction of all the model's neurons by mean |activation|
    (the scores file's ``mean_abs_activation``) from the candidates first.
    """
    reporter = resolve_reporter(reporter)
    excluded = _exclusion(scores, exclude_massive)
    if neuron_type not in scores.scores:
        have = ", ".join(f"type{t}" for t in sorted(scores.scores))
        where = scores.path or "scores"
        raise InputError(f"{where}: no scores for type {neuron_type} (key 'type{neuron_type}'; the file has {have})")
    num_layers = scores.scores[neuron_type].shape[0]
    candidates = parse_layers(layers, num_layers)
    if candidates is None:
        candidates = scores.candidate_layers.get(neuron_type) or default_layers(neuron_type, num_layers)
    scores32 = scores.scores[neuron_type].astype(np.float32)
    space = space_from_columns(scores.neuron_columns) if scores.neuron_columns is not None else None
    if space is not None:  # an MoE model's padding columns hold no neuron
        excluded = padding_mask(space, scores32.shape[1]) | (False if excluded is None else excluded)
    n_candidates = len(candidates) * scores32.shape[1]
    if excluded is not None:
        n_candidates -= int(excluded[candidates].sum())
    k_kept = cap_k(k, n_candidates, f"type {neuron_type} in layers {format_layers(candidates)}", reporter)
    neurons = select_top(scores32, candidates, k_kept, excluded)
    extra: dict[str, Any] = {
        "centroid": "shared (en+L2)/2" if neuron_type == 1 else "L2",
        "n_candidates": n_candidates,
        "score": SCORE_FORMULA,
    }
    if scores.eta2 is not None and scores.n_en and scores.n_l2:
        extra.update(eta2_summary(neurons, scores.eta2, scores.n_en + scores.n_l2))
    extra.update(_massive_extra(scores, neurons, exclude_massive, excluded, candidates))
    if space is not None:  # columns to (layer, expert, index)
        neurons = [space.neuron(n.layer, n.index, n.score) for n in neurons]
        if "massive" in extra:
            extra["massive"]["neurons"] = [list(space.neuron(*pair).key) for pair in extra["massive"]["neurons"]]
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
        centroids=_centroids(scores),
    )


def _centroids(scores: ScoresFile) -> str:
    """The centroid source the scores were made with; a scores file without the key predates the choice."""
    value = scores.method.get("centroids", DEFAULT_CENTROIDS)
    if value not in CENTROID_SOURCES:
        raise InputError(f"{scores.path or 'scores'}: metadata key 'method' has centroids {value!r}; "
                         f"expected {' or '.join(CENTROID_SOURCES)}")
    return str(value)


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
    check_exclude_massive(settings.exclude_massive)
    if settings.output is not None:  # before reading: a refused output costs nothing
        check_output_json(settings.output, overwrite=settings.overwrite, inputs=[settings.scores])
    scores = ScoresFile.load(settings.scores)
    neuron_type = int(settings.type)
    neurons = select_from_scores(scores, neuron_type, settings.k, settings.layers,
                                 exclude_massive=settings.exclude_massive, reporter=reporter)
    if settings.output is not None:
        out = Path(settings.output)
    else:
        out = default_select_path(settings.scores, scores.language, neuron_type, len(neurons))
        check_output_json(out, overwrite=settings.overwrite, inputs=[settings.scores])
    save_neuron_set(neurons, out)
    return SelectResult(neurons, out, scores.language, neuron_type)
