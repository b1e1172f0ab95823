"""The two passes of identify over last-token states, as running fp64 sums (memory O(layers × width)).

1. :class:`CentroidPass` over the English and L2 sentences of the pairs: per layer, sums of the raw
   decoder-layer outputs ``h`` (hooks, not ``hidden_states``), and per neuron sums and sums of squares of
   the activations ``a`` (for η²); over the English sentences also per neuron the sum of ``|a|`` over
   every real token and the token count (the mean |activation| that marks massive-activation neurons).
   ``C_shared = mean_j (h(e_j) + h(x_j)) / 2`` (Type-1), ``C_L2 = mean_j h(x_j)``
   (Type-2). With ``--centroids hidden-states`` the last layer's ``h`` passes through the model's final
   norm first (:func:`last_layer_norm`): what HF's ``output_hidden_states`` holds there, as the authors read it.
2. :class:`ScorePass` over the L2 sentences: every neuron's score against each centroid
   (:class:`tnedit.identify.scoring.LayerScorer`).

Both are resumable (:class:`tnedit.identify.resume.Pass`): their sums export to and load from tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tnedit.architectures import resolve_module
from tnedit.errors import CorpusError, UnsupportedArchitectureError
from tnedit.formats.neurons import DEFAULT_CENTROIDS
from tnedit.identify.resume import Runner
from tnedit.identify.scoring import LayerScorer
from tnedit.model.capture import LastTokenStates
from tnedit.model.loading import LoadedModel, stat_device
from tnedit.reporting import NullReporter, Reporter


@dataclass
class RunningSums:
    """Per-layer running fp64 sums for one group of sentences: ``h``, and ``a``, ``a²`` when measured
    (last token), and ``abs_a`` (``|a|`` over every real token, ``tokens`` of them) when measured."""

    h: list[torch.Tensor]
    a: list[torch.Tensor] | None
    a2: list[torch.Tensor] | None
    n: int = 0
    abs_a: list[torch.Tensor] | None = None
    tokens: float = 0.0

    def export(self, prefix: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in ("h", "a", "a2", "abs_a"):
            values = getattr(self, name)
            if values is not None:
                out[f"{prefix}/{name}"] = torch.stack([x.cpu() for x in values])
        out[f"{prefix}/n"] = torch.tensor([self.n], dtype=torch.float64)
        if self.abs_a is not None:
            out[f"{prefix}/tokens"] = torch.tensor([self.tokens], dtype=torch.float64)
        return out

    def mean_abs(self) -> np.ndarray | None:
        """Mean |activation| per neuron over every real token, ``[layers, intermediate]``; None if not measured."""
        if self.abs_a is None:
            return None
        return stack(self.abs_a) / max(self.tokens, 1.0)

    def load(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
        if self.abs_a is not None:
            self.tokens = float(tensors[f"{prefix}/tokens"].item())
        for name in ("h", "a", "a2", "abs_a"):
            current = getattr(self, name)
            if current is not None:
                stacked = tensors[f"{prefix}/{name}"]
                setattr(self, name, [stacked[i].to(current[i].device) for i in range(len(current))])
        self.n = int(tensors[f"{prefix}/n"].item())


def stack(values: list[torch.Tensor]) -> np.ndarray:
    """Per-layer tensors as one ``[layers, …]`` array."""
    return torch.stack([x.cpu() for x in values]).numpy()


def _zeros(lm: LoadedModel, layers: Sequence[int], width: int) -> list[torch.Tensor]:
    out = []
    for layer in layers:
        device = stat_device(lm.layer_device(layer))
        out.append(torch.zeros(width, dtype=torch.float64, device=device))
    return out


def _sums(lm: LoadedModel, layers: Sequence[int], with_acts: bool, with_abs: bool = False) -> RunningSums:
    width = lm.intermediate_size
    return RunningSums(_zeros(lm, layers, lm.hidden_size), _zeros(lm, layers, width) if with_acts else None,
                       _zeros(lm, layers, width) if with_acts else None,
                       abs_a=_zeros(lm, layers, width) if with_abs else None)


def final_norm(lm: LoadedModel) -> torch.nn.Module:
    """The norm after the last decoder layer: the registry's ``final_norm``, next to the decoder ModuleList."""
    for path in lm.arch.layer_paths:
        parent_path = path.rpartition(".")[0]
        try:
            if resolve_module(lm.model, path) is not lm.layers:
                continue
            parent = resolve_module(lm.model, parent_path) if parent_path else lm.model
            return resolve_module(parent, lm.arch.final_norm)
        except (AttributeError, IndexError):
            continue
    raise UnsupportedArchitectureError(f"{lm.arch.name}: no final norm '{lm.arch.final_norm}' next to the decoder "
                                       "layers (--centroids hidden-states needs it)")


