"""Finding transfer neurons (Tezuka & Inoue, EMNLP 2025): :func:`run_identify` and its result.

For each target language L2 (English is the shared language), at the last token: a centroid pass
over the English and L2 sentences of the pairs, a score pass over the L2 sentences
(:mod:`tnedit.identify.passes`), then the global top k of the candidate layers
(:mod:`tnedit.identify.selection`). Both types' scores are computed for every layer (a few extra
rows in the last-token product), so ``select`` can re-rank any layers later without a forward pass.

The library knows no command line; :mod:`tnedit.cli.identify` is the thin CLI shell.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tnedit.formats.digest import sha256_texts
from tnedit.formats.neurons import DEFAULT_CENTROIDS, ModelInfo, NeuronSet
from tnedit.formats.scores import ScoresFile
from tnedit.identify.outputs import save_neuron_set, save_scores_file
from tnedit.identify.passes import CentroidPass, RunningSums, ScorePass, last_layer_norm, mask_padding, stack
from tnedit.identify.plan import Corpus, IdentifyPlan, resolve_plan
from tnedit.identify.resume import BatchCallback, Runner, open_resume_store
from tnedit.identify.selection import select_from_scores
from tnedit.identify.settings import SHARED_LANGUAGE, IdentifySettings
from tnedit.identify.stats import eta_squared_from_sums
from tnedit.model.distributed import World, join_world, rank_reporter
from tnedit.model.loading import LoadedModel, dtype_name
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.versions import __version__


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
    mean_abs_activation: np.ndarray | None = None  # float64 [layers, intermediate], English, every real token


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
        for (language, t), neurons in self.neuron_sets.items():
            extra = neurons.method.extra if neurons.method else {}
            sets.append({
                "language": language,
                "type": t,
                "k": len(neurons),
                "layers": self.candidate_layers[t],
                "per_layer": {str(k): v for k, v in neurons.per_layer_counts().items()},
                **({"per_expert": neurons.per_expert_counts()} if neurons.has_experts else {}),
                "eta2_share": extra.get("eta2_share"),
                "file": str(self.set_files[(language, t)]) if (language, t) in self.set_files else None,
            })
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


def english_key(en: list[str], max_length: int) -> str:
    """Names one English pass (its sentences and length), so languages with the same English share it."""
    return f"{sha256_texts(en, separator=chr(0), length=16, terminated=True)}-{max_length}"


class Measurements:
    """The centroid and score passes of each language, sharing one English pass between languages.

    ``centroids`` is the settings' source of the centroid states (the English pass it caches is of that source).
    """

    def __init__(self, lm: LoadedModel, runner: Runner, *, with_en: bool, eta2: bool,
                 centroids: str = DEFAULT_CENTROIDS):
        self.lm, self.runner, self.with_en, self.eta2 = lm, runner, with_en, eta2
        self.norm = last_layer_norm(lm, centroids)
        self.en_cache: dict[str, tuple[RunningSums, int]] = {}  # en_key -> (sums, sentences truncated)
        self.truncated: dict[str, int] = {}  # pass name -> sentences its statistics rest on that were cut

    def language(self, language: str, en: list[str], l2: list[str]) -> LanguageStats:
        all_layers = list(range(self.lm.num_layers))
        en_key = english_key(en, self.runner.max_length)
        cached = self.en_cache.get(en_key) if self.with_en else None
        centroid_pass = CentroidPass(self.lm, language, en if (self.with_en and cached is None) else None, l2,
                                     all_layers, en_key, with_acts=self.eta2, norm=self.norm)
        cut = self.runner.run(centroid_pass)
        if centroid_pass.en is not None:
            self.en_cache[en_key] = (centroid_pass.en, sum(cut[: centroid_pass.n_en_texts]))
        en_sums, en_cut = self.en_cache[en_key] if self.with_en else (None, 0)
        self.truncated[f"{language}:centroids"] = en_cut + sum(cut[centroid_pass.n_en_texts :])
        l2_sums = centroid_pass.l2
        centroids: dict[int, np.ndarray] = {2: stack(l2_sums.h) / l2_sums.n}
        if en_sums is not None:
            centroids[1] = (stack(en_sums.h) / en_sums.n + centroids[2]) / 2.0
        score_pass = ScorePass(self.lm, language, l2, all_layers, centroids)
        self.truncated[f"{language}:scores"] = sum(self.runner.run(score_pass))
        scores = {t: mask_padding(self.lm, values) for t, values in score_pass.means().items()}
        return LanguageStats(language, len(l2), scores, centroids, self._eta2(l2_sums, en_sums),
                             en_sums.n if en_sums is not None else 0, l2_sums.n,
                             en_sums.mean_abs() if en_sums is not None else None)

    def _eta2(self, l2: RunningSums, en: RunningSums | None) -> np.ndarray | None:
        if not self.eta2 or en is None or en.a is None or en.a2 is None or l2.a is None or l2.a2 is None:
            return None
        return eta_squared_from_sums(stack(l2.a), stack(l2.a2), l2.n, stack(en.a), stack(en.a2), en.n)


def _resume_key(plan: IdentifyPlan, world: World) -> dict[str, Any]:
    """What a resume state must have been made with: a state of other settings is refused.

    A data-parallel state holds each rank's partial sums, so it resumes with as many ranks only.
    """
    settings, lm = plan.settings, plan.lm
    ranks = {"world_size": world.size} if world.is_distributed else {}
    return {**ranks,
        "model": lm.name_or_path,
        "model_fingerprint": lm.fingerprint(),
        "data_sha256": plan.corpus.sha256,
        "languages": list(plan.languages),
        "types": list(plan.types),
        "batch_size": settings.batch_size,
        "max_length": plan.max_length,
        "dtype": dtype_name(lm.dtype),
        "eta2": bool(settings.eta2),
        "exclude_massive": float(settings.exclude_massive),  # it may add the English pass
        "centroids": settings.centroids,  # the last layer's sums differ between the two sources
        "tnedit_version": __version__,
    }


def _pairs(corpus: Corpus, language: str) -> tuple[list[str], list[str]]:
    """(English sentences, L2 sentences) of the corpus's en–L2 pairs, aligned."""
    pairs = corpus.pairs(SHARED_LANGUAGE, language)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _method_base(plan: IdentifyPlan, stats: LanguageStats, truncated: dict[str, int]) -> dict[str, Any]:
    """The method block every neuron set of one language records (and its scores file keeps, so ``select`` does).

    ``centroids`` only when it is not the default: a default run's scores file stays byte-identical.
    """
    lm, language = plan.lm, stats.language
    base: dict[str, Any] = {
        "data": {"source": str(plan.corpus.source), "sha256": plan.corpus.sha256, "n_pairs": stats.n_pairs},
        "dtype": dtype_name(lm.dtype),
        "tokenizer": lm.tokenizer_facts(),
        "extra": {"batch_size": plan.settings.batch_size, "max_length": plan.max_length,
                  "truncated": {name: n for name, n in truncated.items() if name.startswith(f"{language}:")}},
    }
    if plan.settings.centroids != DEFAULT_CENTROIDS:
        base["centroids"] = plan.settings.centroids
    return base


