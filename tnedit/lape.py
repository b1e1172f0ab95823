"""LAPE language-specific neurons (Tang et al., ACL 2024), the baseline transfer neurons are compared with.

Activation probability ``P[layer, neuron, language]`` is the share of all tokens of a language's text
on which the neuron's gate is positive; neurons with the lowest entropy of P over languages are
language-specific. The transfer-neurons paper reports that they overlap strongly with Type-2
transfer neurons; :func:`tnedit.identify.compare` measures that overlap.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnedit import __version__
from tnedit.model.batching import encode_batches, encode_texts, num_batches
from tnedit.model.loading import LoadedModel, dtype_name, load_model, resolve_max_length, stat_device
from tnedit.reporting import NullReporter, TqdmReporter
from tnedit.errors import CorpusError, InputError
from tnedit.identify import (
    IdentifyWarning,
    PassSettings,
    check_output_directory,
    parse_languages,
    parse_layers,
    save_neuron_set,
)
from tnedit.formats.neurons import Method, Neuron, NeuronSet


class _ActCounter:
    """Hooks counting, per neuron, the real tokens where the act module's output is > 0."""

    def __init__(self, lm: LoadedModel, layers: Sequence[int]):
        self.lm = lm
        self.layers = list(layers)
        self.counts = {
            layer: torch.zeros(lm.intermediate_size, dtype=torch.float64,
                               device=stat_device(lm.out_proj(layer).weight.device))
            for layer in self.layers
        }
        self.valid: torch.Tensor | None = None
        self._handles: list[Any] = []
        mods = [lm.layer_module(layer, lm.arch.act) for layer in self.layers]
        if len({id(m) for m in mods}) != len(mods):
            raise InputError(f"{lm.arch.name}: the activation module '{lm.arch.act}' is shared between layers; "
                             "LAPE cannot tell the layers apart")
        self.modules = mods

    def __enter__(self) -> _ActCounter:
        for layer, mod in zip(self.layers, self.modules, strict=True):
            self._handles.append(mod.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            x = out[0] if isinstance(out, tuple | list) else out
            x = x.reshape(-1, x.shape[-1])
            valid = self.valid.reshape(-1).to(x.device)
            counts = self.counts[layer]
            counts += ((x[valid] > 0).sum(0)).to(counts.device, torch.float64)

        return hook


@dataclass
class ActivationCounts:
    """What the LAPE pass measured: ``probs[layer, neuron, language]`` and, per language, the tokens
    counted and the sentences cut to ``max_length``."""

    probs: np.ndarray
    tokens: dict[str, int]
    truncated: dict[str, int]
    max_length: int


def activation_probabilities(
    lm: LoadedModel,
    texts: Mapping[str, Sequence[str]],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    quiet: bool = True,
    exclude_special: bool = True,
) -> ActivationCounts:
    """LAPE activation probabilities ``P[layer, neuron, language]`` over ALL tokens of each text.

    A neuron is active on a token when the registry's ``act`` module outputs > 0 (the gate
    ``act(W_gate x)`` for gated MLPs, the post-activation hidden unit for plain MLPs). Padding and,
    with ``exclude_special``, special tokens (BOS) are not counted. Sentences are cut to
    ``max_length`` tokens (default: the model's context, capped; see
    :func:`tnedit.capture.resolve_max_length`).
    """
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    max_length = resolve_max_length(lm, max_length)
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)), dtype=torch.long)
    counts = ActivationCounts(np.zeros((len(layers), lm.intermediate_size, len(texts))), {}, {}, max_length)
    for j, (lang, rows) in enumerate(texts.items()):
        encoded = encode_texts(lm.tokenizer, rows, max_length)
        counts.truncated[lang] = encoded.n_truncated
        counter = _ActCounter(lm, layers)
        n_tok = 0
        bar = (NullReporter() if quiet else TqdmReporter()).bar(num_batches(len(rows), batch_size), f"{lang}:lape")
        with counter, torch.inference_mode():
            for batch in encode_batches(lm.tokenizer, encoded, batch_size, lm.device):
                valid = batch.attention_mask.bool()
                if exclude_special and special.numel():
                    valid &= ~torch.isin(batch.input_ids, special.to(batch.input_ids.device))
                counter.valid = valid
                n_tok += int(valid.sum().item())
                lm.base_model()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
                bar.update(1)
        bar.close()
        if n_tok == 0:
            raise CorpusError(f"LAPE: the '{lang}' sentences have no countable tokens")
        counts.tokens[lang] = n_tok
        counts.probs[:, :, j] = torch.stack([counter.counts[layer].cpu() for layer in layers]).numpy() / n_tok
    return counts


def _kth_value(flat: np.ndarray, rate: float) -> float:
    """torch.kthvalue(flat, round(len·rate)): the k-th smallest (1-based), as in the LAPE code."""
    k = min(max(int(round(flat.size * rate)), 1), flat.size)
    return float(np.partition(flat, k - 1)[k - 1])


@dataclass
class LapeSelection:
    """LAPE output: per-language neurons, plus the thresholds and entropies used."""

    neurons: dict[str, list[Neuron]]
    entropy: np.ndarray  # [len(layers), m]
    filter_value: float
    bar_value: float
    layers: list[int]


