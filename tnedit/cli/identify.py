"""`tnedit identify`, `tnedit select` and `tnedit compare`: thin shells over :mod:`tnedit.identify`.

torch and transformers are imported inside the functions only, so `tnedit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import emit, json_option, quiet_option, warn


def _per_layer_text(counts: dict[int, int]) -> str:
    return " ".join(f"{layer}:{n}" for layer, n in counts.items()) or "(none)"


def _truncation_text(max_length: int | None, truncated: dict[str, int]) -> str:
    cut = ", ".join(f"{name} {n}" for name, n in truncated.items() if n) or "none"
    return f"  max length {max_length} tokens; sentences truncated: {cut}"


def _given(ctx: click.Context, *names: str) -> list[str]:
    """The options among ``names`` that the user typed (not left at their defaults)."""
    from click.core import ParameterSource

    return [name for name in names if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]


def _option_name(ctx: click.Context, name: str) -> str:
    param = next(p for p in ctx.command.params if p.name == name)
    return max(param.opts, key=len)


@click.command("identify")
@click.argument("model")
@click.option("--lang", "lang", multiple=True, help="Target language(s): --lang ja --lang ko or --lang ja,ko. "
              "Default: every non-English language of the data.")
@click.option("--langs", "langs", multiple=True, help="Same as --lang (LAPE lists every language, en included).")
@click.option("--data", default=None, help="TSV (header of language codes), JSONL or hf:NAME[:CONFIG]. "
              "Default: the built-in corpus.")
@click.option("--limit", type=int, default=None, help="Use only the first N pairs.")
@click.option("--type", "neuron_type", type=click.Choice(["1", "2", "both"]), default="1", show_default=True,
              help="Type-1 (toward the shared space) or Type-2 (toward the L2 space) transfer neurons.")
@click.option("-k", "--k", "k", type=int, default=1000, show_default=True,
              help="Neurons to keep per language and type.")
@click.option("--layers", default=None, help="Candidate layers: 0-11, 0,3,5-7 or fractions 0.0:0.625. "
              "Default: Type-1 the first 62.5%, Type-2 the rest.")
@click.option("--method", type=click.Choice(["transfer", "lape"]), default="transfer", show_default=True)
@click.option("--control", type=click.Choice(["random"]), default=None,
              help="Write a random control set like --like (same candidate layers and count, disjoint).")
@click.option("--like", "like", type=click.Path(dir_okay=False), default=None,
              help="Reference neuron set for --control.")
@click.option("--match-layers", is_flag=True, help="--control: draw as many per layer as the reference set.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the random control.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto (the checkpoint's), float32, bfloat16, float16.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, mps or auto.")
@click.option("--device-map", default=None, help="e.g. auto: spread a large model over devices (accelerate).")
@click.option("--max-length", type=int, default=None,
              help="Truncate sentences to this many tokens (default: the model's context length, at most 4096).")
@click.option("--revision", default=None, help="Hub revision of MODEL.")
@click.option("--checkpoint-every", type=int, default=None, help="Persist partial sums every N batches.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint under -o.")
@click.option("-o", "--output", default=None,
              help="Output directory (default ./tnedit-identify/<model-name>); a .json file for --control.")
@click.option("--overwrite", is_flag=True, help="--control: replace an existing -o file.")
@quiet_option
@json_option
@click.pass_context
def identify(ctx: click.Context, model: str, lang: tuple[str, ...], langs: tuple[str, ...], data: str | None,
             limit: int | None, neuron_type: str, k: int, layers: str | None, method: str, control: str | None,
             like: str | None, match_layers: bool, seed: int, batch_size: int, dtype: str, device: str,
             device_map: str | None, max_length: int | None, revision: str | None, checkpoint_every: int | None,
             resume: bool, output: str | None, overwrite: bool, quiet: bool, as_json: bool) -> None:
    """Rank the transfer neurons of MODEL (a local directory or a Hub id).

    \b
    Examples:
      tnedit identify google/gemma-3-270m --lang ja --type 1 --k 200
      tnedit identify MODEL --data en-ja.tsv --lang ja --type both -o out/
      tnedit identify MODEL --control random --like out/neurons-ja-type1.json --seed 42 -o ctrl.json
      tnedit identify MODEL --method lape --langs en,ja,ko
    """
    from tnedit import identify as lib

    languages = lib.parse_languages(list(lang) + list(langs))
    if control == "random":
        _random_control(model, like, seed, match_layers, output, overwrite, as_json)
        return
    for name in ("like", "overwrite", "match_layers"):
        if _given(ctx, name):
            raise click.UsageError(f"{_option_name(ctx, name)} is only used with --control random")
    out_dir = Path(output) if output else lib.default_output_dir(model)
    if method == "lape":
        unused = _given(ctx, "checkpoint_every", "resume", "neuron_type", "k")
        if unused:
            raise click.UsageError(f"{_option_name(ctx, unused[0])} is not used by --method lape")
        _lape(model, languages, data, limit, layers, batch_size, dtype, device, device_map, max_length, revision,
              out_dir, quiet, as_json)
        return
    settings = lib.IdentifySettings(
        model=model, langs=languages, data=data, type=neuron_type, k=k, layers=layers, batch_size=batch_size,
        dtype=dtype, device=device, device_map=device_map, max_length=max_length, limit=limit,
        checkpoint_every=checkpoint_every, resume=resume, quiet=quiet, seed=seed, output=out_dir,
        revision=revision, warn=warn,
    )
    from tnedit.formats.neurons import format_layers

    result = lib.identify(settings)
    lines = [f"identified {len(result.neuron_sets)} neuron set(s) in {result.seconds:.1f}s → {out_dir}"]
    for (language, t), ns in result.neuron_sets.items():
        extra = ns.method.extra if ns.method else {}
        share = extra.get("eta2_share")
        eta = f"; η²>0.1 & p<.05: {share:.0%}" if isinstance(share, float) else ""
        file = result.set_files.get((language, t), "")
        lines.append(f"  {language} type{t}: {len(ns)} neurons in layers {format_layers(result.candidate_layers[t])}"
                     f"{eta} → {file}")
        lines.append(f"    per layer: {_per_layer_text(ns.per_layer_counts())}")
    lines.append(_truncation_text(result.max_length, result.truncated))
    emit(result.summary(), as_json, "\n".join(lines))


def _control_path(like: str, seed: int, output: str | None) -> Path:
    """-o FILE.json as is; -o DIR (or no -o: the --like file's directory) gets <like>-random-seed<N>.json."""
    name = f"{Path(like).stem}-random-seed{seed}.json"
    if output is None:
        return Path(like).with_name(name)
    out = Path(output)
    return out if out.suffix.lower() == ".json" else out / name


def _random_control(model: str, like: str | None, seed: int, match_layers: bool, output: str | None,
                    overwrite: bool, as_json: bool) -> None:
    from tnedit import identify as lib

    if like is None:
        raise click.UsageError("--control random needs --like NEURONS.json (the set to match)")
    out = _control_path(like, seed, output)
    lib.check_output_json(out, overwrite=overwrite, inputs=[like], model=model)
    ref = lib.read_neurons(like, "--like")
    info, num_layers, width = lib.model_shape(model, ref)
    ctrl = lib.random_control(ref, num_layers, width, seed, match_layers=match_layers)
    if info is not None:
        ctrl.model = info if ref.model is None else ref.model
    if ref.model is not None and info is not None and ref.model.fingerprint != info.fingerprint:
        warn(f"{like}: its model fingerprint differs from {model}'s; the control uses {model}'s shape")
        ctrl.model = info
    lib.save_neuron_set(ctrl, out)
    result = {"file": str(out), "k": len(ctrl), "seed": seed, "layers": ctrl.method.layers if ctrl.method else [],
              "per_layer": {str(k): v for k, v in ctrl.per_layer_counts().items()}}
    emit(result, as_json, f"random control: {len(ctrl)} neurons (seed {seed}) → {out}\n"
         f"  per layer: {_per_layer_text(ctrl.per_layer_counts())}")


def _lape(model: str, languages: list[str], data: str | None, limit: int | None, layers: str | None,
          batch_size: int, dtype: str, device: str, device_map: str | None, max_length: int | None,
          revision: str | None, out_dir: Path, quiet: bool, as_json: bool) -> None:
    from tnedit import lape as lib

    settings = lib.LapeSettings(model=model, langs=languages, data=data, layers=layers, batch_size=batch_size,
                                dtype=dtype, device=device, device_map=device_map, max_length=max_length,
                                limit=limit, quiet=quiet, output=out_dir, revision=revision)
    sets = lib.identify_lape(settings)
    summary: dict[str, Any] = {"model": model, "method": "lape", "sets": [], "max_length": None, "truncated": {}}
    lines = [f"LAPE language-specific neurons → {out_dir}"]
    for language, ns in sets.items():
        file = str(lib.lape_path(out_dir, language))
        summary["sets"].append({"language": language, "k": len(ns), "file": file,
                                "per_layer": {str(k): v for k, v in ns.per_layer_counts().items()}})
        summary["max_length"] = ns.method.extra["max_length"]
        summary["truncated"].update(ns.method.extra["truncated"])
        lines.append(f"  {language}: {len(ns)} neurons → {file}")
    lines.append(_truncation_text(summary["max_length"], summary["truncated"]))
    emit(summary, as_json, "\n".join(lines))


@click.command("select")
@click.argument("scores", type=click.Path(dir_okay=False))
@click.option("--type", "neuron_type", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("-k", "--k", "k", type=int, default=1000, show_default=True)
@click.option("--layers", default=None, help="Candidate layers (default: those identify used for this type).")
@click.option("-o", "--output", default=None, help="Neuron-set JSON (default: next to SCORES).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@quiet_option
@json_option
def select(scores: str, neuron_type: str, k: int, layers: str | None, output: str | None, overwrite: bool,
           quiet: bool, as_json: bool) -> None:
    """Re-rank a scores-<lang>.safetensors file into a neuron set without recomputing."""
    from tnedit import identify as lib

    if output is not None:  # before reading: a refused output costs nothing
        lib.check_output_json(output, overwrite=overwrite, inputs=[scores])
    sf = lib.load_scores(scores)
    t = int(neuron_type)
    settings = lib.IdentifySettings(model=sf.model.name_or_path, warn=warn)
    ns = lib.select_from_scores(sf, t, k, layers, settings=settings)
    out = Path(output) if output else Path(scores).with_name(f"neurons-{sf.language}-type{t}-k{len(ns)}.json")
    if output is None:
        lib.check_output_json(out, overwrite=overwrite, inputs=[scores])
    lib.save_neuron_set(ns, out)
    summary = {"file": str(out), "language": sf.language, "type": t, "k": len(ns),
               "layers": ns.method.layers if ns.method else [],
               "per_layer": {str(a): b for a, b in ns.per_layer_counts().items()},
               "eta2_share": ns.method.extra.get("eta2_share") if ns.method else None}
    emit(summary, as_json, f"{sf.language} type{t}: {len(ns)} neurons → {out}\n"
         f"  per layer: {_per_layer_text(ns.per_layer_counts())}")


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@quiet_option
@json_option
def compare(a: str, b: str, quiet: bool, as_json: bool) -> None:
    """Overlap of two neuron sets: |A∩B|/|A|, Jaccard and a per-layer table."""
    from tnedit import identify as lib

    sa, sb = lib.read_neurons(a, "A"), lib.read_neurons(b, "B")
    cmp = lib.compare(sa, sb)
    if cmp.same_model is False:
        warn(f"{a} and {b} were made for different models (fingerprints differ)")
    result = {"a": a, "b": b, **cmp.to_dict()}
    lines = [
        f"A = {a} ({cmp.size_a} neurons), B = {b} ({cmp.size_b} neurons)",
        f"|A∩B| = {cmp.intersection}   |A∩B|/|A| = {cmp.overlap:.4f}   |A∩B|/|B| = {cmp.overlap_b:.4f}   "
        f"Jaccard = {cmp.jaccard:.4f}",
        f"{'layer':>5} {'A':>6} {'B':>6} {'A∩B':>6}",
    ]
    lines += [f"{r['layer']:>5} {r['a']:>6} {r['b']:>6} {r['both']:>6}" for r in cmp.per_layer]
    emit(result, as_json, "\n".join(lines))
