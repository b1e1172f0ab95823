"""`tnedit apply`, `tnedit revert`, `tnedit inspect`: thin shells over :mod:`tnedit.edit`.

The options of `apply` are generated from :class:`tnedit.edit.settings.ApplySettings` (a light,
torch-free module); the library is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import (
    command_line,
    emit,
    json_option,
    quiet_option,
    reporter_for,
    settings_from_options,
    settings_options,
)
from tnedit.edit.settings import NO_CACHE_HELP, ApplySettings


def _load_neuron_input(neurons_file: str | None, neurons_text: str | None):  # -> (NeuronSet, label)
    """The neuron set from NEURONS_FILE or from --neurons (a neurons file or an inline list)."""
    from tnedit.errors import InputError
    from tnedit.formats.neurons import load_neurons, read_neuron_argument

    if bool(neurons_file) == bool(neurons_text):
        raise InputError('give the neurons either as NEURONS_FILE or as --neurons FILE|"L:I,..." (exactly one)')
    if neurons_text:
        return read_neuron_argument(neurons_text, "--neurons")
    return load_neurons(neurons_file), str(neurons_file)


def _summary(result: Any) -> dict[str, Any]:
    spec = result.spec
    return {
        "out": str(result.out),
        "op": spec.op,
        "factor": spec.factor,
        "n_neurons": len(spec.neurons),
        "per_layer": spec.per_layer_counts(),
        "weights": result.provenance.to_dict()["weights"],
    }


@click.command("apply", context_settings={"show_default": True})
@click.argument("model")
@click.argument("neurons_file", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@settings_options(ApplySettings)
@click.option(
    "--evaluate", "evaluate_lang", metavar="LANG", help="Then run `tnedit evaluate` for LANG into OUT/evaluation."
)
@click.option("--push-to-hub", "push_repo", metavar="REPO", help="Then upload OUT to this Hub repo.")
@quiet_option
@json_option
def apply_command(model, neurons_file, out, evaluate_lang, push_repo, quiet, as_json, **params):
    """Bake zeroing or scaling of NEURONS into MODEL's MLP output projection; write OUT.

    MODEL is a local directory or a Hub id. NEURONS_FILE is a neurons.json from `tnedit identify`,
    a JSON list, or a CSV of layer,index[,factor]; --neurons takes such a file or an inline list.
    With --top-k and --layers, the first K neurons within those layers are edited. The source is
    never written to, OUT may not hold any input, and OUT appears only when complete.

    \b
    Example:
      tnedit apply google/gemma-3-270m neurons-ja-type1.json -o gemma-ja-t1 --top-k 200
      tnedit apply ./my-model --neurons "3:17,3:99,12:5" --op scale --factor 0.5 -o edited
    """
    from tnedit.edit import apply_to_checkpoint

    settings = settings_from_options(ApplySettings, params, model=model, out=out, layers=params["layers"] or None)
    reporter = reporter_for(quiet)
    neuron_set, where = _load_neuron_input(neurons_file, settings.neurons)
    spec = settings.edit_spec(neuron_set)
    if spec.duplicates:
        shown = ", ".join(f"{a}:{b}" for a, b in spec.duplicates[:5])
        reporter.warn(f"{len(spec.duplicates)} duplicated neuron(s) merged ({shown})")
    options = settings.options(command=command_line(), inputs=[neurons_file] if neurons_file else [])
    result = apply_to_checkpoint(model, spec, out, neuron_set=neuron_set, neuron_source=where, options=options,
                                 reporter=reporter)
    summary = _summary(result)
    if evaluate_lang:
        from tnedit.cli.evaluate import evaluate_after_apply

        summary["evaluation"] = evaluate_after_apply(model, result.out, evaluate_lang, quiet=quiet)
    if push_repo:
        from tnedit.cli.push import push_after_apply

        summary["push"] = push_after_apply(result.out, push_repo, quiet=quiet, no_cache=settings.no_cache)
    emit(summary, as_json, f"wrote {result.out}: {spec.describe()} in {len(summary['per_layer'])} layer(s)")


@click.command("revert")
@click.argument("edited", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-cache", "no_cache", is_flag=True, help=NO_CACHE_HELP)
@quiet_option
@json_option
def revert_command(edited, out, overwrite, no_cache, quiet, as_json):
    """Write OUT with the original weights of the checkpoint EDITED was made from (same SHA-256).

    The revert file and every edited weight file are checked against the SHA-256s in EDITED's
    tnedit.json, and the restored files against the source's recorded digests, before OUT appears.
    """
    from tnedit.edit import revert_checkpoint

    path = revert_checkpoint(edited, out, overwrite=overwrite, no_cache=no_cache, reporter=reporter_for(quiet))
    emit({"out": str(path)}, as_json, f"wrote {path}: original weights restored")


def _massive(neuron_set: Any) -> dict[str, Any] | None:
    """identify's massive-activation marking (``method.extra.massive``), if the set has one."""
    marking = neuron_set.method.extra.get("massive") if neuron_set.method else None
    return marking if isinstance(marking, dict) and isinstance(marking.get("neurons"), list) else None