def last_layer_norm(lm: LoadedModel, centroids: str) -> torch.nn.Module | None:
    """What the last layer's output passes through before it enters a centroid: the final norm for
    ``hidden-states`` (HF's last ``hidden_states`` entry is after it), nothing for ``layer-outputs``."""
    return final_norm(lm) if centroids == "hidden-states" else None


def normed(norm: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``norm(h)`` for last-token states (B, d): the module itself, so Gemma's (1 + w) RMSNorm stays exact."""
    weight = next(norm.parameters(), None)
    with torch.inference_mode():
        return norm(h if weight is None else h.to(weight.device))


class CentroidPass:
    """Sums of h (and of a, a² for η²) over the English sentences (optional) and the L2 sentences, and
    of |a| over every real English token (``with_abs``). ``norm``, when given, is applied to the last
    layer's h before it is summed (``--centroids hidden-states``)."""

    def __init__(self, lm: LoadedModel, language: str, en: Sequence[str] | None, l2: Sequence[str],
                 layers: Sequence[int], en_key: str, with_acts: bool = True, with_abs: bool = True,
                 norm: torch.nn.Module | None = None):
        self.norm = norm
        self.normed_layer = len(lm.layers) - 1
        self.texts = list(en or []) + list(l2)
        self.layers = list(layers)
        self.name = f"{language}:centroids"
        self.language = language
        self.en_key = en_key
        self.n_en_texts = len(en or [])
        with_abs = with_abs and en is not None
        self.want: tuple[str, ...] = ("h", "a") if with_acts else ("h",)
        self.want += ("abs_sum",) if with_abs else ()
        self.en = _sums(lm, layers, with_acts, with_abs) if en is not None else None
        self.l2 = _sums(lm, layers, with_acts)

    def update(self, states: LastTokenStates, rows: Sequence[int]) -> None:
        is_en = torch.tensor([r < self.n_en_texts for r in rows], dtype=torch.float64)
        groups = [(self.l2, 1.0 - is_en)] + ([(self.en, is_en)] if self.en is not None else [])
        for j, layer in enumerate(self.layers):
            h = states.h[layer]
            if self.norm is not None and layer == self.normed_layer:
                h = normed(self.norm, h)
            a = states.a.get(layer)
            for sums, weights in groups:
                device = sums.h[j].device
                w = weights.to(device)
                sums.h[j] += w @ h.to(device, torch.float64)
                if sums.a is not None and sums.a2 is not None and a is not None:
                    acts = a.to(device, torch.float64)
                    sums.a[j] += w @ acts
                    sums.a2[j] += w @ (acts * acts)
                if sums.abs_a is not None:
                    sums.abs_a[j] += w @ states.abs_sum[layer].to(device)
        if self.en is not None and self.en.abs_a is not None and states.tokens is not None:
            self.en.tokens += float(is_en @ states.tokens)
        n_en = int(is_en.sum().item())
        self.l2.n += len(rows) - n_en
        if self.en is not None:
            self.en.n += n_en

    def export(self) -> dict[str, torch.Tensor]:
        out = self.l2.export(f"{self.language}/l2")
        if self.en is not None:
            out.update(self.en.export(f"en@{self.en_key}"))
        return out

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.l2.load(f"{self.language}/l2", tensors)
        if self.en is not None:
            self.en.load(f"en@{self.en_key}", tensors)


class ScorePass:
    """Score sums over the L2 sentences for every layer and every requested type."""

    want = ("r", "a")

    def __init__(self, lm: LoadedModel, language: str, l2: Sequence[str], layers: Sequence[int],
                 centroids: Mapping[int, np.ndarray | torch.Tensor]):
        self.texts = list(l2)
        self.layers = list(layers)
        self.name = f"{language}:scores"
        self.language = language
        self.types = sorted(centroids)
        self.scorers = {
            layer: LayerScorer(lm, layer, {t: torch.as_tensor(np.asarray(centroids[t])[layer]) for t in self.types})
            for layer in layers
        }

    def update(self, states: LastTokenStates, rows: Sequence[int]) -> None:
        for layer, scorer in self.scorers.items():
            scorer.update(states.r[layer], states.a[layer], states.out_scale.get(layer))

    def export(self) -> dict[str, torch.Tensor]:
        out = {
            f"{self.language}/score{t}": torch.stack([s.sums[t].cpu() for s in self.scorers.values()])
            for t in self.types
        }
        counts = {s.count for s in self.scorers.values()}
        out[f"{self.language}/score_n"] = torch.tensor([counts.pop() if counts else 0], dtype=torch.float64)
        return out

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        n = int(tensors[f"{self.language}/score_n"].item())
        for t in self.types:
            stacked = tensors[f"{self.language}/score{t}"]
            for j, scorer in enumerate(self.scorers.values()):
                scorer.sums[t] = stacked[j].to(scorer.device)
        for scorer in self.scorers.values():
            scorer.count = n

    def means(self) -> dict[int, np.ndarray]:
        return {
            t: torch.stack([s.sums[t].cpu() / max(s.count, 1) for s in self.scorers.values()]).numpy()
            for t in self.types
        }


# --- the passes as library functions -------------------------------------------------------------


def compute_centroids(
    lm: LoadedModel,
    en: Sequence[str] | None,
    l2: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    reporter: Reporter | None = None,
    centroids: str = DEFAULT_CENTROIDS,
) -> dict[str, Any]:
    """Per-layer centroids at the last token: ``{"shared": [L, d], "l2": [L, d]}`` (float64).

    ``shared`` (Type-1) needs ``en``, aligned with ``l2``; with ``en=None`` only ``l2`` is returned.
    ``centroids="hidden-states"`` takes the last layer's states after the final norm. No progress bar
    unless a ``reporter`` is given.
    """
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    if en is not None and len(en) != len(l2):
        raise CorpusError(f"{len(en)} English and {len(l2)} L2 sentences: centroids need aligned pairs")
    p = CentroidPass(lm, "l2", en, l2, layers, en_key="en", with_acts=False, with_abs=False,
                     norm=last_layer_norm(lm, centroids))
    Runner(lm, batch_size=batch_size, max_length=max_length, reporter=reporter or NullReporter()).run(p)
    mean_l2 = stack(p.l2.h) / p.l2.n
    out: dict[str, Any] = {"l2": mean_l2, "layers": layers}
    if p.en is not None:
        mean_en = stack(p.en.h) / p.en.n
        out["shared"] = (mean_en + mean_l2) / 2.0
        out["en"] = mean_en
    return out


def score_neurons(
    lm: LoadedModel,
    corpus_rows: Sequence[str],
    centroids: Mapping[int, np.ndarray | torch.Tensor],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    reporter: Reporter | None = None,
) -> dict[int, np.ndarray]:
    """Mean score of every neuron of ``layers`` over the L2 sentences ``corpus_rows``.

    ``centroids`` maps a type (1 or 2) to its per-layer centroid array ``[num_layers, hidden]``.
    Returns ``{type: float64 [num_layers, intermediate]}`` with NaN in layers not scored. No progress
    bar unless a ``reporter`` is given.
    """
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    p = ScorePass(lm, "l2", corpus_rows, layers, centroids)
    Runner(lm, batch_size=batch_size, max_length=max_length, reporter=reporter or NullReporter()).run(p)
    out = {}
    for t, arr in p.means().items():
        full = np.full((lm.num_layers, lm.intermediate_size), np.nan)
        full[layers] = arr
        out[t] = mask_padding(lm, full)
    return out


def mask_padding(lm: LoadedModel, scores: np.ndarray) -> np.ndarray:
    """NaN in the columns past an MoE model's narrower layers (they hold no neuron)."""
    if lm.is_moe:
        for layer, width in enumerate(lm.neuron_space.padding()):
            scores[layer, width:] = np.nan
    return scores
