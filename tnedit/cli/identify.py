"""`tnedit identify`, `tnedit select` and `tnedit compare`: thin shells over :mod:`tnedit.identify`.

The options are generated from :mod:`tnedit.identify.settings` (torch-free); the library is imported
inside the commands only, so `tnedit --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tnedit.cli.options import (
    emit,
    json_option,
    quiet_option,
    reporter_for,
    run_alone,
    settings_from_options,
    settings_options,
)
from tnedit.identify.outputs import default_output_dir, read_neurons
from tnedit.identify.settings import IdentifySettings, SelectSettings, lape_settings

# Today's order of the identify options (the settings classes declare the shared pass fields first).
IDENTIFY_OPTIONS = ("langs", "data", "limit", "type", "k", "exclude_massive", "layers", "centroids", "method",
                    "control", "like", "match_layers", "seed", "batch_size", "dtype", "device", "device_map",
                    "max_length", "revision", "checkpoint_every", "resume", "output", "overwrite")
CONTROL_ONLY = ("like", "overwrite", "match_layers")
NOT_LAPE = ("checkpoint_every", "resume", "type", "k", "exclude_massive")


def _counts_text(counts: dict[Any, int]) -> str:
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


def _refuse_unused(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    unused = _given(ctx, *names)
    if unused:
        raise click.UsageError(f"{_option_name(ctx, unused[0])} {why}")


@click.command("identify")
@click.argument("model")
@settings_options(IdentifySettings, only=IDENTIFY_OPTIONS)
@quiet_option
@json_option
@click.pass_context
def identify_command(ctx: click.Context, model: str, quiet: bool, as_json: bool, **params: Any) -> None:
    """Rank the transfer neurons of MODEL (a local directory or a Hub id).

    \b
    Examples:
      tnedit identify google/gemma-3-270m --lang ja --type 1 --k 200
      tnedit identify MODEL --data en-ja.tsv --lang ja --type both -o out/
      tnedit identify MODEL --control random --like out/neurons-ja-type1.json --seed 42 -o ctrl.json
      tnedit identify MODEL --method lape --langs en,ja,ko
    """
    settings = settings_from_options(IdentifySettings, params, model=model)
    if settings.control == "random":
        if run_alone("tnedit identify --control random"):
            _random_control(settings, quiet, as_json)
        return
    _refuse_unused(ctx, CONTROL_ONLY, "is only used with --control random")
    out_dir = Path(settings.output) if settings.output else default_output_dir(model)
    settings.output = out_dir
    if settings.method == "lape":
        _refuse_unused(ctx, NOT_LAPE, "is not used by --method lape")
        _lape(settings, out_dir, quiet, as_json)
        return
    _transfer(settings, out_dir, quiet, as_json)


def _transfer(settings: IdentifySettings, out_dir: Path, quiet: bool, as_json: bool) -> None:
    from tnedit.formats.layers import format_layers
    from tnedit.identify.pipeline import run_identify

    result = run_identify(settings, reporter=reporter_for(quiet))
    lines = [f"identified {len(result.neuron_sets)} neuron set(s) in {result.seconds:.1f}s → {out_dir}"]
    for (language, t), neurons in result.neuron_sets.items():
        extra = neurons.method.extra if neurons.method else {}
        share = extra.get("eta2_share")
        eta = f"; η²>0.1 & p<.05: {share:.0%}" if isinstance(share, float) else ""
        file = result.set_files.get((language, t), "")
        lines.append(f"  {language} type{t}: {len(neurons)} neurons in layers "
                     f"{format_layers(result.candidate_layers[t])}{eta} → {file}")
        lines.append(f"    per layer: {_counts_text(neurons.per_layer_counts())}")
        if neurons.has_experts:
            lines.append(f"    per expert: {_counts_text(neurons.per_expert_counts())}")
    lines.append(_truncation_text(result.max_length, result.truncated))
    emit(result.summary(), as_json, "\n".join(lines))


def _random_control(settings: IdentifySettings, quiet: bool, as_json: bool) -> None:
    from tnedit.identify.controls import run_random_control

    if settings.like is None:
        raise click.UsageError("--control random needs --like NEURONS.json (the set to match)")
    control, out = run_random_control(settings, reporter=reporter_for(quiet))
    counts = control.per_layer_counts()
    result = {"file": str(out), "k": len(control), "seed": settings.seed,
              "layers": control.method.layers if control.method else [],
              "per_layer": {str(k): v for k, v in counts.items()}}
    emit(result, as_json, f"random control: {len(control)} neurons (seed {settings.seed}) → {out}\n"
         f"  per layer: {_counts_text(counts)}")


def _lape(settings: IdentifySettings, out_dir: Path, quiet: bool, as_json: bool) -> None:
    from tnedit.identify.lape import lape_path, run_lape

    sets = run_lape(lape_settings(settings), reporter=reporter_for(quiet))
    summary: dict[str, Any] = {"model": settings.model, "method": "lape", "sets": [], "max_length": None,
                               "truncated": {}}
    lines = [f"LAPE language-specific neurons → {out_dir}"]
    for language, neurons in sets.items():
        file = str(lape_path(out_dir, language))
        summary["sets"].append({"language": language, "k": len(neurons), "file": file,
                                "per_layer": {str(k): v for k, v in neurons.per_layer_counts().items()}})
        extra = neurons.method.extra if neurons.method else {}
        summary["max_length"] = extra["max_length"]
        summary["truncated"].update(extra["truncated"])
        lines.append(f"  {language}: {len(neurons)} neurons → {file}")
    lines.append(_truncation_text(summary["max_length"], summary["truncated"]))
    emit(summary, as_json, "\n".join(lines))


@click.command("select")
@click.argument("scores", type=click.Path(dir_okay=False))
@settings_options(SelectSettings)
@quiet_option
@json_option
def select_command(scores: str, quiet: bool, as_json: bool, **params: Any) -> None:
    """Re-rank a scores-<lang>.safetensors file into a neuron set without recomputing."""
    from tnedit.identify.selection import run_select

    selected = run_select(settings_from_options(SelectSettings, params, scores=scores), reporter=reporter_for(quiet))
    neurons, counts = selected.neurons, selected.neurons.per_layer_counts()
    summary = {"file": str(selected.path), "language": selected.language, "type": selected.type, "k": len(neurons),
               "layers": neurons.method.layers if neurons.method else [],
               "per_layer": {str(a): b for a, b in counts.items()},
               **({"per_expert": neurons.per_expert_counts()} if neurons.has_experts else {}),
               "eta2_share": neurons.method.extra.get("eta2_share") if neurons.method else None}
    experts = f"\n  per expert: {_counts_text(neurons.per_expert_counts())}" if neurons.has_experts else ""
    emit(summary, as_json, f"{selected.language} type{selected.type}: {len(neurons)} neurons → {selected.path}\n"
         f"  per layer: {_counts_text(counts)}{experts}")


@click.command("compare")
@click.argument("a", type=click.Path(dir_okay=False))
@click.argument("b", type=click.Path(dir_okay=False))
@quiet_option
@json_option
def compare_command(a: str, b: str, quiet: bool, as_json: bool) -> None:
    """Overlap of two neuron sets: |A∩B|/|A|, Jaccard and a per-layer table."""
    from tnedit.identify import controls

    comparison = controls.compare(read_neurons(a, "A"), read_neurons(b, "B"))
    if comparison.same_model is False:
        reporter_for(quiet).warn(f"{a} and {b} were made for different models (fingerprints differ)")
    result = {"a": a, "b": b, **comparison.to_dict()}
    lines = [
        f"A = {a} ({comparison.size_a} neurons), B = {b} ({comparison.size_b} neurons)",
        f"|A∩B| = {comparison.intersection}   |A∩B|/|A| = {comparison.overlap:.4f}   "
        f"|A∩B|/|B| = {comparison.overlap_b:.4f}   Jaccard = {comparison.jaccard:.4f}",
        f"{'layer':>5} {'A':>6} {'B':>6} {'A∩B':>6}",
    ]
    lines += [f"{r['layer']:>5} {r['a']:>6} {r['b']:>6} {r['both']:>6}" for r in comparison.per_layer]
    emit(result, as_json, "\n".join(lines))
