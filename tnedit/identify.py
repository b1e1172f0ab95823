"""Finding transfer neurons (Tezuka & Inoue, EMNLP 2025), plus random controls and overlap.

The pipeline for one target language L2 (English is the shared language), all at the last token:

1. **Centroid pass** over the English and L2 sentences of the parallel pairs: per layer, fp64 sums
   of the raw decoder-layer outputs ``h`` (hooks, not ``hidden_states``), and per-neuron sums and
   sums of squares of the activations ``a`` (for the η² language-specificity statistic).
   ``C_shared = mean_j (h(e_j) + h(x_j)) / 2`` (Type-1) and ``C_L2 = mean_j h(x_j)`` (Type-2).
2. **Score pass** over the L2 sentences: per layer the pre-MLP residual ``R``, the activations ``a``
   and, for Gemma 2/3, the output-norm scale ``s``; per neuron
   ``score_i = mean_s [cos(R + c_i, C) - cos(R, C)]`` with ``c_i = a_i (s ⊙ v_i)`` computed through
   the identity ``cos(R + a v, C) = (p + a q) / (|C| sqrt(|R|² + 2 a r + a² n))`` — one
   (batch × d) @ (d × m) product per layer instead of a d × m matrix per sentence.
3. **Selection**: rank (layer, neuron) pairs of the candidate layers globally, keep the top k.

Scores are computed for every layer (it costs one extra last-token product per layer), so
``select`` can re-rank any layers later without a forward pass. All statistics are running fp64
sums: memory is O(layers × intermediate) whatever the number of sentences.

The library knows no command line; :mod:`tnedit.cli.identify` is the thin CLI shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnedit import __version__
from tnedit.model.batching import encode_batches, encode_texts, num_batches
from tnedit.model.capture import LastTokenCapture, LastTokenStates
from tnedit.model.loading import LoadedModel, dtype_name, load_model, resolve_max_length, stat_device
from tnedit.reporting import NullReporter, TqdmReporter
from tnedit.errors import CorpusError, InputError, NeuronSetError, TneditWarning
from tnedit.formats.neurons import (
    Method,
    ModelInfo,
    Neuron,
    NeuronFormatError,
    NeuronSet,
    format_layers,
    load_neurons,
    round_half_up,
)
from tnedit.formats.neurons import parse_layers as neurons_parse_layers
from tnedit.formats.outputs import COMPLETED, atomic_file, check_output_file, contained_name, is_within, require_writable
from tnedit.stats import eta2_summary, eta_squared_from_sums

TYPE1_FRACTION = 0.625
SHARED_LANGUAGE = "en"
SCORES_FORMAT = "tnedit.scores/1"
CHECKPOINT_DIR = ".identify-checkpoint"

BatchCallback = Callable[[str, int, int], None]  # (pass name, batches done, batches total)


class IdentifyWarning(TneditWarning):
    """A recoverable oddity (k capped, resume without a checkpoint ...)."""


# --- settings and results ------------------------------------------------------------------------


@dataclass
class PassSettings:
    """What every pass over a model and a corpus needs: identify and LAPE share these."""

    model: str
    langs: Sequence[str] = ()
    data: str | None = None
    layers: str | Sequence[int] | None = None
    batch_size: int = 16
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    max_length: int | None = None
    limit: int | None = None
    quiet: bool = False
    output: str | os.PathLike[str] | None = None
    revision: str | None = None


@dataclass
class IdentifySettings(PassSettings):
    """Everything one ``identify`` run needs. Mirrors the CLI options one to one.

    ``type``: 1, 2 or "both". ``layers``: None for the defaults (Type-1 = the first
    round(0.625·L) layers, Type-2 = the rest), else a spec such as ``"0-11"``, ``"0,3,5-7"``,
    ``"0.0:0.625"`` (fractions of the depth) or a list of ints; it applies to every requested type.
    ``data``: None (built-in corpus), a TSV/JSONL path or ``hf:NAME[:CONFIG]``.
    ``output``: directory for the neuron sets, the score files and the resume checkpoint; None
    writes nothing.
    """

    type: int | str = 1
    k: int = 1000
    checkpoint_every: int | None = None
    resume: bool = False
    seed: int = 0  # identify itself is deterministic; the seed is for controls built from the result
    eta2: bool = True
    warn: Callable[[str], None] | None = None  # where warnings go; None → warnings.warn


@dataclass
class LanguageStats:
    """Everything identify measured for one target language (arrays are ``[layers, …]``)."""

    language: str
    n_pairs: int
    scores: dict[int, np.ndarray]  # type -> float64 [layers, intermediate]
    centroids: dict[int, np.ndarray]  # type -> float64 [layers, hidden]
    eta2: np.ndarray | None  # float64 [layers, intermediate], activation vs is-L2 label
    n_en: int
    n_l2: int


@dataclass
class IdentifyResult:
    model: ModelInfo
    languages: list[str]
    types: list[int]
    candidate_layers: dict[int, list[int]]
    stats: dict[str, LanguageStats]
    neuron_sets: dict[tuple[str, int], NeuronSet]
    files: list[Path] = field(default_factory=list)
    set_files: dict[tuple[str, int], Path] = field(default_factory=dict)
    seconds: float = 0.0
    batches: int = 0
    max_length: int | None = None  # tokens per sentence the passes read
    truncated: dict[str, int] = field(default_factory=dict)  # pass name -> sentences cut to max_length

    def scores(self, language: str, neuron_type: int) -> np.ndarray:
        """Mean scores ``[layers, intermediate]`` (float64) of one language and type."""
        return self.stats[language].scores[neuron_type]

    def neurons(self, language: str, neuron_type: int) -> NeuronSet:
        """The selected (ranked) neuron set of one language and type."""
        return self.neuron_sets[(language, neuron_type)]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``tnedit identify --json`` prints)."""
        sets = []
        for (lang, t), ns in self.neuron_sets.items():
            extra = ns.method.extra if ns.method else {}
            sets.append(
                {
                    "language": lang,
                    "type": t,
                    "k": len(ns),
                    "layers": self.candidate_layers[t],
                    "per_layer": {str(k): v for k, v in ns.per_layer_counts().items()},
                    "eta2_share": extra.get("eta2_share"),
                    "file": str(self.set_files[(lang, t)]) if (lang, t) in self.set_files else None,
                }
            )
        return {
            "model": self.model.name_or_path,
            "model_type": self.model.model_type,
            "languages": self.languages,
            "types": self.types,
            "sets": sets,
            "files": [str(f) for f in self.files],
            "seconds": round(self.seconds, 3),
            "batches": self.batches,
            "max_length": self.max_length,
            "truncated": dict(self.truncated),
        }


def _warn(settings: IdentifySettings | None, message: str) -> None:
    if settings is not None and settings.warn is not None:
        settings.warn(message)
    else:
        warnings.warn(message, IdentifyWarning, stacklevel=3)