def _select_and_write(result: IdentifyResult, plan: IdentifyPlan, stats: LanguageStats, method: dict[str, Any],
                      reporter: Reporter, out_dir: Path | None) -> None:
    """Rank one language's neurons for every requested type; write its scores file and neuron sets to ``out_dir``."""
    file_layers = {t: plan.file_layers[t] for t in stats.scores}
    scores = ScoresFile(stats.language, stats.scores, stats.eta2, result.model, file_layers, method, stats.n_en,
                        stats.n_l2, mean_abs_activation=stats.mean_abs_activation,
                        neuron_columns=plan.lm.neuron_space.columns() if plan.lm.is_moe else None)
    if out_dir is not None:
        scores.path = save_scores_file(scores, out_dir / f"scores-{stats.language}.safetensors")
        result.files.append(scores.path)
    for t in result.types:
        neurons = select_from_scores(scores, t, plan.settings.k, result.candidate_layers[t],
                                     exclude_massive=plan.settings.exclude_massive, reporter=reporter)
        if out_dir is not None:
            path = save_neuron_set(neurons, out_dir / f"neurons-{stats.language}-type{t}.json")
            result.files.append(path)
            result.set_files[(stats.language, t)] = path
        result.neuron_sets[(stats.language, t)] = neurons


def run_identify(
    settings: IdentifySettings,
    *,
    lm: LoadedModel | None = None,
    corpus: Corpus | None = None,
    on_batch: BatchCallback | None = None,
    reporter: Reporter | None = None,
) -> IdentifyResult:
    """Find Type-1 and/or Type-2 transfer neurons for each target language of ``settings``.

    ``lm`` and ``corpus`` may be passed to reuse a loaded model or a loaded corpus (any
    :class:`~tnedit.identify.plan.Corpus`). ``on_batch(pass_name, done, total)`` is called after every
    batch (and after any save of the resume state): raising from it interrupts the run like a crash
    would. Writes ``neurons-<lang>-type<t>.json`` and ``scores-<lang>.safetensors`` under
    ``settings.output`` when it is set, each file atomically, and only once every pass is done.
    Sentences are cut to ``settings.max_length`` tokens (default: the model's context length, at most
    :data:`tnedit.model.loading.MAX_LENGTH_CAP`); ``result.truncated`` counts them per pass.

    Under ``torchrun``/``accelerate launch`` the ranks share the batches (:mod:`tnedit.model.distributed`):
    every rank returns the same result, and rank 0 alone writes the files and shows progress.
    """
    started = time.perf_counter()
    world = join_world(settings.device, settings.device_map)
    reporter = rank_reporter(world, resolve_reporter(reporter))
    plan = resolve_plan(settings, lm=lm, corpus=corpus)
    store = open_resume_store(plan.out_dir, _resume_key(plan, world), checkpoint_every=settings.checkpoint_every,
                              resume=settings.resume, reporter=reporter, world=world)
    runner = Runner(plan.lm, batch_size=settings.batch_size, max_length=plan.max_length, store=store,
                    checkpoint_every=settings.checkpoint_every, on_batch=on_batch, reporter=reporter, world=world)
    with_en = 1 in plan.types or settings.eta2 or settings.exclude_massive > 0
    measured = Measurements(plan.lm, runner, with_en=with_en, eta2=settings.eta2, centroids=settings.centroids)
    stats = {language: measured.language(language, *_pairs(plan.corpus, language)) for language in plan.languages}
    if any(measured.truncated.values()):
        cut = ", ".join(f"{name} {n}" for name, n in measured.truncated.items() if n)
        reporter.warn(f"sentences longer than {plan.max_length} tokens were truncated ({cut})")
    result = IdentifyResult(plan.lm.model_info(), list(plan.languages), plan.types, plan.candidate_layers, stats, {},
                            batches=runner.batches, max_length=plan.max_length, truncated=dict(measured.truncated))
    for language_stats in stats.values():
        method = json.loads(json.dumps(_method_base(plan, language_stats, measured.truncated)))
        _select_and_write(result, plan, language_stats, method, reporter, plan.out_dir if world.is_main else None)
    if store is not None:
        store.remove()
    result.seconds = time.perf_counter() - started
    return result
