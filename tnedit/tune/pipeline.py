"""``tnedit tune``: :func:`run_tune` finds the neuron set that breaks one language and keeps the others.

1. identify ranks Type-1 and Type-2 transfer neurons on the training pairs (the validation rows left
   out), massive-activation neurons excluded: the top ``pool`` of each type are the candidates;
2. the measured greedy path (:mod:`tnedit.tune.search`) grows a set round by round;
3. Optuna trials (:mod:`tnedit.tune.refine`) try prefixes of that path with per-type factors;
4. the point of most target damage within budget on calibration *and* validation is chosen
   (:func:`tnedit.tune.front.choose`) and written as an ordinary ``tnedit.neurons/1`` set.

The state is saved after every measured set, so ``resume`` continues where an interruption stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tnedit.errors import TuneError, UnsupportedArchitectureError
from tnedit.formats.outputs import check_output_file
from tnedit.identify.pipeline import run_identify
from tnedit.identify.settings import IdentifySettings, default_layers
from tnedit.model.loading import LoadedModel, dtype_name, load_model, resolve_max_length
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.tune.data import TuneData, load_tune_data
from tnedit.tune.front import Point, choose, to_points
from tnedit.tune.outputs import TuneOutputs, front_document, output_names, search_settings, selective_set, write_outputs
from tnedit.tune.probe import CalibrationTexts, Probe, encode_calibration, identity_factors
from tnedit.tune.refine import TrialSpace, measure, run_trials
from tnedit.tune.search import GreedyProblem, Measurement, advance, measure_round
from tnedit.tune.settings import TuneSettings
from tnedit.tune.state import TuneState, TuneStore
from tnedit.versions import __version__


@dataclass
class TuneResult:
    settings: TuneSettings
    chosen: Point
    points: list[Point]
    base_perplexity: dict[str, float]
    order: list[tuple[int, int]]
    outputs: TuneOutputs | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What ``tnedit tune --json`` prints; ``neurons`` is the chosen set's path."""
        chosen = self.chosen
        return {
            "model": self.settings.model, "target": self.settings.lang, "kept": self.settings.kept_languages(),
            "neurons": str(self.outputs.neurons) if self.outputs else None,
            "front": str(self.outputs.front) if self.outputs else None,
            "plot": str(self.outputs.plot) if self.outputs else None,
            "n_neurons": chosen.measurement.prefix, "factors": chosen.measurement.factors,
            "chosen": chosen.measurement.label,
            "calibration": {"target_ratio": chosen.target_ratio, "kept_ratios": chosen.kept_ratios},
            "validation": chosen.validation, "base_perplexity": self.base_perplexity,
            "budget": {"max_ppl_increase": self.settings.max_ppl_increase,
                       "calibration": self.settings.calibration_budget(),
                       "validation": self.settings.validation_budget()},
            "points": len(self.points), "on_front": sum(p.on_front for p in self.points),
            "seconds": round(self.seconds, 1), "data": self.data,
        }


def _resume_key(settings: TuneSettings, lm: LoadedModel, data: TuneData, max_length: int) -> dict[str, Any]:
    shaping = ("lang", "max_neurons", "max_ppl_increase", "margin", "op", "factor", "calibration", "validation",
               "rounds", "pool", "exclude_massive", "seed", "batch_size", "limit")
    return {"model_fingerprint": lm.fingerprint(), "data": dict(data.digests), "kept": settings.kept_languages(),
            "dtype": dtype_name(lm.dtype), "max_length": max_length, "tnedit_version": __version__,
            **{name: getattr(settings, name) for name in shaping}}


def _candidate_pool(settings: TuneSettings, lm: LoadedModel, data: TuneData, reporter: Reporter) -> dict[str, Any]:
    """identify's top ``pool`` Type-1 and Type-2 neurons of the target, massive-activation neurons excluded.

    A pool larger than a type's candidates takes them all (capped here, so identify has nothing to warn of).
    """
    total = lm.num_layers * lm.intermediate_size
    fewest = min(len(default_layers(t, lm.num_layers)) for t in (1, 2)) * lm.intermediate_size
    pool = max(1, min(settings.pool, fewest - math.ceil(settings.exclude_massive * total)))
    identify = IdentifySettings(model=settings.model, langs=[settings.lang], type="both", k=pool,
                                exclude_massive=settings.exclude_massive, batch_size=min(settings.batch_size, 16),
                                max_length=settings.max_length, eta2=False)
    result = run_identify(identify, lm=lm, corpus=data.identify_corpus, reporter=reporter)
    return {str(t): [[n.layer, n.index] for n in result.neurons(settings.lang, t).neurons] for t in (1, 2)}


def _problem(settings: TuneSettings, probe: Probe, texts: dict[str, CalibrationTexts],
             pool: dict[str, list[list[int]]]) -> GreedyProblem:
    lm = probe.lm
    candidates = np.zeros((lm.num_layers, lm.intermediate_size), dtype=bool)
    for members in pool.values():
        for layer, index in members:
            candidates[layer, index] = True
    types = np.full(candidates.shape, 2, dtype=np.int8)
    types[default_layers(1, lm.num_layers)] = 1
    return GreedyProblem(probe, texts[settings.lang], [texts[k] for k in settings.kept_languages()], candidates,
                         types, settings.edit_factor(), settings.max_neurons,
                         math.log1p(settings.calibration_budget()))