# --- layers and types ----------------------------------------------------------------------------


def parse_types(value: int | str | Sequence[int]) -> list[int]:
    """``1``, ``2``, ``"both"`` (or ``"1,2"``) → the sorted list of neuron types."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, str):
        v = value.strip().lower()
        items = [1, 2] if v == "both" else [p.strip() for p in v.split(",") if p.strip()]
    else:
        items = list(value)
    out = set()
    for item in items:
        if str(item) not in ("1", "2"):
            raise InputError(f"--type: expected 1, 2 or both, got {value!r}")
        out.add(int(item))
    if not out:
        raise InputError(f"--type: expected 1, 2 or both, got {value!r}")
    return sorted(out)


def default_layers(neuron_type: int, num_layers: int) -> list[int]:
    """Type-1: the first round(0.625·L) layers (0–19 of 32); Type-2: the rest (20–31 of 32)."""
    split = round_half_up(TYPE1_FRACTION * num_layers)
    return list(range(split)) if neuron_type == 1 else list(range(split, num_layers))


def parse_layers(spec: str | Sequence[int] | None, num_layers: int, where: str = "--layers") -> list[int] | None:
    """:func:`tnedit.formats.neurons.parse_layers`, raising :class:`InputError` for the identify API."""
    try:
        return neurons_parse_layers(spec, num_layers, where)
    except NeuronFormatError as exc:
        raise InputError(str(exc)) from None


def candidate_layers(types: Sequence[int], num_layers: int, spec: str | Sequence[int] | None) -> dict[int, list[int]]:
    explicit = parse_layers(spec, num_layers)
    out = {t: (explicit if explicit is not None else default_layers(t, num_layers)) for t in types}
    for t, layers in out.items():
        if not layers:
            raise InputError(f"type {t}: no candidate layers in a {num_layers}-layer model; pass --layers")
    return out


def parse_languages(values: str | Iterable[str] | None) -> list[str]:
    """``["ja", "ko"]``, ``"ja,ko"`` or a mix (``--lang ja --lang ko,it``) → unique codes in order."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for code in str(item).split(","):
            code = code.strip()
            if code and code not in out:
                out.append(code)
    return out


# --- selection -----------------------------------------------------------------------------------


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


def _cap_k(k: int, n_candidates: int, settings: IdentifySettings | None, what: str) -> int:
    if k < 1:
        raise InputError(f"--k must be at least 1, got {k}")
    if k > n_candidates:
        _warn(settings, f"--k {k} exceeds the {n_candidates} candidate neurons of {what}; keeping all {n_candidates}")
        return n_candidates
    return k


# --- the efficient score -------------------------------------------------------------------------


_MM_OUT_DTYPE_OK: dict[str, bool] = {}


def _matmul(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x @ v`` accurate to fp32 accumulation for any weight dtype; returns float64 on a device
    that supports it (the CPU for MPS weights).

    ``v`` stays in its own dtype (no per-batch copy of the weight on CUDA). For half-precision
    weights on CUDA, ``x`` is split into a half-precision head and tail whose products are
    accumulated in fp32 (``torch.mm(..., out_dtype=float32)``), so the result is as accurate as an
    fp32 product of the fp32 ``x`` with the stored weight.
    """
    if v.dtype == torch.float64:
        return x.to(torch.float64).to(v.device) @ v
    x32 = x.to(torch.float32).to(v.device)
    out: torch.Tensor | None = None
    if v.dtype == torch.float32:
        out = x32 @ v
    elif v.device.type == "cuda" and _MM_OUT_DTYPE_OK.get("cuda", True):
        hi = x32.to(v.dtype)
        lo = (x32 - hi.float()).to(v.dtype)
        try:
            both = torch.mm(torch.cat([hi, lo]), v, out_dtype=torch.float32)
            out = both[: x32.shape[0]] + both[x32.shape[0] :]
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE_OK["cuda"] = False
    if out is None:
        out = x32 @ v.float()
    if out.device.type == "mps":
        out = out.cpu()
    return out.double()


def _room_for(device: torch.device, nbytes: int) -> bool:
    """Whether a cache of ``nbytes`` leaves enough accelerator memory for the forward passes."""
    if device.type != "cuda":
        return True
    try:
        free, total = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return False
    return free - nbytes > max(0.15 * total, 4 << 30)


class LayerScorer:
    """Running sums of ``cos(R + c_i, C) − cos(R, C)`` for every neuron of one layer.

    ``centroids`` maps a neuron type to its centroid (d,). For a plain or gated MLP, ``q = vᵀC``
    and ``n = |v|²`` are constants computed once; for an output norm (Gemma 2/3) they depend on the
    sentence's scale ``s`` and cost one product each per batch (``n`` against the element-wise
    squares of the weight, cached in fp32 when memory allows, else formed per column block).
    """

    def __init__(self, lm: LoadedModel, layer: int, centroids: Mapping[int, torch.Tensor]):
        weight = lm.out_proj(layer).weight.detach()
        self.v = weight if lm.arch.layout == "linear" else weight.t()  # (d, m): column i is v_i
        self.device = stat_device(weight.device)
        self.c = {t: c.to(self.device, torch.float64) for t, c in centroids.items()}
        self.c_norm = {t: c.norm() for t, c in self.c.items()}
        self.out_norm = lm.arch.out_norm is not None
        m = self.v.shape[1]
        self.sums = {t: torch.zeros(m, dtype=torch.float64, device=self.device) for t in self.c}
        self.count = 0
        self.v2: torch.Tensor | None = None
        if not self.out_norm:
            self.n = torch.zeros(m, dtype=torch.float64, device=self.device)
            self.q = {t: torch.zeros(m, dtype=torch.float64, device=self.device) for t in self.c}
            step = max(1, (1 << 24) // max(1, self.v.shape[0]))  # bounded fp64 temporaries
            for start in range(0, m, step):
                block = self.v[:, start : start + step].to(self.device, torch.float64)
                self.n[start : start + step] = (block * block).sum(0)
                for t, c in self.c.items():
                    self.q[t][start : start + step] = c @ block
        elif self.v.dtype in (torch.float32, torch.float64):
            self.v2 = self.v * self.v
        elif _room_for(self.v.device, self.v.numel() * 4):
            # The square of a half-precision weight is exact in fp32; a half-precision square is not.
            self.v2 = self.v.float().square()

    def terms(
        self, r_res: torch.Tensor, scale: torch.Tensor | None
    ) -> tuple[torch.Tensor, Mapping[int, torch.Tensor], torch.Tensor]:
        """(r, {type: q}, n) for one batch, each (B, m) or (m,) float64 on the stat device."""
        if not self.out_norm:
            return _matmul(r_res, self.v).to(self.device), self.q, self.n
        if scale is None:
            raise RuntimeError("an output-norm architecture needs the per-sentence out_scale")
        s = scale.to(self.device, torch.float64)
        rows = [s * r_res] + [s * c for c in self.c.values()]
        prod = _matmul(torch.cat(rows), self.v).to(self.device)
        b = r_res.shape[0]
        r = prod[:b]
        q = {t: prod[(j + 1) * b : (j + 2) * b] for j, t in enumerate(self.c)}
        if self.v2 is not None:
            n = _matmul(s * s, self.v2).to(self.device)
        else:  # not enough memory to cache the squares: form them per column block
            n = torch.empty_like(r)
            s2 = (s * s).to(torch.float32).to(self.v.device)
            step = max(1, (1 << 26) // max(1, self.v.shape[0]))
            for start in range(0, self.v.shape[1], step):
                block = self.v[:, start : start + step].float().square()
                n[:, start : start + step] = (s2 @ block).to(self.device, torch.float64)
        return r, q, n

    def update(self, r_res: torch.Tensor, acts: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """Add one batch: ``r_res`` (B, d) pre-MLP residuals, ``acts`` (B, m), ``scale`` (B, d) or None."""
        rr = r_res.to(self.device, torch.float64)
        a = acts.to(self.device, torch.float64)
        r, q, n = self.terms(rr, scale)
        r2 = (rr * rr).sum(1, keepdim=True)  # |R|²
        new_sq = (r2 + 2.0 * a * r + a * a * n).clamp_min(1e-300)
        for t, c in self.c.items():
            p = (rr @ c).unsqueeze(1)  # R·C
            denom = self.c_norm[t]
            cos_new = (p + a * q[t]) / (denom * new_sq.sqrt())
            cos_old = p / (denom * r2.clamp_min(1e-300).sqrt())
            self.sums[t] += (cos_new - cos_old).sum(0)
        self.count += rr.shape[0]


def brute_force_scores(
    r_res: torch.Tensor, acts: torch.Tensor, v: torch.Tensor, centroid: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: materialise R + c_i for every neuron i of every sentence (fp64). Returns (m,) means.

    ``v`` is (d, m) with v_i in column i. Slow (B × d × m memory); for tests and benchmarks only.
    """
    c = centroid.detach().double().cpu()
    v = v.detach().double().cpu()
    out = torch.zeros(v.shape[1], dtype=torch.float64)
    for b in range(r_res.shape[0]):
        rr = r_res[b].detach().double().cpu()
        vv = v * scale[b].detach().double().cpu().unsqueeze(1) if scale is not None else v
        moved = rr.unsqueeze(1) + vv * acts[b].detach().double().cpu().unsqueeze(0)  # (d, m): R + a_i v_i'
        cos_new = (c @ moved) / (c.norm() * moved.norm(dim=0))
        cos_old = (rr @ c) / (rr.norm() * c.norm())
        out += (cos_new - cos_old).cpu()
    return out / r_res.shape[0]


