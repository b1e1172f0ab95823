"""Optuna trials on the greedy path: how many of its neurons to keep, and each neuron type's factor.

A trial is a set measured like a greedy round (a masked forward pass over the calibration sentences of
the target and of every kept language). Two objectives, the target's loss rise (up) and the worst kept
language's (down), under the constraint that the kept rise stays within the calibration budget:
Optuna's multi-objective TPE with the trial's constraint (``set_constraint``), as heretic trades
refusals against KL.

Each trial's sampler is seeded by (seed, trial number) and sees only the finished trials, so a run
resumed from its saved trials asks exactly what an uninterrupted run would have asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tnedit.errors import InputError
from tnedit.tune.search import GreedyProblem, GreedyState, Measurement

STARTUP_TRIALS = 4  # random trials before TPE models the front
CONSTRAINT = "kept_rise_over_budget"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("--trials needs Optuna 5: pip install 'tnedit[tune]' (or pass --trials 0)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TrialSpace:
    """The search space: a prefix of the greedy order and one factor per neuron type."""

    min_prefix: int
    max_prefix: int
    factor_low: float
    factor_high: float

    def distributions(self, optuna: Any) -> dict[str, Any]:
        space = {"prefix": optuna.distributions.IntDistribution(self.min_prefix, self.max_prefix)}
        if self.factor_high > self.factor_low:
            for neuron_type in ("1", "2"):
                space[f"factor_{neuron_type}"] = optuna.distributions.FloatDistribution(self.factor_low,
                                                                                       self.factor_high)
        return space

    def factors(self, params: dict[str, Any]) -> dict[str, float]:
        return {t: float(params.get(f"factor_{t}", self.factor_low)) for t in ("1", "2")}

    def params(self, measurement: Measurement) -> dict[str, Any]:
        out: dict[str, Any] = {"prefix": measurement.prefix}
        if self.factor_high > self.factor_low:
            out.update({f"factor_{t}": measurement.factors[t] for t in ("1", "2")})
        return out


def measure(problem: GreedyProblem, order: list[tuple[int, int]], factors: dict[str, float]) -> dict[str, float]:
    """One trial's losses: a prefix of the greedy order with per-type factors."""
    return problem.losses(problem.factors_of(order, factors))


def _values(problem: GreedyProblem, state: GreedyState, m: Measurement) -> tuple[list[float], float]:
    """(objectives, constraint) of one measurement: target rise, worst kept rise; kept rise minus budget."""
    kept = problem.kept_damage(m.losses, state.base)
    target = m.losses[problem.target.language] - state.base[problem.target.language]
    return [target, kept], kept - problem.budget


def _add(optuna: Any, study: Any, space: TrialSpace, values: tuple[list[float], float], m: Measurement) -> None:
    objectives, constraint = values
    frozen = optuna.trial.create_trial(params=space.params(m), distributions=space.distributions(optuna),
                                       values=objectives)
    frozen.set_constraint(CONSTRAINT, constraint)
    study.add_trial(frozen)


def run_trials(problem: GreedyProblem, state: GreedyState, space: TrialSpace, trials: list[Measurement], *,
               total: int, seed: int, on_trial: Callable[[Measurement], None]) -> list[Measurement]:
    """Run trials until ``total`` are done (``trials`` holds those already measured); returns all of them."""
    optuna = _optuna()
    study = optuna.create_study(directions=["maximize", "minimize"])
    for m in [*state.rounds, *trials]:
        if space.min_prefix <= m.prefix <= space.max_prefix and _in_space(space, m):
            _add(optuna, study, space, _values(problem, state, m), m)
    done = list(trials)
    while len(done) < total:
        study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + len(done), multivariate=True,
                                                   n_startup_trials=STARTUP_TRIALS)
        trial = study.ask(space.distributions(optuna))
        factors = space.factors(trial.params)
        prefix = int(trial.params["prefix"])
        losses = measure(problem, state.order[:prefix], factors)
        m = Measurement(f"trial {len(done)}", "trial", prefix, factors, losses)
        objectives, constraint = _values(problem, state, m)
        trial.set_constraint(CONSTRAINT, constraint)
        study.tell(trial, objectives)
        done.append(m)
        on_trial(m)
    return done


def _in_space(space: TrialSpace, m: Measurement) -> bool:
    if space.factor_high <= space.factor_low:
        return all(f == space.factor_low for f in m.factors.values())
    return all(space.factor_low <= f <= space.factor_high for f in m.factors.values())
