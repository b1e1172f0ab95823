"""LAPE language-specific neurons (Tang et al., ACL 2024), the baseline transfer neurons are compared with.

Activation probability ``P[layer, neuron, language]`` is the share of all tokens of a language's text
on which the neuron's gate is positive; neurons with the lowest entropy of P over languages are
language-specific. The transfer-neurons paper reports that they overlap strongly with Type-2
transfer neurons; :func:`tnedit.identify.controls.compare` measures that overlap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tnedit.corpus import check_tokenizable, load_corpus
from tnedit.errors import CorpusError, InputError
from tnedit.formats.layers import parse_layers
from tnedit.formats.neurons import Method, Neuron, NeuronSet
from tnedit.identify.outputs import check_output_directory, save_neuron_set
from tnedit.identify.plan import Corpus
from tnedit.identify.settings import LapeSettings
from tnedit.model.batching import encode_batches, encode_texts, num_batches
from tnedit.model.distributed import SINGLE, World, join_world, rank_reporter
from tnedit.model.hooks import HookSet
from tnedit.model.loading import LoadedModel, dtype_name, load_model, resolve_max_length, stat_device
from tnedit.reporting import NullReporter, Reporter, resolve_reporter
from tnedit.versions import __version__


class ActivationCounter:
    """Hooks counting, per neuron, the real tokens where the act module's output is > 0.

    In a mixture-of-experts model a neuron is active where its activation ``a_i`` is > 0 on a token
    routed to its expert, and ``routed[layer]`` counts, per neuron, the real tokens routed to its
    expert (every token for shared experts and dense layers): the denominator of its probability.
    """

    def __init__(self, lm: LoadedModel, layers: Sequence[int]):
        self.lm = lm
        self.layers = list(layers)
        self.counts = self._zeros()
        self.routed = self._zeros() if lm.is_moe else None
        self.valid: torch.Tensor | None = None  # (B, T) tokens to count, set before each forward pass
        self.modules = [] if lm.is_moe else [lm.layer_module(layer, lm.arch.act) for layer in self.layers]
        if len({id(m) for m in self.modules}) != len(self.modules):
            raise InputError(f"{lm.arch.name}: the activation module '{lm.arch.act}' is shared between layers; "
                             "LAPE cannot tell the layers apart")
        self._hooks = HookSet()

    def _zeros(self) -> dict[int, torch.Tensor]:
        return {layer: torch.zeros(self.lm.intermediate_size, dtype=torch.float64,
                                   device=stat_device(self.lm.layer_device(layer))) for layer in self.layers}

    def __enter__(self) -> ActivationCounter:
        if self.lm.is_moe:
            for layer in self.layers:
                self.lm.watch_neurons(layer, self._hooks, self._count_routed(layer))
            return self
        for layer, module in zip(self.layers, self.modules, strict=True):
            self._hooks.add_post(module, self._hook(layer))
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.remove()

    def _hook(self, layer: int) -> Any:
        def hook(_module: Any, _args: Any, out: Any) -> None:
            x = out[0] if isinstance(out, tuple | list) else out
            x = x.reshape(-1, x.shape[-1])
            valid = self.valid.reshape(-1).to(x.device)
            counts = self.counts[layer]
            counts += ((x[valid] > 0).sum(0)).to(counts.device, torch.float64)

        return hook

    def _count_routed(self, layer: int) -> Any:
        def consumer(columns: torch.Tensor, routed: torch.Tensor | None) -> None:
            x = columns.reshape(-1, columns.shape[-1])
            valid = self.valid.reshape(-1, 1).to(x.device)
            routed = valid if routed is None else routed.reshape(x.shape) & valid
            counts, denominators = self.counts[layer], self.routed[layer]
            counts += ((x > 0) & routed).sum(0).to(counts.device, torch.float64)
            denominators += routed.expand_as(x).sum(0).to(denominators.device, torch.float64)

        return consumer


@dataclass
class ActivationCounts:
    """What the LAPE pass measured: ``probs[layer, neuron, language]`` and, per language, the tokens
    counted and the sentences cut to ``max_length``."""

    probs: np.ndarray
    tokens: dict[str, int]
    truncated: dict[str, int]
    max_length: int


def _count_language(lm: LoadedModel, rows: Sequence[str], layers: list[int], max_length: int, batch_size: int,
                    special: torch.Tensor, desc: str, reporter: Reporter,
                    world: World = SINGLE) -> tuple[dict[int, torch.Tensor], int, int]:
    """(activation probabilities per layer, tokens counted, sentences truncated) of one language's sentences,
    every rank's counts added."""
    encoded = encode_texts(lm.tokenizer, rows, max_length)
    counter = ActivationCounter(lm, layers)
    n_tokens = 0
    total = num_batches(len(rows), batch_size)
    batches = encode_batches(lm.tokenizer, encoded, batch_size, lm.device, only=world.owns)
    with reporter.progress(total, desc) as bar, counter, torch.inference_mode():
        for step, index in world.shared_steps(total):
            if index is not None:
                batch = next(batches)
                valid = batch.attention_mask.bool()
                if special.numel():
                    valid &= ~torch.isin(batch.input_ids, special.to(batch.input_ids.device))
                counter.valid = valid
                n_tokens += int(valid.sum().item())
                lm.base_model()(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            bar.update(world.step_batches(step, total))
    routed = {f"routed/{layer}": counter.routed[layer] for layer in layers} if counter.routed is not None else {}
    sums = world.all_reduce({**{str(layer): counter.counts[layer] for layer in layers}, **routed,
                             "tokens": torch.tensor([n_tokens], dtype=torch.int64)})
    n_tokens = int(sums["tokens"].item())
    # An expert's neurons are active on a share of the tokens routed to it; the others on a share of all.
    probabilities = {layer: sums[str(layer)] / (sums[f"routed/{layer}"].clamp_min(1.0) if routed else max(n_tokens, 1))
                     for layer in layers}
    return probabilities, n_tokens, encoded.n_truncated


def activation_probabilities(
    lm: LoadedModel,
    texts: Mapping[str, Sequence[str]],
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    max_length: int | None = None,
    exclude_special: bool = True,
    reporter: Reporter | None = None,
    world: World = SINGLE,
) -> ActivationCounts:
    """LAPE activation probabilities ``P[layer, neuron, language]`` over ALL tokens of each text.

    A neuron is active on a token when the registry's ``act`` module outputs > 0 (the gate
    ``act(W_gate x)`` for gated MLPs, the post-activation hidden unit for plain MLPs); a
    mixture-of-experts neuron when its activation is > 0 on a token routed to its expert, and its
    probability is over the tokens routed to that expert. Padding and,
    with ``exclude_special``, special tokens (BOS) are not counted. Sentences are cut to
    ``max_length`` tokens (default: the model's context, capped; see
    :func:`tnedit.model.loading.resolve_max_length`). No progress bar unless a ``reporter`` is given.
    Under a launcher the ranks of ``world`` share the batches and add their counts.
    """
    reporter = reporter or NullReporter()
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    max_length = resolve_max_length(lm, max_length)
    special_ids = sorted(set(lm.tokenizer.all_special_ids)) if exclude_special else []
    special = torch.tensor(special_ids, dtype=torch.long)
    counts = ActivationCounts(np.zeros((len(layers), lm.intermediate_size, len(texts))), {}, {}, max_length)
    for j, (lang, rows) in enumerate(texts.items()):
        layer_probs, n_tokens, truncated = _count_language(lm, rows, layers, max_length, batch_size, special,
                                                            f"{lang}:lape", reporter, world)
        counts.truncated[lang] = truncated
        if n_tokens == 0:
            raise CorpusError(f"LAPE: the '{lang}' sentences have no countable tokens")
        counts.tokens[lang] = n_tokens
        counts.probs[:, :, j] = torch.stack([layer_probs[layer].cpu() for layer in layers]).numpy()
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


def select_language_specific(
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


def lape_path(out_dir: str | os.PathLike[str], language: str) -> Path:
    return Path(out_dir) / f"neurons-{language}-lape.json"


def run_lape(
    settings: LapeSettings, *, lm: LoadedModel | None = None, corpus: Corpus | None = None,
    reporter: Reporter | None = None,
) -> dict[str, NeuronSet]:
    """LAPE language-specific neurons, one neuron set per language (method kind "lape").

    Writes ``neurons-<lang>-lape.json`` under ``settings.output`` (each atomically, once every
    language is measured) when it is set. Under a launcher the ranks share the batches; rank 0 alone writes.
    """
    settings.check()
    world = join_world(settings.device, settings.device_map)
    reporter = rank_reporter(world, resolve_reporter(reporter))
    languages = settings.languages()
    out_dir = Path(settings.output) if settings.output is not None else None
    from_data = corpus is None
    if corpus is None:  # before the model: a bad --data costs no model load
        corpus = load_corpus(settings.data, languages, limit=settings.limit)
    if lm is None:
        lm = load_model(settings.model, revision=settings.revision, dtype=settings.dtype,
                        device=settings.device, device_map=settings.device_map)
    if from_data:
        check_tokenizable(corpus, lm.tokenizer, languages)
    if out_dir is not None and lm.path is not None:
        check_output_directory(out_dir, lm.path)
    max_length = resolve_max_length(lm, settings.max_length)
    layers = parse_layers(settings.layers, lm.num_layers) or list(range(lm.num_layers))
    texts = {lang: list(corpus.column(lang)) for lang in languages}
    counts = activation_probabilities(lm, texts, layers, batch_size=settings.batch_size, max_length=max_length,
                                      reporter=reporter, world=world)
    if any(counts.truncated.values()):
        cut = ", ".join(f"{lang}:lape {n}" for lang, n in counts.truncated.items() if n)
        reporter.warn(f"sentences longer than {max_length} tokens were truncated ({cut})")
    selection = select_language_specific(counts.probs, languages, layers, top_rate=settings.top_rate,
                                         filter_rate=settings.filter_rate, bar_rate=settings.bar_rate)
    info = lm.model_info()
    if lm.is_moe:  # columns to (layer, expert, index)
        space = lm.neuron_space
        selection.neurons = {lang: [space.neuron(n.layer, n.index, n.score) for n in neurons]
                             for lang, neurons in selection.neurons.items()}
    sets = {lang: NeuronSet(neurons=selection.neurons[lang], model=info,
                            method=_lape_method(settings, lm, corpus, layers, selection, counts, lang))
            for lang in languages}
    if out_dir is not None and world.is_main:
        for lang, neurons in sets.items():
            save_neuron_set(neurons, lape_path(out_dir, lang))
    return sets


def _lape_method(settings: LapeSettings, lm: LoadedModel, corpus: Corpus, layers: list[int],
                 selection: LapeSelection, counts: ActivationCounts, lang: str) -> Method:
    return Method(
        kind="lape",
        type=None,
        language=lang,
        languages=list(settings.languages()),
        layers=layers,
        k=len(selection.neurons[lang]),
        data={"source": str(corpus.source), "sha256": corpus.sha256,
              "n_sentences": len(corpus.column(lang)), "n_tokens": counts.tokens[lang]},
        position="all",
        dtype=dtype_name(lm.dtype),
        tokenizer=lm.tokenizer_facts(),
        tnedit_version=__version__,
        extra={"score": "LAPE entropy (lower = more language-specific)", "top_rate": settings.top_rate,
               "filter_rate": settings.filter_rate, "bar_rate": settings.bar_rate,
               "filter_value": selection.filter_value, "bar_value": selection.bar_value,
               "max_length": counts.max_length, "truncated": {f"{lang}:lape": counts.truncated[lang]}},
    )