def lape(
    probs: np.ndarray,
    languages: Sequence[str],
    layers: Sequence[int] | None = None,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    bar_rate: float = 0.95,
) -> LapeSelection:
    """Language-specific neurons by activation-probability entropy (Tang et al., ACL 2024).

    ``probs`` is ``P[layer, neuron, language]`` over ``layers`` (default 0..L−1). Normalise over
    languages, entropy ``−Σ P' log P'``; neurons whose P exceeds the ``filter_rate`` quantile of all
    P in no language are dropped; the lowest-entropy ``top_rate`` of all neurons are kept; each is
    assigned to every language whose P exceeds the ``bar_rate`` quantile. Within a language,
    neurons are ordered by entropy (ascending); ``score`` is the entropy.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != len(languages):
        raise InputError(f"LAPE: probabilities of shape {p.shape} do not match {len(languages)} languages")
    layers = list(range(p.shape[0])) if layers is None else list(layers)
    total = p.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = np.where(total > 0, p / np.where(total > 0, total, 1.0), 0.0)
        logp = np.where(normed > 0, np.log(np.where(normed > 0, normed, 1.0)), 0.0)
    entropy = -(normed * logp).sum(axis=-1)
    flat = p.ravel()
    filter_value = _kth_value(flat, filter_rate)
    keep = (p > filter_value).sum(axis=-1) > 0
    entropy = np.where(keep, entropy, np.inf)
    n_top = int(round(entropy.size * top_rate))
    order = np.argsort(entropy.ravel(), kind="stable")[:n_top]
    bar_value = _kth_value(flat, bar_rate)
    m = p.shape[1]
    out: dict[str, list[Neuron]] = {lang: [] for lang in languages}
    for idx in order:
        li, ni = int(idx) // m, int(idx) % m
        for j, lang in enumerate(languages):
            if p[li, ni, j] > bar_value:
                out[lang].append(Neuron(layers[li], ni, score=float(entropy[li, ni])))
    return LapeSelection(out, entropy, filter_value, bar_value, layers)


@dataclass
class LapeSettings(PassSettings):
    top_rate: float = 0.01
    filter_rate: float = 0.95
    bar_rate: float = 0.95


def lape_path(out_dir: str | os.PathLike[str], language: str) -> Path:
    return Path(out_dir) / f"neurons-{language}-lape.json"


def identify_lape(
    settings: LapeSettings, *, lm: LoadedModel | None = None, corpus: Any | None = None
) -> dict[str, NeuronSet]:
    """LAPE language-specific neurons, one neuron set per language (method kind "lape").

    Writes ``neurons-<lang>-lape.json`` under ``settings.output`` (each atomically, once every
    language is measured) when it is set.
    """
    langs = parse_languages(settings.langs)
    if len(langs) < 2:
        raise InputError("--method lape needs at least two languages (e.g. --langs en,ja,ko)")
    if settings.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {settings.batch_size}")
    if settings.limit is not None and settings.limit < 1:
        raise InputError(f"--limit must be at least 1, got {settings.limit}")
    out_dir = Path(settings.output) if settings.output is not None else None
    if out_dir is not None:
        check_output_directory(out_dir, settings.model)
    from tnedit import corpus as corpus_mod

    from_data = corpus is None
    if from_data:  # before the model: a bad --data costs no model load
        corpus = corpus_mod.load_corpus(settings.data, langs, limit=settings.limit)
    if lm is None:
        lm = load_model(settings.model, revision=settings.revision, dtype=settings.dtype,
                        device=settings.device, device_map=settings.device_map)
    if from_data:
        corpus_mod.check_tokenizable(corpus, lm.tokenizer, langs)
    if out_dir is not None and lm.path is not None:
        check_output_directory(out_dir, lm.path)
    max_length = resolve_max_length(lm, settings.max_length)
    layers = parse_layers(settings.layers, lm.num_layers) or list(range(lm.num_layers))
    texts = {lang: list(corpus.column(lang)) for lang in langs}
    counts = activation_probabilities(lm, texts, layers, batch_size=settings.batch_size, max_length=max_length,
                                      quiet=settings.quiet)
    if any(counts.truncated.values()):
        cut = ", ".join(f"{lang}:lape {n}" for lang, n in counts.truncated.items() if n)
        warnings.warn(f"sentences longer than {max_length} tokens were truncated ({cut})", IdentifyWarning,
                      stacklevel=2)
    sel = lape(counts.probs, langs, layers, top_rate=settings.top_rate, filter_rate=settings.filter_rate,
               bar_rate=settings.bar_rate)
    info = lm.model_info()
    sets = {lang: NeuronSet(neurons=sel.neurons[lang], model=info,
                            method=_lape_method(settings, lm, corpus, langs, layers, sel, counts, lang))
            for lang in langs}
    if out_dir is not None:
        for lang, ns in sets.items():
            save_neuron_set(ns, lape_path(out_dir, lang))
    return sets


def _lape_method(settings: LapeSettings, lm: LoadedModel, corpus: Any, langs: Sequence[str], layers: list[int],
                 sel: LapeSelection, counts: ActivationCounts, lang: str) -> Method:
    return Method(
        kind="lape",
        type=None,
        language=lang,
        languages=list(langs),
        layers=layers,
        k=len(sel.neurons[lang]),
        data={"source": str(getattr(corpus, "source", settings.data)), "sha256": getattr(corpus, "sha256", None),
              "n_sentences": len(corpus.column(lang)), "n_tokens": counts.tokens[lang]},
        position="all",
        dtype=dtype_name(lm.dtype),
        tokenizer=lm.tokenizer_facts(),
        tnedit_version=__version__,
        extra={"score": "LAPE entropy (lower = more language-specific)", "top_rate": settings.top_rate,
               "filter_rate": settings.filter_rate, "bar_rate": settings.bar_rate,
               "filter_value": sel.filter_value, "bar_value": sel.bar_value,
               "max_length": counts.max_length, "truncated": {f"{lang}:lape": counts.truncated[lang]}},
    )
