"""`tnedit apply`, `tnedit revert`, `tnedit inspect`."""

from __future__ import annotations

from pathlib import Path

import click

from tnedit.cli.options import command_line, emit, json_option, quiet_option, warn


def _load_neuron_input(neurons_file: str | None, neurons_text: str | None):  # -> (NeuronSet, label)
    """The neuron set from NEURONS_FILE or from --neurons (a neurons file or an inline list)."""
    from tnedit.errors import InputError
    from tnedit.formats.neurons import load_neurons, read_neuron_argument

    if bool(neurons_file) == bool(neurons_text):
        raise InputError('give the neurons either as NEURONS_FILE or as --neurons FILE|"L:I,..." (exactly one)')
    if neurons_text:
        return read_neuron_argument(neurons_text, "--neurons")
    return load_neurons(neurons_file), str(neurons_file)


@click.command(context_settings={"show_default": True})
@click.argument("model")
@click.argument("neurons_file", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option(
    "--neurons", "neurons_text", help='Neurons: a neurons file, or inline "LAYER:INDEX[:FACTOR],...".'
)
@click.option("--op", type=click.Choice(["zero", "scale"]), default="zero", help="What to do to each neuron.")
@click.option("--factor", help="Scale factor for --op scale (per-neuron factors in the file override it).")
@click.option("--top-k", type=int, help="Keep only the first K neurons within --layers of the (ranked) set.")
@click.option(
    "--layers", help="Keep only neurons in these layers (before --top-k picks the first K): 0-11, 0,3,5-7 or 0.0:0.5."
)
@click.option("--revision", help="Hub revision (branch, tag or commit) of MODEL.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--force", is_flag=True, help="Apply even if the neuron set was made for another model.")
@click.option("--link", is_flag=True, help="Hardlink untouched weight files instead of copying them.")
@click.option(
    "--evaluate", "evaluate_lang", metavar="LANG", help="Then run `tnedit evaluate` for LANG into OUT/evaluation."
)
@click.option("--push-to-hub", "push_repo", metavar="REPO", help="Then upload OUT to this Hub repo.")
@quiet_option
@json_option
def apply(
    model,
    neurons_file,
    out,
    neurons_text,
    op,
    factor,
    top_k,
    layers,
    revision,
    overwrite,
    force,
    link,
    evaluate_lang,
    push_repo,
    quiet,
    as_json,
):
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
    from tnedit.edit import apply_to_checkpoint, make_edit_spec
    from tnedit.formats.neurons import parse_layers

    neuron_set, where = _load_neuron_input(neurons_file, neurons_text)
    layer_list = parse_layers(layers, neuron_set.model.num_layers if neuron_set.model else None) if layers else None
    spec = make_edit_spec(neuron_set, op, factor, top_k=top_k, layers=layer_list)
    if spec.duplicates:
        shown = ", ".join(f"{a}:{b}" for a, b in spec.duplicates[:5])
        warn(f"{len(spec.duplicates)} duplicated neuron(s) merged ({shown})")
    result = apply_to_checkpoint(
        model,
        spec,
        out,
        neuron_set=neuron_set,
        neuron_source=where,
        revision=revision,
        overwrite=overwrite,
        force=force,
        link=link,
        command=command_line(),
        progress=not quiet,
        warn=warn,
        inputs=[neurons_file] if neurons_file else [],
    )
    summary = {
        "out": str(result.out),
        "op": spec.op,
        "factor": spec.factor,
        "n_neurons": len(spec.neurons),
        "per_layer": spec.per_layer_counts(),
        "weights": result.provenance["weights"],
    }
    if evaluate_lang:
        from tnedit.cli.evaluate import evaluate_after_apply

        summary["evaluation"] = evaluate_after_apply(model, result.out, evaluate_lang, quiet=quiet)
    if push_repo:
        from tnedit.cli.push import push_after_apply

        summary["push"] = push_after_apply(result.out, push_repo, quiet=quiet)
    emit(summary, as_json, f"wrote {result.out}: {spec.describe()} in {len(summary['per_layer'])} layer(s)")


@click.command()
@click.argument("edited", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@quiet_option
@json_option
def revert(edited, out, overwrite, quiet, as_json):
    """Write OUT with the original weights of the checkpoint EDITED was made from (same SHA-256).

    The revert file and every edited weight file are checked against the SHA-256s in EDITED's
    tnedit.json, and the restored files against the source's recorded digests, before OUT appears.
    """
    from tnedit.edit import revert_checkpoint

    path = revert_checkpoint(edited, out, overwrite=overwrite, progress=not quiet, warn=warn)
    emit({"out": str(path)}, as_json, f"wrote {path}: original weights restored")


@click.command()
@click.argument("neurons_file", type=click.Path(dir_okay=False))
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="How many top neurons to list.")
@quiet_option
@json_option
def inspect(neurons_file, top, quiet, as_json):
    """Show a neuron set: model, method, per-layer counts and the top neurons."""
    from dataclasses import asdict

    from tnedit.formats.neurons import load_neurons

    ns = load_neurons(neurons_file)
    counts = ns.per_layer_counts()
    result = {
        "file": neurons_file,
        "n_neurons": len(ns),
        "model": asdict(ns.model) if ns.model else None,
        "method": asdict(ns.method) if ns.method else None,
        "per_layer": counts,
        "top": [asdict(n) for n in ns.neurons[:top]],
    }
    lines = [f"{Path(neurons_file).name}: {len(ns)} neurons"]
    if ns.model:
        lines.append(
            f"model:  {ns.model.name_or_path} ({ns.model.model_type}, {ns.model.num_layers} layers × "
            f"{ns.model.intermediate_size})"
        )
    if ns.method:
        m = ns.method
        desc = f"method: {m.kind}"
        if m.type:
            desc += f" type-{m.type}"
        if m.language:
            desc += f" lang={m.language}"
        if m.k:
            desc += f" k={m.k}"
        lines.append(desc)
    lines.append("per layer: " + "  ".join(f"{layer}:{n}" for layer, n in counts.items()))
    lines.append(f"top {min(top, len(ns))}:")
    lines.append("  rank  layer  index  score")
    for rank, n in enumerate(ns.neurons[:top], start=1):
        score = "" if n.score is None else f"{n.score:.6g}"
        lines.append(f"  {rank:>4}  {n.layer:>5}  {n.index:>5}  {score}")
    emit(result, as_json, "\n".join(lines))