def _massive_keys(neuron_set: Any, marking: dict[str, Any] | None) -> set[tuple[int, int]]:
    """The set's neurons that the marking lists (a set cut to its top k keeps the whole list)."""
    listed = {tuple(x) for x in marking["neurons"] if isinstance(x, list) and len(x) in (2, 3)} if marking else set()
    return {n.key for n in neuron_set.neurons} & listed


def _describe_neuron_set(neurons_file: str, neuron_set: Any, top: int) -> str:
    """The human-readable listing of `inspect`."""
    from tnedit.experts import expert_label
    from tnedit.formats.descriptions import centroids_text, tune_summary
    from tnedit.formats.neurons import method_dict

    lines = [f"{Path(neurons_file).name}: {len(neuron_set)} neurons"]
    model, method = neuron_set.model, neuron_set.method
    if model:
        lines.append(
            f"model:  {model.name_or_path} ({model.model_type}, {model.num_layers} layers × "
            f"{model.intermediate_size})"
        )
    if method:
        desc = f"method: {method.kind}"
        if method.type:
            desc += f" type-{method.type}"
        if method.language:
            desc += f" lang={method.language}"
        if method.k:
            desc += f" k={method.k}"
        lines.append(desc)
        summary = tune_summary(method_dict(method))
        if summary:
            lines.append(f"tune:   {summary}")
        centroids = centroids_text(method)
        if centroids:
            lines.append(centroids)
    lines.append("per layer: " + "  ".join(f"{layer}:{n}" for layer, n in neuron_set.per_layer_counts().items()))
    if neuron_set.has_experts:
        lines.append("per expert: " + "  ".join(f"{e}:{n}" for e, n in neuron_set.per_expert_counts().items()))
    marking = _massive(neuron_set)
    massive = _massive_keys(neuron_set, marking)
    if marking:
        lines.append(f"massive: {len(massive)} of the {len(neuron_set)} neurons are in the model's top "
                     f"{100 * float(marking.get('quantile', 0)):g}% of mean |activation| on "
                     f"{marking.get('language', 'en')} (marked *)")
    own = any(n.factor is not None for n in neuron_set.neurons)
    lines.append(f"top {min(top, len(neuron_set))}:")
    experts = neuron_set.has_experts
    lines.append("  rank  layer" + ("  expert" if experts else "") + "  index  score" + ("  factor" if own else ""))
    for rank, n in enumerate(neuron_set.neurons[:top], start=1):
        score = "" if n.score is None else f"{n.score:.6g}"
        factor = f"  {'' if n.factor is None else f'{n.factor:.3g}':>6}" if own else ""
        mark = "  *" if n.key in massive else ""
        expert = f"  {expert_label(n.expert):>6}" if experts else ""
        lines.append(f"  {rank:>4}  {n.layer:>5}{expert}  {n.index:>5}  {score}{factor}{mark}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("neurons_file", type=click.Path(dir_okay=False))
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="How many top neurons to list.")
@quiet_option
@json_option
def inspect_command(neurons_file, top, quiet, as_json):
    """Show a neuron set: model, method, per-layer counts and the top neurons."""
    from dataclasses import asdict

    from tnedit.formats.neurons import load_neurons, method_dict

    neuron_set = load_neurons(neurons_file)
    result = {
        "file": neurons_file,
        "n_neurons": len(neuron_set),
        "model": asdict(neuron_set.model) if neuron_set.model else None,
        "method": method_dict(neuron_set.method) if neuron_set.method else None,
        "per_layer": neuron_set.per_layer_counts(),
        **({"per_expert": neuron_set.per_expert_counts()} if neuron_set.has_experts else {}),
        "top": [{k: v for k, v in asdict(n).items() if k != "expert" or v is not None}
                for n in neuron_set.neurons[:top]],
    }
    marking = _massive(neuron_set)
    if marking is not None:
        massive = _massive_keys(neuron_set, marking)
        result["n_massive"] = len(massive)
        for entry, n in zip(result["top"], neuron_set.neurons, strict=False):
            entry["massive"] = n.key in massive
    emit(result, as_json, _describe_neuron_set(neurons_file, neuron_set, top))