# --- passes over sentences -----------------------------------------------------------------------


@dataclass
class _Sums:
    """Per-layer running fp64 sums for one group of sentences."""

    h: list[torch.Tensor] | None
    a: list[torch.Tensor] | None
    a2: list[torch.Tensor] | None
    n: int = 0

    def export(self, prefix: str) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name in ("h", "a", "a2"):
            values = getattr(self, name)
            if values is not None:
                out[f"{prefix}/{name}"] = torch.stack([x.cpu() for x in values])
        out[f"{prefix}/n"] = torch.tensor([self.n], dtype=torch.float64)
        return out

    def load(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
        for name in ("h", "a", "a2"):
            current = getattr(self, name)
            if current is not None:
                stacked = tensors[f"{prefix}/{name}"]
                setattr(self, name, [stacked[i].to(current[i].device) for i in range(len(current))])
        self.n = int(tensors[f"{prefix}/n"].item())


def _zeros(lm: LoadedModel, layers: Sequence[int], width: int) -> list[torch.Tensor]:
    out = []
    for layer in layers:
        dev = stat_device(lm.out_proj(layer).weight.device)
        out.append(torch.zeros(width, dtype=torch.float64, device=dev))
    return out


class _Pass:
    """A resumable pass over sentences. Subclasses define what is captured and summed."""

    name: str
    want: tuple[str, ...]

    def __init__(self, texts: Sequence[str], layers: Sequence[int]):
        self.texts = list(texts)
        self.layers = list(layers)

    def update(self, states: LastTokenStates, rows: Sequence[int]) -> None:  # pragma: no cover
        raise NotImplementedError

    def export(self) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def load(self, tensors: Mapping[str, torch.Tensor]) -> None:  # pragma: no cover
        raise NotImplementedError


class CentroidPass(_Pass):
    """Sums of h (and of a, a² for η²) over the English sentences (optional) and the L2 sentences."""

    want = ("h", "a")

    def __init__(
        self,
        lm: LoadedModel,
        language: str,
        en: Sequence[str] | None,
        l2: Sequence[str],
        layers: Sequence[int],
        en_key: str,
        with_acts: bool = True,
    ):
        super().__init__(list(en or []) + list(l2), layers)
        self.name = f"{language}:centroids"
        self.language = language
        self.en_key = en_key
        self.n_en_texts = len(en or [])
        d, m = lm.hidden_size, lm.intermediate_size
        self.want = ("h", "a") if with_acts else ("h",)

        def sums() -> _Sums:
            acts = with_acts
            return _Sums(_zeros(lm, layers, d), _zeros(lm, layers, m) if acts else None,
                         _zeros(lm, layers, m) if acts else None)

        self.en = sums() if en is not None else None
        self.l2 = sums()

    def update(self, states: LastTokenStates, rows: Sequence[int]) -> None:
        is_en = torch.tensor([r < self.n_en_texts for r in rows], dtype=torch.float64)
        w_l2 = 1.0 - is_en
        groups = [(self.l2, w_l2)] + ([(self.en, is_en)] if self.en is not None else [])
        for j, layer in enumerate(self.layers):
            h = states.h[layer]
            a = states.a.get(layer)
            for sums, w in groups:
                dev = sums.h[j].device
                wd = w.to(dev)
                sums.h[j] += wd @ h.to(dev, torch.float64)
                if sums.a is not None and a is not None:
                    ad = a.to(dev, torch.float64)
                    sums.a[j] += wd @ ad
                    sums.a2[j] += wd @ (ad * ad)
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


class ScorePass(_Pass):
    """Score sums over the L2 sentences for every layer and every requested type."""

    want = ("r", "a")

    def __init__(self, lm: LoadedModel, language: str, l2: Sequence[str], layers: Sequence[int],
                 centroids: Mapping[int, np.ndarray | torch.Tensor]):
        super().__init__(l2, layers)
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


class _Runner:
    """Runs passes batch by batch with optional periodic checkpoints and a per-batch callback."""

    def __init__(self, lm: LoadedModel, *, batch_size: int, max_length: int | None, quiet: bool,
                 checkpoint: _Checkpoint | None = None, checkpoint_every: int | None = None,
                 on_batch: BatchCallback | None = None):
        self.lm = lm
        self.batch_size = batch_size
        self.max_length = resolve_max_length(lm, max_length)
        self.quiet = quiet
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.on_batch = on_batch
        self.batches = 0

    @torch.no_grad()
    def run(self, p: _Pass) -> list[bool]:
        """Run one pass (or restore it from the checkpoint); returns which of its sentences were truncated."""
        encoded = encode_texts(self.lm.tokenizer, p.texts, self.max_length)
        ck = self.checkpoint
        if ck is not None and p.name in ck.done:
            ck.restore(p)
            return encoded.truncated
        start = 0
        if ck is not None and ck.current == p.name and ck.batches_done:
            ck.restore(p)
            start = ck.batches_done
        total = num_batches(len(p.texts), self.batch_size)
        bar = (NullReporter() if self.quiet else TqdmReporter()).bar(total, p.name, initial=start)
        try:
            batches = encode_batches(self.lm.tokenizer, encoded, self.batch_size, self.lm.device)
            with LastTokenCapture(self.lm, p.want, p.layers) as cap:
                for i, batch in enumerate(batches):
                    if i < start:
                        continue
                    p.update(cap.run(batch), batch.rows)
                    done = i + 1
                    self.batches += 1
                    bar.update(1)
                    if ck is not None and self.checkpoint_every and done % self.checkpoint_every == 0 and done < total:
                        ck.save_partial(p, done)
                    if self.on_batch is not None:
                        self.on_batch(p.name, done, total)
        finally:
            bar.close()
        if ck is not None:
            ck.finish(p, persist=bool(self.checkpoint_every))
        return encoded.truncated


# --- resumable checkpoints -----------------------------------------------------------------------


class _Checkpoint:
    """Partial sums on disk: ``state.json`` names a ``sums-<step>.safetensors`` written before it.

    Both files are replaced atomically, so a crash at any moment leaves a consistent pair.
    """

    def __init__(self, directory: Path, key: dict[str, Any]):
        self.dir = directory
        self.key = key
        self.tensors: dict[str, torch.Tensor] = {}
        self.done: list[str] = []
        self.current: str | None = None
        self.batches_done = 0
        self.step = 0

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def exists(self) -> bool:
        return self.state_path.is_file()

    def _corrupt(self, what: str) -> InputError:
        return InputError(f"{self.state_path}: {what}; rerun without --resume to start over")

    def load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"unreadable resume state ({exc})") from None
        if not isinstance(state, dict):
            raise self._corrupt(f"the resume state must be a JSON object, got {type(state).__name__}")
        if state.get("key") != self.key:
            old = state.get("key") if isinstance(state.get("key"), dict) else {}
            diff = sorted(k for k in set(self.key) | set(old) if self.key.get(k) != old.get(k))
            raise InputError(
                f"{self.state_path}: cannot resume: the checkpoint was made with different settings "
                f"({', '.join(diff)}); rerun with the same options or without --resume"
            )
        try:
            self.done = [str(x) for x in state.get("done", [])]
            self.current = state.get("current")
            self.batches_done = int(state.get("batches_done", 0))
            self.step = int(state.get("step", 0))
            tensors = state.get("tensors")
        except (TypeError, ValueError):
            raise self._corrupt("keys 'done', 'batches_done' and 'step' must be a list and counts") from None
        if tensors:
            tensor_file = contained_name(self.dir, tensors, f"{self.state_path}: key 'tensors'")
            if not tensor_file.is_file():
                raise self._corrupt(f"names {tensor_file.name}, which is missing")
            try:
                self.tensors = dict(load_file(str(tensor_file)))
            except (SafetensorError, OSError, ValueError) as exc:
                raise self._corrupt(f"{tensor_file.name} is not readable ({exc})") from None

    def restore(self, p: _Pass) -> None:
        """Load one pass's partial sums from the state; a state missing them is refused, one line."""
        try:
            p.load(self.tensors)
        except (KeyError, IndexError, RuntimeError) as exc:
            raise self._corrupt(f"the saved sums lack or misshape {exc} for pass {p.name}") from None

    def _write(self) -> None:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        self.step += 1
        name = f"sums-{self.step:06d}.safetensors"
        with atomic_file(self.dir / name, record=False) as tmp:  # the state is listed as a whole
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp))
        state = {
            "format": "tnedit.identify-checkpoint/1",
            "key": self.key,
            "tensors": name,
            "done": self.done,
            "current": self.current,
            "batches_done": self.batches_done,
            "step": self.step,
        }
        with atomic_file(self.state_path, record=False) as tmp:  # replaced last: it names a sums file already complete
            tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        if self._listed not in COMPLETED:  # an interrupted run names the resume state it keeps
            COMPLETED.append(self._listed)
        for old in self.dir.glob("sums-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def save_partial(self, p: _Pass, batches_done: int) -> None:
        self.tensors.update(p.export())
        self.current, self.batches_done = p.name, batches_done
        self._write()

    def finish(self, p: _Pass, persist: bool) -> None:
        self.tensors.update(p.export())
        if p.name not in self.done:
            self.done.append(p.name)
        self.current, self.batches_done = None, 0
        if persist:
            self._write()

    @property
    def _listed(self) -> Path:
        return Path(os.path.abspath(self.dir))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._listed in COMPLETED:
            COMPLETED.remove(self._listed)



# --- data ----------------------------------------------------------------------------------------


def _pairs(corpus: Any, language: str) -> tuple[list[str], list[str]]:
    """(English sentences, L2 sentences) of the corpus's en–L2 pairs, aligned."""
    pairs = corpus.pairs(SHARED_LANGUAGE, language)
    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], str):
        en, l2 = list(pairs[0]), list(pairs[1])
    else:
        pairs = list(pairs)
        en = [p[0] for p in pairs]
        l2 = [p[1] for p in pairs]
    if len(en) != len(l2):
        raise CorpusError(f"{corpus.source}: {len(en)} English and {len(l2)} '{language}' sentences (need pairs)")
    return en, l2


