"""`tnedit tune`: a thin shell over :func:`tnedit.tune.pipeline.run_tune`; options come from :class:`TuneSettings`."""

from __future__ import annotations

from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, reporter_for, settings_from_options, settings_options
from tnedit.tune.settings import TuneSettings


def _ratios(ratios: dict[str, float] | None) -> str:
    return ", ".join(f"{lang} ×{value:.4g}" for lang, value in (ratios or {}).items()) or "–"


def summary_text(result: dict[str, Any]) -> str:
    """The one-screen summary of a tune result (its ``summary()`` dict)."""
    budget = result["budget"]
    calibration = result["calibration"]
    lines = [
        f"tuned {result['target']} (keep {','.join(result['kept'])}) in {result['seconds']:.0f}s: "
        f"{result['n_neurons']} neurons ({result['chosen']}), factors "
        + ", ".join(f"type-{t} {f:g}" for t, f in result["factors"].items()),
        f"  calibration: {result['target']} ×{calibration['target_ratio']:.4g}; "
        f"kept {_ratios(calibration['kept_ratios'])} (budget +{budget['calibration']:.1%})",
        f"  validation:  {_ratios(result['validation'])} (budget +{budget['validation']:.1%}; "
        f"bound +{budget['max_ppl_increase']:.1%})",
        f"  front: {result['on_front']} of {result['points']} sets on the Pareto front → {result['front']}, "
        f"{result['plot']}",
        f"  neurons: {result['neurons']}",
        f"  next: tnedit apply {result['model']} {result['neurons']} -o EDITED",
    ]
    return "\n".join(lines)


@click.command("tune")
@click.argument("model")
@settings_options(TuneSettings)
@quiet_option
@json_option
def tune_command(model: str, quiet: bool, as_json: bool, **params: Any) -> None:
    """Find the neuron set of MODEL that breaks --lang while every --keep language stays within a bound.

    Candidates are identify's Type-1 and Type-2 neurons (massive-activation ones excluded). A measured
    greedy search grows the set on calibration sentences, re-ranking at every round, then Optuna trials
    refine it; the set that breaks --lang most while every kept language's perplexity rises at most
    --max-ppl-increase on calibration (less --margin) and on a held-out validation split is written as
    OUT/neurons-<lang>-selective.json, with the Pareto front as JSON and PNG.

    \b
    Examples:
      tnedit tune google/gemma-3-270m --lang ja --keep en --data en-ja.tsv --max-neurons 500 \\
          --max-ppl-increase 0.10 -o tuned/
      tnedit tune MODEL --lang ja --keep en,nl --data en-ja.tsv --data en-nl.tsv -o tuned/
      tnedit tune MODEL --lang ja --data en-ja.tsv -o tuned/ --resume
    """
    from tnedit.tune.pipeline import run_tune

    settings = settings_from_options(TuneSettings, params, model=model)
    result = run_tune(settings, reporter=reporter_for(quiet))
    summary = result.summary()
    emit(summary, as_json, summary_text(summary))
