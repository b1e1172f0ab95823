"""The measured greedy path: each round measures the current set, then re-ranks the candidates at it.

Round r runs a forward and a backward pass over the calibration sentences of the target and of every
kept language with the current edit (:meth:`~tnedit.tune.probe.Probe.attribution`). The forward part
is the set's real effect; the backward part gives every neuron's first-order effect *at the current
edit*, so neurons whose work the set already removed, or whose effect it amplified, are re-estimated
before the next additions (iterative, not one-shot, attribution). A candidate is ranked by

    estimated target damage / (|estimated worst kept-language change| + budget / max_neurons),

so a neuron that moves a kept language either way pays for it, and one that moves none is ranked by
its target damage alone. A round adds its share of the remaining slots, stopping early once the
estimated kept change of the additions reaches half the remaining budget (first-order estimates run
small for large neurons). A round that finds the measured kept damage over budget removes the tenth
of the set whose restoration helps the kept languages most per unit of target damage it gives back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tnedit.tune.probe import CalibrationTexts, Probe

RESTORE_SHARE = 0.1  # of the set, removed by a round that finds the kept languages over budget
SPEND_SHARE = 0.5  # of the remaining budget, the estimated kept change one round may add


@dataclass
class Measurement:
    """The calibration losses (mean NLL per token) of one neuron set the search tried."""

    label: str  # "round 3", "trial 5"
    stage: str  # "greedy" | "trial"
    prefix: int  # the first ``prefix`` neurons of the greedy order
    factors: dict[str, float]  # the factor of each neuron type ("1", "2")
    losses: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "stage": self.stage, "prefix": self.prefix, "factors": dict(self.factors),
                "losses": dict(self.losses)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Measurement:
        return cls(str(raw["label"]), str(raw["stage"]), int(raw["prefix"]),
                   {str(k): float(v) for k, v in raw["factors"].items()},
                   {str(k): float(v) for k, v in raw["losses"].items()})


@dataclass
class GreedyState:
    """The path so far: the neurons in the order they were added, and the rounds measured."""

    order: list[tuple[int, int]] = field(default_factory=list)
    rounds: list[Measurement] = field(default_factory=list)
    base: dict[str, float] = field(default_factory=dict)  # losses of the unedited model

    def to_dict(self) -> dict[str, Any]:
        return {"order": [list(n) for n in self.order], "rounds": [m.to_dict() for m in self.rounds],
                "base": dict(self.base)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GreedyState:
        return cls([(int(a), int(b)) for a, b in raw["order"]], [Measurement.from_dict(m) for m in raw["rounds"]],
                   {str(k): float(v) for k, v in raw["base"].items()})


@dataclass
class GreedyProblem:
    """What every round shares: the probe, the texts, the candidates and the budget."""

    probe: Probe
    target: CalibrationTexts
    kept: list[CalibrationTexts]
    candidates: np.ndarray  # bool [layers, intermediate]
    neuron_types: np.ndarray  # int8 [layers, intermediate]: 1 or 2 by layer
    factor: float
    max_neurons: int
    budget: float  # in mean NLL: log(1 + calibration perplexity rise)

    def factors_of(self, order: list[tuple[int, int]], by_type: dict[str, float] | None = None) -> np.ndarray:
        """The factor matrix of ``order``: each neuron's type's factor in ``by_type``, else the greedy's one."""
        factors = np.ones(self.candidates.shape, dtype=np.float32)
        for layer, index in order:
            own = None if by_type is None else by_type[str(int(self.neuron_types[layer, index]))]
            factors[layer, index] = self.factor if own is None else own
        return factors

    def losses(self, factors: np.ndarray) -> dict[str, float]:
        """The measured calibration loss of every language (target first) under ``factors``."""
        return {t.language: self.probe.loss(t, factors) for t in [self.target, *self.kept]}

    def kept_damage(self, losses: dict[str, float], base: dict[str, float]) -> float:
        return max(losses[t.language] - base[t.language] for t in self.kept)

    def on(self, texts: dict[str, CalibrationTexts]) -> GreedyProblem:
        """The same problem measured on other sentences of the same languages (the validation split)."""
        return replace(self, target=texts[self.target.language], kept=[texts[t.language] for t in self.kept])


def measure_round(problem: GreedyProblem, state: GreedyState, final: bool) -> dict[str, np.ndarray]:
    """Measure the current set (and, unless ``final``, every neuron's attribution at it); record the round."""
    factors = problem.factors_of(state.order)
    grads: dict[str, np.ndarray] = {}
    if final:
        losses = problem.losses(factors)
    else:
        losses = {}
        for texts in [problem.target, *problem.kept]:
            losses[texts.language], grads[texts.language] = problem.probe.attribution(texts, factors)
    if not state.base:
        state.base = dict(losses)
    state.rounds.append(Measurement(f"round {len(state.rounds)}", "greedy", len(state.order),
                                    {"1": problem.factor, "2": problem.factor}, losses))
    return grads


def advance(problem: GreedyProblem, state: GreedyState, grads: dict[str, np.ndarray], rounds_left: int) -> None:
    """One greedy step from the last measured round: add neurons, or remove some when over budget."""
    losses = state.rounds[-1].losses
    remaining = problem.budget - problem.kept_damage(losses, state.base)
    change = problem.factor - 1.0  # the first-order loss change of an added neuron is change · grad
    target = change * grads[problem.target.language]
    kept = np.max(np.stack([np.abs(change * grads[t.language]) for t in problem.kept]), axis=0)
    in_set = problem.factors_of(state.order) != 1.0
    if remaining <= 0:
        worst = max(problem.kept, key=lambda t: losses[t.language] - state.base[t.language]).language
        _restore(state, target, change * grads[worst], in_set)
        return
    floor = problem.budget / problem.max_neurons
    usable = problem.candidates & ~in_set & (target > 0)
    score = np.where(usable, target / (kept + floor), -np.inf)
    slots = problem.max_neurons - len(state.order)
    step = math.ceil(slots / max(1, rounds_left))
    spent, width = 0.0, score.shape[1]
    for flat in np.argsort(-score, axis=None, kind="stable")[:step]:
        layer, index = divmod(int(flat), width)
        if not np.isfinite(score[layer, index]):
            break
        spent += float(kept[layer, index])
        if spent > SPEND_SHARE * remaining and len(state.order) > state.rounds[-1].prefix:
            break
        state.order.append((layer, index))


def _restore(state: GreedyState, target: np.ndarray, worst: np.ndarray, in_set: np.ndarray) -> None:
    """Give back the members whose restoration lowers the worst kept language's loss most per target damage lost.

    At the edited point ``change · grad`` estimates what a member adds, so restoring it lowers each loss by that.
    """
    score = np.where(in_set, worst / (np.maximum(target, 0) + 1e-12), -np.inf)
    count = max(1, int(RESTORE_SHARE * len(state.order)))
    width = score.shape[1]
    drop = {divmod(int(flat), width) for flat in np.argsort(-score, axis=None, kind="stable")[:count]}
    state.order = [n for n in state.order if n not in drop]