def _sha_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_identify_corpus(settings: IdentifySettings, languages: Sequence[str], tokenizer: Any | None = None) -> Any:
    """The parallel corpus with English plus ``languages`` (via :mod:`tnedit.corpus`)."""
    from tnedit import corpus as corpus_mod

    cols = [SHARED_LANGUAGE] + [lang for lang in languages if lang != SHARED_LANGUAGE]
    corpus = corpus_mod.load_corpus(settings.data, cols, limit=settings.limit)
    if tokenizer is not None:
        corpus_mod.check_tokenizable(corpus, tokenizer, cols)
    return corpus


def default_languages(settings: IdentifySettings) -> list[str]:
    """Every non-English language of the data (used when no --lang is given)."""
    from tnedit import corpus as corpus_mod

    corpus = corpus_mod.load_corpus(settings.data, None, limit=settings.limit)
    return [lang for lang in corpus.languages if lang != SHARED_LANGUAGE]


# --- outputs -------------------------------------------------------------------------------------


def default_output_dir(model: str) -> Path:
    local = Path(model).expanduser()
    name = Path(os.path.abspath(local)).name if local.is_dir() else Path(str(model).rstrip("/")).name
    return Path("tnedit-identify") / (name or "model")


def _local_model_dir(model: str | os.PathLike[str] | None) -> Path | None:
    if model is None:
        return None
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def check_output_directory(out: Path | str, model: str | os.PathLike[str] | None, where: str = "-o") -> None:
    """Refuse an identify/LAPE output directory that is a file, is or lies inside the model, or cannot be written.

    identify adds its files to an existing directory (a second language, a resumed run), so an
    existing directory is fine; the model's own directory never is, resume state included.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{where} {out}: exists and is not a directory (expected an output directory)")
    source = _local_model_dir(model)
    if source is not None and is_within(out, source):
        raise InputError(f"{where} {out}: is inside the model directory {source}; tnedit never writes into its input, "
                         "choose another output directory")
    require_writable(out, where)


def check_output_json(
    path: Path | str, *, overwrite: bool, inputs: Sequence[Path | str] = (), model: str | None = None
) -> None:
    """Refuse a single-file output (a control set, a select result) that is an input, exists without
    ``overwrite``, lies in the model directory, or cannot be written."""
    path = Path(path)
    check_output_file(path, overwrite, inputs)
    source = _local_model_dir(model)
    if source is not None and is_within(path, source):
        raise InputError(f"{path}: is inside the model directory {source}; tnedit never writes into its input")
    require_writable(path, "-o", file=True)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing an output names the output, not its temporary sibling."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def save_neuron_set(ns: NeuronSet, path: str | os.PathLike[str]) -> Path:
    """:meth:`NeuronSet.save` (atomic, via :mod:`tnedit.formats.outputs`) with a write error that names ``path``."""
    path = Path(path)
    with _writing(path):
        ns.save(path)
    return path


def read_neurons(path: str | os.PathLike[str], where: str) -> NeuronSet:
    """:func:`tnedit.formats.neurons.load_neurons` with errors that say which option the file came from."""
    try:
        return load_neurons(path)
    except NeuronFormatError as exc:
        raise NeuronSetError(f"{where}: {exc}") from None


def _save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    with _writing(path), atomic_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        umask = os.umask(0)  # the permissions any other file of the user gets
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)


@dataclass
class ScoresFile:
    """A ``scores-<lang>.safetensors``: float32 [layers, intermediate] scores per type, plus η²."""

    language: str
    scores: dict[int, np.ndarray]
    eta2: np.ndarray | None
    model: ModelInfo
    candidate_layers: dict[int, list[int]]
    method: dict[str, Any]
    n_en: int
    n_l2: int
    path: Path | None = None


def save_scores(sf: ScoresFile, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    tensors = {f"type{t}": torch.from_numpy(np.asarray(s, dtype=np.float32)) for t, s in sf.scores.items()}
    if sf.eta2 is not None:
        tensors["eta2"] = torch.from_numpy(np.asarray(sf.eta2, dtype=np.float32))
    metadata = {
        "format": SCORES_FORMAT,
        "language": sf.language,
        "model": json.dumps(asdict(sf.model)),
        "model_name": sf.model.name_or_path,
        "candidate_layers": json.dumps({str(t): v for t, v in sf.candidate_layers.items()}),
        "method": json.dumps(sf.method, ensure_ascii=False),
        "n_en": str(sf.n_en),
        "n_l2": str(sf.n_l2),
        "tnedit_version": __version__,
    }
    _save_safetensors(tensors, metadata, path)
    return path


def _meta_json(meta: Mapping[str, str], key: str, where: Path, kind: type, default: Any = None) -> Any:
    """One JSON-encoded metadata entry of a scores file, of the expected kind; errors name the key."""
    if key not in meta:
        if default is not None:
            return default
        raise InputError(f"{where}: metadata key '{key}' is missing; is this a scores file written by tnedit identify?")
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: metadata key '{key}' is not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise InputError(f"{where}: metadata key '{key}' must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _meta_count(meta: Mapping[str, str], key: str, where: Path) -> int:
    text = meta.get(key, "0")
    if not text.isdigit():
        raise InputError(f"{where}: metadata key '{key}' must be a sentence count, got {text!r}")
    return int(text)


def _scores_model(meta: Mapping[str, str], where: Path) -> ModelInfo:
    raw = _meta_json(meta, "model", where, dict)
    try:
        model = ModelInfo(**raw)
    except TypeError as exc:
        raise InputError(f"{where}: metadata key 'model' does not describe a model ({exc})") from None
    if not isinstance(model.name_or_path, str):
        raise InputError(f"{where}: metadata key 'model' has no 'name_or_path' string")
    return model


def _scores_layers(meta: Mapping[str, str], where: Path, num_layers: int) -> dict[int, list[int]]:
    raw = _meta_json(meta, "candidate_layers", where, dict)
    out: dict[int, list[int]] = {}
    for t, layers in raw.items():
        ok = str(t) in ("1", "2") and isinstance(layers, list)
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < num_layers for x in layers)
        if not ok:
            raise InputError(f"{where}: metadata key 'candidate_layers' must map 1 and 2 to lists of layers "
                             f"0..{num_layers - 1}, got {t!r}: {layers!r}")
        out[int(t)] = list(layers)
    return out


def _scores_arrays(arrays: Mapping[str, np.ndarray], where: Path) -> tuple[dict[int, np.ndarray], np.ndarray | None]:
    scores = {int(k[4:]): v for k, v in arrays.items() if re.fullmatch(r"type[12]", k)}
    if not scores:
        raise InputError(f"{where}: no 'type1'/'type2' score tensors (found {', '.join(arrays) or 'none'})")
    shapes = {f"type{t}": v.shape for t, v in scores.items()}
    if "eta2" in arrays:
        shapes["eta2"] = arrays["eta2"].shape
    for key, shape in shapes.items():
        if len(shape) != 2 or 0 in shape:
            raise InputError(f"{where}: tensor '{key}' has shape {list(shape)}, expected [layers, intermediate]")
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        raise InputError(f"{where}: tensors of different shapes ({detail}); expected one [layers, intermediate]")
    return scores, arrays.get("eta2")


def load_scores(path: str | os.PathLike[str]) -> ScoresFile:
    """Read a scores file written by identify; errors name the file and the key."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: scores file not found")
    if not p.is_file():
        raise InputError(f"{p}: not a file (expected a scores-<lang>.safetensors written by tnedit identify)")
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
            arrays = {k: fh.get_tensor(k).float().numpy().astype(np.float64) for k in keys}
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"{p}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != SCORES_FORMAT:
        raise InputError(f"{p}: metadata key 'format' must be '{SCORES_FORMAT}', got {meta.get('format')!r}")
    language = meta.get("language", "")
    if not language.strip():
        raise InputError(f"{p}: metadata key 'language' is missing or empty")
    scores, eta2 = _scores_arrays(arrays, p)
    num_layers = next(iter(scores.values())).shape[0]
    model = _scores_model(meta, p)
    cand = _scores_layers(meta, p, num_layers)
    method = _meta_json(meta, "method", p, dict, default={})
    for key in ("data", "extra", "tokenizer"):
        if not isinstance(method.get(key, {}), dict):
            raise InputError(f"{p}: metadata key 'method' has a '{key}' that is not an object")
    n_en, n_l2 = _meta_count(meta, "n_en", p), _meta_count(meta, "n_l2", p)
    return ScoresFile(language, scores, eta2, model, cand, method, n_en, n_l2, p)


