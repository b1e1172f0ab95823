"""The settings of ``tnedit tune``: each field declared once, with its CLI spelling and help.

``tnedit.cli.tune`` generates its options from :class:`TuneSettings`; a recipe's ``tune`` step nests it.
:meth:`TuneSettings.check` is the one validation, with the messages the CLI prints. Torch-free.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tnedit.errors import InputError
from tnedit.identify.outputs import check_output_directory
from tnedit.identify.settings import EXCLUDE_MASSIVE_HELP, SHARED_LANGUAGE, check_exclude_massive, parse_languages
from tnedit.settings import setting

TuneOp = Literal["zero", "scale"]


def _positive_int(value: object, flag: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{flag} must be an integer of at least {minimum}, got {value!r}")


def _fraction(value: object, flag: str, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low < value < high:
        raise InputError(f"{flag}: expected {what}, got {value!r}")
    return float(value)


@dataclass
class TuneSettings:
    """``tnedit tune``: the neuron set that breaks ``lang`` most while every ``keep`` language's calibration
    perplexity rises by at most ``max_ppl_increase``.

    ``data``: one or more TSV/JSONL files (or ``hf:`` specs); the en–``lang`` pairs come from the first
    source holding both columns, each kept language's sentences from the first source holding it.
    """

    model: str = setting("", help="A local model directory or a Hub id.", cli=False, recipe=False)
    lang: str = setting("", required=True, recipe=False, help="The language to break (e.g. ja).")
    keep: Sequence[str] = setting(default_factory=lambda: [SHARED_LANGUAGE], multiple=True,
                                  help="Languages to keep: --keep en,nl or --keep en --keep nl. Default: en.")
    data: Sequence[str] = setting(default_factory=list, multiple=True, recipe=False,
                                  help="Parallel sentences (TSV with a header of language codes, JSONL, "
                                       "hf:NAME[:CONFIG]); repeat for kept languages in other files. "
                                       "Default: the built-in corpus.")
    limit: int | None = setting(None, help="Use only the first N pairs of each source (the rest stays unseen).")
    max_neurons: int = setting(500, show_default=True, help="At most this many neurons in the set.")
    max_ppl_increase: float = setting(0.10, show_default=True,
                                      help="Bound on every kept language's perplexity rise: 0.10 = +10 %.")
    margin: float = setting(0.3, show_default=True,
                            help="Safety margin on the bound: the search spends (1 - margin) of it on the "
                                 "calibration split, and the chosen set must stay within (1 - margin/2) of it on "
                                 "the validation split.")
    op: TuneOp = setting("zero", show_default=True, help="zero the neurons, or scale them by --factor.")
    factor: float | None = setting(None, help="Scale factor for --op scale (e.g. -0.5 flips and halves).")
    calibration: int = setting(128, show_default=True, help="Sentences per language the search measures on.")
    validation: int = setting(128, show_default=True,
                              help="Sentences per language held out of the search to check the chosen set.")
    rounds: int = setting(8, show_default=True,
                          help="Measured greedy rounds: each measures the current set and re-ranks the candidates.")
    trials: int = setting(16, show_default=True,
                          help="Optuna trials refining the greedy path (prefix length, factors); 0 skips them.")
    trial_factors: str = setting("-1:0.5", show_default=True,
                                 help="LOW:HIGH range of the per-type factor the trials try; LOW:LOW fixes it "
                                      "(0:0 zeroes only).")
    pool: int = setting(2000, show_default=True, help="Candidates per neuron type from identify's ranking.")
    exclude_massive: float = setting(0.01, show_default=True, help=EXCLUDE_MASSIVE_HELP)
    seed: int = setting(42, show_default=True, help="Seed of the data split and of the Optuna sampler.")
    batch_size: int = setting(32, show_default=True, help="Sentences per forward pass.")
    dtype: str = setting("auto", show_default=True, help="auto (the checkpoint's), float32, bfloat16, float16.")
    device: str = setting("auto", show_default=True, help="cpu, cuda, mps or auto.")
    max_length: int | None = setting(
        None, help="Truncate sentences to this many tokens (default: the model's context length, at most 4096).")
    revision: str | None = setting(None, help="Hub revision of MODEL.")
    output: str | os.PathLike[str] | None = setting(
        None, flags=("-o", "--output"), recipe=False, required=True,
        help="Output directory: the neuron set, the Pareto front (JSON and PNG) and the summary.")
    resume: bool = setting(False, recipe=False, help="Continue an interrupted run from its state under -o.")

    def kept_languages(self) -> list[str]:
        return parse_languages(list(self.keep) if not isinstance(self.keep, str) else self.keep)

    def calibration_budget(self) -> float:
        """The perplexity rise the search may spend on calibration text."""
        return self.max_ppl_increase * (1.0 - self.margin)

    def validation_budget(self) -> float:
        """The perplexity rise the chosen set may show on the validation split."""
        return self.max_ppl_increase * (1.0 - self.margin / 2.0)

    def check(self) -> None:
        """Every check that needs neither the model nor the data, in the order the CLI reports them."""
        target = self.lang.strip() if isinstance(self.lang, str) else ""
        if not target or "," in target:
            raise InputError(f"--lang: expected one language code to break, got {self.lang!r}")
        kept = self.kept_languages()
        if not kept:
            raise InputError("--keep: expected at least one language to keep (e.g. --keep en)")
        if target in kept:
            raise InputError(f"--keep {','.join(kept)}: includes --lang {target}, the language to break")
        _positive_int(self.max_neurons, "--max-neurons")
        _fraction(self.max_ppl_increase, "--max-ppl-increase", 0.0, math.inf, "a perplexity rise above 0 (0.10 = 10 %)")
        if not 0 <= self.margin < 1:
            raise InputError(f"--margin: expected a fraction 0 <= M < 1, got {self.margin!r}")
        if self.op == "zero" and self.factor is not None and self.factor != 0:
            raise InputError("--op zero takes no --factor (use --op scale --factor F)")
        if self.op == "scale" and (self.factor is None or not math.isfinite(self.factor) or self.factor == 1):
            raise InputError(f"--op scale needs --factor F, a finite number other than 1, got {self.factor!r}")
        _positive_int(self.calibration, "--calibration", 2)
        _positive_int(self.validation, "--validation", 2)
        _positive_int(self.rounds, "--rounds")
        _positive_int(self.trials, "--trials", 0)
        self.trial_factor_range()
        _positive_int(self.pool, "--pool")
        check_exclude_massive(self.exclude_massive)
        _positive_int(self.batch_size, "--batch-size")
        if self.limit is not None:
            _positive_int(self.limit, "--limit")
        if self.max_length is not None:
            _positive_int(self.max_length, "--max-length", 2)
        if self.output is None:
            raise InputError("-o/--output: tune needs an output directory")
        check_output_directory(self.output, self.model or None)

    def trial_factor_range(self) -> tuple[float, float]:
        """``--trial-factors LOW:HIGH`` as two finite floats, LOW <= HIGH."""
        parts = str(self.trial_factors).split(":")
        try:
            low, high = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise InputError(f"--trial-factors: expected LOW:HIGH with LOW <= HIGH (e.g. -1:0.5), "
                             f"got {self.trial_factors!r}")
        return low, high

    def edit_factor(self) -> float:
        return 0.0 if self.op == "zero" else float(self.factor)  # type: ignore[arg-type]
