"""`tnedit evaluate`: original versus edited (and a random control); JSON, Markdown and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, warn


@click.command(context_settings={"show_default": True})
@click.argument("original")
@click.argument("edited", required=False, type=click.Path(file_okay=False))
@click.option("--neurons", "neurons_file", metavar="FILE|LIST",
              help="Edit the original at run time with this neuron set instead of a baked EDITED dir: a neurons "
                   "file or an inline list such as 3:17,3:99 (LAYER:INDEX[:FACTOR]).")
@click.option("--lang", "languages", multiple=True, required=True,
              help="Target language(s) compared with English; repeat or comma-separate (ja or ja,ko).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--op", type=click.Choice(["zero", "scale"]), default=None,
              help="Hook edit operation (default zero).  [hook only]")
@click.option("--factor", type=float, help="Scale factor for --op scale.  [hook only]")
@click.option("--positions", type=click.Choice(["all", "last", "prompt"]), default=None,
              help="Hook positions: all = the baked edit; last / prompt = the paper's deactivation. [default: all]")
@click.option("--top-k", type=int, help="Use only the first K neurons within --layers (the set's order).  [hook only]")
@click.option("--layers", help="Use only neurons in these layers (before --top-k): 0-11, 0,3,5-7 or 0.0:0.5.  "
                               "[hook only]")
@click.option("--control", type=click.Choice(["random", "none"]), default="none",
              help="Add a random-neuron control: same count, same candidate layers, excluding the set.")
@click.option("--seed", type=int, default=42, help="Seed of the control and of the non-parallel shuffle.")
@click.option("--data", help="Parallel sentences (TSV/JSONL/...); default: the built-in corpus.")
@click.option("--skip", type=int, default=0, help="Skip the first N rows (e.g. the rows identify used).")
@click.option("--n-pairs", type=int, default=200, help="Parallel pairs to evaluate.")
@click.option("--qa", "qa_file", type=click.Path(dir_okay=False), help="MKQA-style JSONL; default: built-in QA.")
@click.option("--n-qa", type=int, default=50, help="QA questions per language (0 = no QA).")
@click.option("--qa-shots", type=int, default=2, help="Few-shot examples in each QA prompt.")
@click.option("--n-gen", type=int, default=3, help="Generation samples shown per language.")
@click.option("--n-langid", type=int, default=16, help="Continuations per language for the output-language share.")
@click.option("--max-new-tokens", type=int, default=20, help="Tokens per continuation.")
@click.option("--qa-max-new-tokens", type=int, default=10, help="Tokens per QA answer.")
@click.option("--kl-top-k", type=int, default=1024,
              help="Baked EDITED only: cache the original's top-K log-probs per token for KL.")
@click.option("--batch-size", type=int, default=32, help="Sentences per forward pass.")
@click.option("--gen-batch-size", type=int, default=64, help="Prompts per generate call.")
@click.option("--dtype", default="auto", help="auto, float32, bfloat16 or float16.")
@click.option("--device", default="auto", help="auto, cpu, cuda or mps.")
@click.option("--revision", help="Hub revision of ORIGINAL.")
@click.option("--force", is_flag=True, help="Evaluate even if EDITED is not derived from ORIGINAL.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--update-card", "card_dir", type=click.Path(file_okay=False),
              help="Also put the headline table into DIR/README.md; DIR must be a checkpoint written by "
                   "tnedit apply (usually EDITED), never ORIGINAL.")
@quiet_option
@json_option
def evaluate(original, edited, neurons_file, languages, out, op, factor, positions, top_k, layers, control, seed, data,
             skip, n_pairs, qa_file, n_qa, qa_shots, n_gen, n_langid, max_new_tokens, qa_max_new_tokens, kl_top_k,
             batch_size, gen_batch_size, dtype, device, revision, force, overwrite, card_dir, quiet, as_json):
    """Compare ORIGINAL with EDITED (a baked checkpoint dir) or with --neurons applied as a hook.

    Writes OUT/report.json (tnedit.report/1), OUT/report.md and PNG plots: per-layer en–L2
    similarity (parallel and shuffled pairs), mutual-kNN, PCA and centroid heatmaps; perplexity,
    KL and top-1 agreement against the original; QA F1/EM; greedy samples and the share that stays
    in the prompt's language.

    OUT must not be, contain or lie inside ORIGINAL or EDITED, and must not hold the neurons
    file, --data or --qa; this is checked before any model is loaded.

    \b
    Examples:
      tnedit evaluate google/gemma-3-270m gemma-ja-t1 --lang ja -o report/ --control random
      tnedit evaluate google/gemma-3-270m --neurons ja-type1.json --top-k 200 --positions last \\
          --lang ja --data en-ja.tsv --skip 800 --n-pairs 200 --control random -o report/
      tnedit evaluate google/gemma-3-270m --neurons 3:17,3:99 --lang ja -o report/
    """
    from tnedit.errors import InputError
    from tnedit.evaluate import EvaluateSettings, check_card_dir, check_report_dir, update_card, write_report
    from tnedit.evaluate import evaluate as run_evaluation

    hook_only = op or factor is not None or top_k is not None or layers is not None or positions not in (None, "all")
    if edited and hook_only:
        raise InputError(
            "--op, --factor, --top-k, --layers and --positions apply to --neurons hooks, not to a baked EDITED_DIR"
        )
    out_path = Path(out)
    settings = EvaluateSettings(
        original=original,
        edited=edited,
        neurons=neurons_file,
        languages=[x for v in languages for x in v.split(",")],
        op=op or "zero",
        factor=factor,
        positions=positions or "all",
        top_k=top_k,
        layers=layers,
        control=None if control == "none" else control,
        seed=seed,
        data=data,
        skip=skip,
        n_pairs=n_pairs,
        qa=qa_file,
        n_qa=n_qa,
        qa_shots=qa_shots,
        n_gen=n_gen,
        n_langid=n_langid,
        max_new_tokens=max_new_tokens,
        qa_max_new_tokens=qa_max_new_tokens,
        kl_top_k=kl_top_k,
        batch_size=batch_size,
        gen_batch_size=gen_batch_size,
        dtype=dtype,
        device=device,
        revision=revision,
        force=force,
    )
    check_report_dir(out_path, settings, overwrite=overwrite, card_dir=card_dir)
    if card_dir:
        check_card_dir(card_dir, original)
    report = run_evaluation(settings, warn=warn, progress=None if quiet else _progress)
    path = write_report(report, out_path, overwrite=overwrite)
    card = str(update_card(report, card_dir, report_dir=path)) if card_dir else None
    result = {"out": str(path), "headline": report.data["headline"], "runtime_s": report.data["runtime"]["total_s"],
              "card": card}
    human = report.console() + f"\nwrote {path}/report.md, report.json and plots in {result['runtime_s']:.0f} s"
    if card:
        human += f"; updated {card}"
    emit(result, as_json, human if not quiet else f"wrote {path}")


def _progress(message: str) -> None:
    click.echo(f"evaluate: {message}", err=True)


def evaluate_after_apply(model: str, edited: str | Path, lang: str, quiet: bool = False,
                         **overrides: Any) -> dict[str, Any]:
    """For `tnedit apply --evaluate LANG`: evaluate the fresh checkpoint with a random control into
    EDITED/evaluation and put the headline table into EDITED/README.md. ``overrides`` are
    :class:`~tnedit.evaluate.EvaluateSettings` fields (n_pairs, data, ...)."""
    from tnedit.evaluate import EvaluateSettings, update_card, write_report
    from tnedit.evaluate import evaluate as run_evaluation

    edited = Path(edited)
    settings = EvaluateSettings(
        **{"original": model, "edited": str(edited), "languages": lang.split(","), "control": "random", **overrides}
    )
    report = run_evaluation(settings, warn=warn, progress=None if quiet else _progress)
    out = write_report(report, edited / "evaluation", overwrite=True)
    card = update_card(report, edited, report_dir=out)
    if not quiet:
        click.echo(report.console())
    return {"out": str(out), "card": str(card), "headline": report.data["headline"]}