def select_from_scores(
    sf: ScoresFile,
    neuron_type: int,
    k: int,
    layers: str | Sequence[int] | None = None,
    *,
    settings: IdentifySettings | None = None,
) -> NeuronSet:
    """Re-rank a scores file into a neuron set (no forward pass). Same ranking as identify's."""
    if neuron_type not in sf.scores:
        have = ", ".join(f"type{t}" for t in sorted(sf.scores))
        where = sf.path or "scores"
        raise InputError(f"{where}: no scores for type {neuron_type} (key 'type{neuron_type}'; the file has {have})")
    num_layers = sf.scores[neuron_type].shape[0]
    cand = parse_layers(layers, num_layers)
    if cand is None:
        cand = sf.candidate_layers.get(neuron_type) or default_layers(neuron_type, num_layers)
    scores32 = sf.scores[neuron_type].astype(np.float32)
    n_cand = len(cand) * scores32.shape[1]
    k_eff = _cap_k(k, n_cand, settings, f"type {neuron_type} in layers {format_layers(cand)}")
    neurons = select_top(scores32, cand, k_eff)
    extra: dict[str, Any] = {
        "centroid": "shared (en+L2)/2" if neuron_type == 1 else "L2",
        "n_candidates": n_cand,
        "score": "mean_s[cos(R + a_i v_i, C) - cos(R, C)]",
    }
    if sf.eta2 is not None and sf.n_en and sf.n_l2:
        extra.update(eta2_summary(neurons, sf.eta2, sf.n_en + sf.n_l2))
    base = dict(sf.method)
    method = Method(
        kind="transfer",
        type=neuron_type,
        language=sf.language,
        languages=[SHARED_LANGUAGE, sf.language],
        layers=list(cand),
        k=len(neurons),
        data=base.get("data", {}),
        position="last",
        dtype=base.get("dtype"),
        tokenizer=base.get("tokenizer", {}),
        seed=None,
        tnedit_version=__version__,
        extra={**base.get("extra", {}), **extra},
    )
    return NeuronSet(neurons=neurons, model=sf.model, method=method)