def _greedy(problem: GreedyProblem, state: TuneState, settings: TuneSettings, save: Callable[[], None],
            reporter: Reporter) -> None:
    greedy = state.greedy
    with reporter.progress(settings.rounds + 1, "tune: greedy rounds", unit="round") as bar:
        bar.update(len(greedy.rounds))
        while not state.greedy_done:
            final = len(greedy.rounds) == settings.rounds or len(greedy.order) >= settings.max_neurons
            grads = measure_round(problem, greedy, final=final)
            before = list(greedy.order)
            if not final:
                advance(problem, greedy, grads, settings.rounds - len(greedy.rounds) + 1)
            state.greedy_done = final or greedy.order == before
            save()
            bar.update(1)
            reporter.log(_round_line(greedy.rounds[-1], greedy.base))


def _round_line(m: Measurement, base: dict[str, float]) -> str:
    ratios = ", ".join(f"{lang} ×{math.exp(loss - base[lang]):.3g}" for lang, loss in m.losses.items())
    return f"tune: {m.label}: {m.prefix} neurons: {ratios}"


def _trials(problem: GreedyProblem, state: TuneState, settings: TuneSettings, save: Callable[[], None],
            reporter: Reporter) -> None:
    order = state.greedy.order
    if settings.trials == 0 or not order:
        return
    low, high = settings.trial_factor_range()
    space = TrialSpace(max(1, len(order) // 4), len(order), low, high)

    with reporter.progress(settings.trials, "tune: Optuna trials", unit="trial") as bar:
        bar.update(len(state.trials))

        def on_trial(m: Measurement) -> None:
            state.trials.append(m)
            save()
            bar.update(1)

        run_trials(problem, state.greedy, space, list(state.trials), total=settings.trials, seed=settings.seed,
                   on_trial=on_trial)


def _validator(problem: GreedyProblem, order: list[tuple[int, int]],
               validation: dict[str, CalibrationTexts]) -> Callable[[Measurement], dict[str, float]]:
    """Perplexity ratios of a measured set on the validation split (the unedited losses measured once)."""
    held_out = problem.on(validation)
    base = held_out.losses(identity_factors(problem.probe.lm))

    def validate(m: Measurement) -> dict[str, float]:
        losses = measure(held_out, order[: m.prefix], m.factors)
        return {lang: math.exp(losses[lang] - base[lang]) for lang in losses}

    return validate


def run_tune(settings: TuneSettings, *, lm: LoadedModel | None = None, reporter: Reporter | None = None) -> TuneResult:
    """Search the neuron set that breaks ``settings.lang`` within the kept languages' perplexity bound.

    Writes ``neurons-<lang>-selective.json``, ``front-<lang>.json`` and ``front-<lang>.png`` under
    ``settings.output``, each atomically, once the search is done; raises :class:`~tnedit.errors.TuneError`
    (nothing written) when no set stays within the bound on the validation split.
    """
    reporter = resolve_reporter(reporter)
    started = time.perf_counter()
    settings.check()
    data = load_tune_data(settings)
    out_dir = Path(settings.output)  # type: ignore[arg-type]
    for name in output_names(settings.lang):
        check_output_file(out_dir / name, overwrite=True, inputs=[d for d in settings.data if not d.startswith("hf:")])
    if lm is None:
        lm = load_model(settings.model, revision=settings.revision, dtype=settings.dtype, device=settings.device)
    if lm.is_moe:  # its probe masks dense output-projection inputs; experts need per-expert masks first
        raise UnsupportedArchitectureError(f"{settings.model}: tune does not support mixture-of-experts models "
                                           f"({lm.arch.name}) yet; identify, apply and evaluate do")
    max_length = resolve_max_length(lm, settings.max_length)
    store = TuneStore(out_dir, _resume_key(settings, lm, data, max_length))
    state = store.open(settings.resume, reporter)
    if not state.pool:
        state.pool = _candidate_pool(settings, lm, data, reporter)
        store.save(state)
    probe = Probe(lm, reporter)

    def encode(split: dict[str, list[str]]) -> dict[str, CalibrationTexts]:
        return {lang: encode_calibration(lm, lang, s, settings.batch_size, max_length) for lang, s in split.items()}

    problem = _problem(settings, probe, encode(data.calibration), state.pool)
    _greedy(problem, state, settings, lambda: store.save(state), reporter)
    _trials(problem, state, settings, lambda: store.save(state), reporter)
    greedy = state.greedy
    points = to_points([*greedy.rounds, *state.trials], greedy.base, settings.lang, settings.kept_languages(),
                       settings.calibration_budget())
    try:
        if not greedy.order:
            raise TuneError(f"tune: no candidate neuron raises the {settings.lang} loss on the calibration sentences")
        chosen = choose(points, _validator(problem, greedy.order, encode(data.validation)),
                        settings.validation_budget())
    except TuneError:
        store.remove()  # a finished search without a result: nothing to resume, nothing written
        raise
    base = {lang: math.exp(loss) for lang, loss in greedy.base.items()}
    result = TuneResult(settings, chosen, points, base, list(greedy.order), data=data.describe())
    neuron_set = selective_set(settings, lm, chosen, greedy.order, problem.neuron_types, data.describe())
    front = front_document(points, chosen, target=settings.lang, kept=settings.kept_languages(),
                           base_perplexity=base, order=greedy.order, settings=search_settings(settings))
    result.outputs = write_outputs(settings, neuron_set, points, chosen, front, out_dir)
    store.remove()
    result.seconds = time.perf_counter() - started
    return result
