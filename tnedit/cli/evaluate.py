"""`tnedit evaluate`: original versus edited (and a random control); JSON, Markdown and plots.

The options are generated from :class:`~tnedit.evaluate.settings.EvaluateSettings`; only the outputs
(``-o``, ``--overwrite``, ``--update-card``) and ``--quiet``/``--json`` are the verb's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, reporter_for, settings_from_options, settings_options
from tnedit.evaluate.settings import EvaluateSettings
from tnedit.model.distributed import launched_world

# The settings' options after -o, in the order --help lists them.
OPTIONS = ("op", "factor", "positions", "top_k", "layers", "control", "seed", "data", "skip", "n_pairs", "qa", "n_qa",
           "qa_shots", "n_gen", "n_langid", "max_new_tokens", "qa_max_new_tokens", "langid", "lm_eval",
           "lm_eval_include", "lm_eval_limit", "lm_eval_fewshot", "lm_eval_batch_size", "kl_top_k", "batch_size",
           "gen_batch_size", "dtype", "device", "revision", "force", "no_cache")


@click.command("evaluate", context_settings={"show_default": True})
@click.argument("original")
@click.argument("edited", required=False, type=click.Path(file_okay=False))
@settings_options(EvaluateSettings, only=("neurons", "languages"))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@settings_options(EvaluateSettings, only=OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--update-card", "card_dir", type=click.Path(file_okay=False),
              help="Also put the headline table into DIR/README.md; DIR must be a checkpoint written by "
                   "tnedit apply (usually EDITED), never ORIGINAL.")
@quiet_option
@json_option
def evaluate_command(original: str, edited: str | None, out: str, overwrite: bool, card_dir: str | None, quiet: bool,
             as_json: bool, **options: Any) -> None:
    """Compare ORIGINAL with EDITED (a baked checkpoint dir) or with --neurons applied as a hook.

    Writes OUT/report.json (tnedit.report/1), OUT/report.md and PNG plots: per-layer en–L2
    similarity (parallel and shuffled pairs), mutual-kNN, PCA and centroid heatmaps; perplexity,
    KL and top-1 agreement against the original; QA F1/EM; greedy samples and the share that stays
    in the prompt's language; with --lm-eval, lm-evaluation-harness tasks on every condition.

    OUT must not be, contain or lie inside ORIGINAL or EDITED, and must not hold the neurons
    file, --data or --qa; this is checked before any model is loaded.

    \b
    Examples:
      tnedit evaluate google/gemma-3-270m gemma-ja-t1 --lang ja -o report/ --control random
      tnedit evaluate google/gemma-3-270m --neurons ja-type1.json --top-k 200 --positions last \\
          --lang ja --data en-ja.tsv --skip 800 --n-pairs 200 --control random -o report/
      tnedit evaluate google/gemma-3-270m --neurons 3:17,3:99 --lang ja -o report/
      tnedit evaluate google/gemma-3-270m --neurons ja-type1.json --positions prompt --lang ja \\
          --lm-eval mmlu_prox_ja --lm-eval-fewshot 5 --control random -o report/
    """
    from tnedit.evaluate import check_card_dir, check_report_dir, run_evaluation, update_card, write_report

    languages = [x for v in options["languages"] for x in v.split(",")]
    settings = settings_from_options(EvaluateSettings, options, original=original, edited=edited, languages=languages)
    settings.check_baked_options()
    check_report_dir(out, settings, overwrite=overwrite, card_dir=card_dir)
    if card_dir:
        check_card_dir(card_dir, original)
    report = run_evaluation(settings, reporter=reporter_for(quiet))
    if not launched_world().is_main:  # every rank has the report; rank 0 alone writes it
        return
    path = write_report(report, out, overwrite=overwrite)
    card = str(update_card(report, card_dir, report_dir=path)) if card_dir else None
    result = {"out": str(path), "headline": report.data["headline"], "runtime_s": report.data["runtime"]["total_s"],
              "card": card}
    human = report.console() + f"\nwrote {path}/report.md, report.json and plots in {result['runtime_s']:.0f} s"
    if card:
        human += f"; updated {card}"
    emit(result, as_json, human if not quiet else f"wrote {path}")


def evaluate_after_apply(model: str, edited: str | Path, lang: str, quiet: bool = False,
                         **overrides: Any) -> dict[str, Any]:
    """For `tnedit apply --evaluate LANG`: evaluate the fresh checkpoint with a random control into
    EDITED/evaluation and put the headline table into EDITED/README.md. ``overrides`` are
    :class:`~tnedit.evaluate.EvaluateSettings` fields (n_pairs, data, ...)."""
    from tnedit.evaluate import run_evaluation, update_card, write_report

    edited = Path(edited)
    settings = EvaluateSettings(
        **{"original": model, "edited": str(edited), "languages": lang.split(","), "control": "random", **overrides}
    )
    report = run_evaluation(settings, reporter=reporter_for(quiet))
    out = write_report(report, edited / "evaluation", overwrite=True)
    card = update_card(report, edited, report_dir=out)
    if not quiet:
        click.echo(report.console())
    return {"out": str(out), "card": str(card), "headline": report.data["headline"]}