# --- the public passes ---------------------------------------------------------------------------


def compute_centroids(
    lm: LoadedModel,
    en: Sequence[str] | None,
    l2: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Per-layer centroids at the last token: ``{"shared": [L, d], "l2": [L, d]}`` (float64).

    ``shared`` (Type-1) needs ``en``, aligned with ``l2``; with ``en=None`` only ``l2`` is returned.
    """
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    if en is not None and len(en) != len(l2):
        raise CorpusError(f"{len(en)} English and {len(l2)} L2 sentences: centroids need aligned pairs")
    p = CentroidPass(lm, "l2", en, l2, layers, en_key="en", with_acts=False)
    _Runner(lm, batch_size=batch_size, max_length=max_length, quiet=quiet).run(p)
    mean_l2 = torch.stack([x.cpu() for x in p.l2.h]).numpy() / p.l2.n
    out: dict[str, Any] = {"l2": mean_l2, "layers": layers}
    if p.en is not None:
        mean_en = torch.stack([x.cpu() for x in p.en.h]).numpy() / p.en.n
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
    quiet: bool = True,
) -> dict[int, np.ndarray]:
    """Mean score of every neuron of ``layers`` over the L2 sentences ``corpus_rows``.

    ``centroids`` maps a type (1 or 2) to its per-layer centroid array ``[num_layers, hidden]``.
    Returns ``{type: float64 [num_layers, intermediate]}`` with NaN in layers not scored.
    """
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    p = ScorePass(lm, "l2", corpus_rows, layers, centroids)
    _Runner(lm, batch_size=batch_size, max_length=max_length, quiet=quiet).run(p)
    means = p.means()
    out = {}
    for t, arr in means.items():
        full = np.full((lm.num_layers, lm.intermediate_size), np.nan)
        full[layers] = arr
        out[t] = full
    return out


# --- identify ------------------------------------------------------------------------------------


def _settings_key(
    settings: IdentifySettings, lm: LoadedModel, corpus: Any, langs: Sequence[str], types: Sequence[int],
    max_length: int,
) -> dict[str, Any]:
    return {
        "model": lm.name_or_path,
        "model_fingerprint": lm.fingerprint(),
        "data_sha256": getattr(corpus, "sha256", None),
        "languages": list(langs),
        "types": list(types),
        "batch_size": settings.batch_size,
        "max_length": max_length,
        "dtype": dtype_name(lm.dtype),
        "eta2": bool(settings.eta2),
        "tnedit_version": __version__,
    }


def _check_settings(settings: IdentifySettings) -> list[int]:
    """The option checks that need neither the model nor the data; returns the neuron types."""
    types = parse_types(settings.type)
    if settings.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.k < 1:
        raise InputError(f"--k must be at least 1, got {settings.k}")
    if settings.limit is not None and settings.limit < 1:
        raise InputError(f"--limit must be at least 1, got {settings.limit}")
    if settings.checkpoint_every is not None and settings.checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be at least 1, got {settings.checkpoint_every}")
    if (settings.checkpoint_every or settings.resume) and settings.output is None:
        raise InputError("--checkpoint-every and --resume need an output directory (-o)")
    if settings.output is not None:
        check_output_directory(settings.output, settings.model)
    return types


def _target_languages(settings: IdentifySettings, corpus: Any | None) -> tuple[list[str], Any]:
    """(target languages, corpus): --lang, else every non-English language of the data.

    Runs before the model is loaded, so a bad --data or --lang costs no model load.
    """
    langs = parse_languages(settings.langs)
    if SHARED_LANGUAGE in langs:
        raise InputError(f"--lang: '{SHARED_LANGUAGE}' is the shared language; give the target languages (e.g. ja,ko)")
    if corpus is None:
        if not langs:
            langs = default_languages(settings)
        corpus = load_identify_corpus(settings, langs)
    if not langs:
        langs = [x for x in getattr(corpus, "languages", []) if x != SHARED_LANGUAGE]
    if not langs:
        raise InputError("no target language: pass --lang (e.g. --lang ja)")
    return langs, corpus


def _open_checkpoint(settings: IdentifySettings, out_dir: Path | None, key: dict[str, Any]) -> _Checkpoint | None:
    if out_dir is None or not (settings.checkpoint_every or settings.resume):
        return None
    ck = _Checkpoint(out_dir / CHECKPOINT_DIR, key)
    if settings.resume:
        if ck.exists():
            ck.load()
        else:
            _warn(settings, f"--resume: no checkpoint under {ck.dir}; starting from the beginning")
    elif ck.exists():
        ck.remove()
    return ck


def _stack(xs: list[torch.Tensor]) -> np.ndarray:
    return torch.stack([x.cpu() for x in xs]).numpy()


def identify(
    settings: IdentifySettings,
    *,
    lm: LoadedModel | None = None,
    corpus: Any | None = None,
    on_batch: BatchCallback | None = None,
) -> IdentifyResult:
    """Find Type-1 and/or Type-2 transfer neurons for each language of ``settings.langs``.

    ``lm`` and ``corpus`` may be passed to reuse a loaded model or a loaded
    :class:`tnedit.corpus.ParallelCorpus`. ``on_batch(pass_name, done, total)`` is called after every
    batch (and after any checkpoint): raising from it interrupts the run like a crash would.
    Writes ``neurons-<lang>-type<t>.json`` and ``scores-<lang>.safetensors`` under
    ``settings.output`` when it is set, each file atomically, and only once every pass is done.
    Sentences are cut to ``settings.max_length`` tokens (default: the model's context length, at
    most :data:`tnedit.capture.MAX_LENGTH_CAP`); ``result.truncated`` counts them per pass.
    """
    started = time.perf_counter()
    types = _check_settings(settings)
    from_data = corpus is None
    langs, corpus = _target_languages(settings, corpus)
    if lm is None:
        lm = load_model(settings.model, revision=settings.revision, dtype=settings.dtype,
                        device=settings.device, device_map=settings.device_map)
    if from_data:
        from tnedit.corpus import check_tokenizable

        check_tokenizable(corpus, lm.tokenizer, [SHARED_LANGUAGE, *langs])
    out_dir = Path(settings.output) if settings.output is not None else None
    if out_dir is not None and lm.path is not None:
        check_output_directory(out_dir, lm.path)  # a Hub model's snapshot directory, known only now
    max_length = resolve_max_length(lm, settings.max_length)
    if out_dir is not None and settings.data is not None:
        for lang in langs:
            for name in [f"scores-{lang}.safetensors"] + [f"neurons-{lang}-type{t}.json" for t in types]:
                check_output_file(out_dir / name, overwrite=True, inputs=[settings.data])

    num_layers = lm.num_layers
    cand = candidate_layers(types, num_layers, settings.layers)
    file_layers = candidate_layers([1, 2], num_layers, settings.layers)  # recorded in the scores file
    ck = _open_checkpoint(settings, out_dir, _settings_key(settings, lm, corpus, langs, types, max_length))
    runner = _Runner(lm, batch_size=settings.batch_size, max_length=max_length, quiet=settings.quiet,
                     checkpoint=ck, checkpoint_every=settings.checkpoint_every, on_batch=on_batch)
    measured = _Measurements(lm, runner, with_en=1 in types or settings.eta2, eta2=settings.eta2)
    stats = {lang: measured.language(lang, *_pairs(corpus, lang)) for lang in langs}
    if any(measured.truncated.values()):
        cut = ", ".join(f"{name} {n}" for name, n in measured.truncated.items() if n)
        _warn(settings, f"sentences longer than {max_length} tokens were truncated ({cut})")

    result = IdentifyResult(lm.model_info(), list(langs), types, cand, stats, {}, batches=runner.batches,
                            max_length=max_length, truncated=dict(measured.truncated))
    method_base = {
        "data": {"source": str(getattr(corpus, "source", settings.data)), "sha256": getattr(corpus, "sha256", None)},
        "dtype": dtype_name(lm.dtype),
        "tokenizer": lm.tokenizer_facts(),
        "extra": {"batch_size": settings.batch_size, "max_length": max_length},
    }
    for lang, st in stats.items():
        base = json.loads(json.dumps(method_base))
        base["data"]["n_pairs"] = st.n_pairs
        base["extra"]["truncated"] = {name: n for name, n in measured.truncated.items() if name.startswith(f"{lang}:")}
        _select_and_write(result, st, base, {t: file_layers[t] for t in st.scores}, settings, out_dir)
    if ck is not None:
        ck.remove()
    result.seconds = time.perf_counter() - started
    return result


class _Measurements:
    """The centroid and score passes of each language, sharing one English pass between languages."""

    def __init__(self, lm: LoadedModel, runner: _Runner, *, with_en: bool, eta2: bool):
        self.lm, self.runner, self.with_en, self.eta2 = lm, runner, with_en, eta2
        self.en_cache: dict[str, tuple[_Sums, int]] = {}  # en_key -> (sums, sentences truncated)
        self.truncated: dict[str, int] = {}  # pass name -> sentences its statistics rest on that were cut

    def language(self, lang: str, en: list[str], l2: list[str]) -> LanguageStats:
        lm, all_layers = self.lm, list(range(self.lm.num_layers))
        en_key = f"{_sha_texts(en)}-{self.runner.max_length}"
        cached = self.en_cache.get(en_key) if self.with_en else None
        cp = CentroidPass(lm, lang, en if (self.with_en and cached is None) else None, l2, all_layers, en_key,
                          with_acts=self.eta2)
        cut = self.runner.run(cp)
        if cp.en is not None:
            self.en_cache[en_key] = (cp.en, sum(cut[: cp.n_en_texts]))
        en_sums, en_cut = self.en_cache[en_key] if self.with_en else (None, 0)
        self.truncated[f"{lang}:centroids"] = en_cut + sum(cut[cp.n_en_texts :])
        mean_l2 = _stack(cp.l2.h) / cp.l2.n
        # Both types' scores come from the same passes at almost no cost (a few extra rows in the
        # last-token product), so the scores file always holds every type the data allows.
        centroids: dict[int, np.ndarray] = {2: mean_l2}
        if en_sums is not None:
            centroids[1] = (_stack(en_sums.h) / en_sums.n + mean_l2) / 2.0
        sp = ScorePass(lm, lang, l2, all_layers, centroids)
        self.truncated[f"{lang}:scores"] = sum(self.runner.run(sp))
        eta2 = None
        if self.eta2 and en_sums is not None and en_sums.a is not None:
            eta2 = eta_squared_from_sums(_stack(cp.l2.a), _stack(cp.l2.a2), cp.l2.n,
                                         _stack(en_sums.a), _stack(en_sums.a2), en_sums.n)
        return LanguageStats(lang, len(l2), sp.means(), centroids, eta2,
                             en_sums.n if en_sums is not None else 0, cp.l2.n)


def _select_and_write(result: IdentifyResult, st: LanguageStats, method: dict[str, Any],
                      file_layers: dict[int, list[int]], settings: IdentifySettings, out_dir: Path | None) -> None:
    """Rank one language's neurons for every requested type; write its scores file and neuron sets."""
    sf = ScoresFile(st.language, st.scores, st.eta2, result.model, file_layers, method, st.n_en, st.n_l2)
    if out_dir is not None:
        sf.path = save_scores(sf, out_dir / f"scores-{st.language}.safetensors")
        result.files.append(sf.path)
    for t in result.types:
        ns = select_from_scores(sf, t, settings.k, result.candidate_layers[t], settings=settings)
        if out_dir is not None:
            path = save_neuron_set(ns, out_dir / f"neurons-{st.language}-type{t}.json")
            result.files.append(path)
            result.set_files[(st.language, t)] = path
        result.neuron_sets[(st.language, t)] = ns


# --- random control ------------------------------------------------------------------------------


def random_control(
    like: NeuronSet,
    num_layers: int,
    intermediate_size: int,
    seed: int,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    match_layers: bool = False,
) -> NeuronSet:
    """k random neurons from the candidate layers of ``like``, excluding ``like``'s neurons, seeded.

    Candidate layers: ``layers`` if given, else ``like.method.layers``, else the layers ``like``
    uses. ``match_layers=True`` draws the same number per layer as ``like`` instead of uniformly.
    """
    if layers is None:
        if like.method and like.method.layers:
            layers = list(like.method.layers)
        else:
            layers = sorted({n.layer for n in like.neurons})
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        raise NeuronSetError("random control: the reference set has no neurons and no candidate layers")
    try:
        like.validate_shape(num_layers, intermediate_size, "--like")
    except NeuronFormatError as exc:
        raise NeuronSetError(str(exc)) from None
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise NeuronSetError(f"random control: layer {bad[0]} is out of range (the model has {num_layers} layers)")
    k = len(like) if k is None else int(k)
    excluded = like.keys()
    rng = np.random.default_rng(seed)
    picked: list[tuple[int, int]] = []
    if match_layers:
        want = like.per_layer_counts()
        for layer in layers:
            free = np.array([i for i in range(intermediate_size) if (layer, i) not in excluded])
            n = want.get(layer, 0)
            if n > free.size:
                raise NeuronSetError(f"random control: layer {layer} has only {free.size} free neurons, need {n}")
            picked += [(layer, int(i)) for i in rng.choice(free, size=n, replace=False)]
    else:
        pos = {layer: j for j, layer in enumerate(layers)}
        mask = np.ones(len(layers) * intermediate_size, dtype=bool)
        for layer, index in excluded:
            if layer in pos:
                mask[pos[layer] * intermediate_size + index] = False
        free = np.flatnonzero(mask)
        if k > free.size:
            raise NeuronSetError(
                f"random control: k={k} but only {free.size} neurons remain in layers {format_layers(layers)} "
                "after excluding the reference set"
            )
        chosen = rng.choice(free, size=k, replace=False)
        picked = [(layers[int(c) // intermediate_size], int(c) % intermediate_size) for c in chosen]
    picked.sort()
    src = like.method
    method = Method(
        kind="random",
        type=src.type if src else None,
        language=src.language if src else None,
        languages=list(src.languages) if src else [],
        layers=layers,
        k=len(picked),
        data=dict(src.data) if src else {},
        position=src.position if src else "last",
        dtype=src.dtype if src else None,
        tokenizer=dict(src.tokenizer) if src else {},
        seed=seed,
        tnedit_version=__version__,
        extra={"like_sha256": like.sha256(), "excluded": len(excluded), "match_layers": match_layers,
               "like_kind": src.kind if src else None},
    )
    return NeuronSet(neurons=[Neuron(a, b) for a, b in picked], model=like.model, method=method)


def model_shape(model: str, like: NeuronSet | None = None) -> tuple[ModelInfo | None, int, int]:
    """(model info if known, layers, intermediate size) without loading weights.

    Reads the checkpoint headers of a local directory (via :mod:`tnedit.checkpoint`); for a Hub id
    falls back to the ``model`` block of ``like``.
    """
    from tnedit.checkpoint import is_hub_id, open_checkpoint

    local = Path(model).expanduser()
    if local.exists() or not is_hub_id(str(model)):
        ckpt = open_checkpoint(local)  # a path that is no model directory fails here, one line
        info = ModelInfo(
            name_or_path=model,
            model_type=ckpt.model_type,
            num_layers=ckpt.num_layers,
            intermediate_size=ckpt.intermediate_size,
            fingerprint=ckpt.fingerprint(),
        )
        return info, ckpt.num_layers, ckpt.intermediate_size
    if like is not None and like.model is not None:
        return like.model, like.model.num_layers, like.model.intermediate_size
    raise InputError(
        f"{model}: not a local model directory, and the --like file has no 'model' block to read the shape from"
    )


# --- compare -------------------------------------------------------------------------------------


@dataclass
class Comparison:
    size_a: int
    size_b: int
    intersection: int
    overlap: float  # |A ∩ B| / |A|
    overlap_b: float  # |A ∩ B| / |B|
    jaccard: float
    per_layer: list[dict[str, int]]  # {layer, a, b, both}
    same_model: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(a: NeuronSet, b: NeuronSet) -> Comparison:
    """Overlap of two neuron sets: |A∩B|/|A|, |A∩B|/|B|, Jaccard and a per-layer table."""
    ka, kb = a.keys(), b.keys()
    both = ka & kb
    union = ka | kb
    layers = sorted({x[0] for x in union})
    per_layer = [
        {
            "layer": layer,
            "a": sum(1 for x in ka if x[0] == layer),
            "b": sum(1 for x in kb if x[0] == layer),
            "both": sum(1 for x in both if x[0] == layer),
        }
        for layer in layers
    ]
    same = None
    if a.model is not None and b.model is not None:
        same = a.model.fingerprint == b.model.fingerprint
    return Comparison(
        size_a=len(ka),
        size_b=len(kb),
        intersection=len(both),
        overlap=len(both) / len(ka) if ka else 0.0,
        overlap_b=len(both) / len(kb) if kb else 0.0,
        jaccard=len(both) / len(union) if union else 0.0,
        per_layer=per_layer,
        same_model=same,
    )


def with_k(ns: NeuronSet, k: int) -> NeuronSet:
    """The first k neurons of a ranked set, with ``method.k`` updated."""
    out = ns.top(k)
    if out.method is not None:
        out = replace(out, method=replace(out.method, k=len(out.neurons)))
    return out
