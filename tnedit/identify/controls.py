"""Random controls, the model's shape without its weights, and the overlap of two neuron sets.

A random control draws as many neurons as a reference set from the same candidate layers, disjoint
from it and seeded, so an edit's effect can be told from the effect of editing that many neurons at
all. evaluate draws its control with :func:`random_control` too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tnedit.checkpoint import Checkpoint, is_hub_id, open_checkpoint
from tnedit.edit.spec import check_neurons
from tnedit.errors import InputError, NeuronSetError
from tnedit.experts import NeuronSpace, expert_label
from tnedit.formats.layers import format_layers
from tnedit.formats.neurons import Method, ModelInfo, Neuron, NeuronSet
from tnedit.identify.outputs import check_output_json, read_neurons, save_neuron_set
from tnedit.identify.settings import IdentifySettings
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.versions import __version__


def _control_layers(like: NeuronSet, layers: Sequence[int] | None) -> list[int]:
    if layers is None:
        if like.method and like.method.layers:
            layers = list(like.method.layers)
        else:
            layers = sorted({n.layer for n in like.neurons})
    return sorted(set(int(x) for x in layers))


def _draw_per_layer(rng: np.random.Generator, like: NeuronSet, layers: list[int], width: int,
                    excluded: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """As many neurons per layer as ``like`` has there."""
    want = like.per_layer_counts()
    picked: list[tuple[int, int]] = []
    for layer in layers:
        free = np.array([i for i in range(width) if (layer, i) not in excluded])
        n = want.get(layer, 0)
        if n > free.size:
            raise NeuronSetError(f"random control: layer {layer} has only {free.size} free neurons, need {n}")
        picked += [(layer, int(i)) for i in rng.choice(free, size=n, replace=False)]
    return picked


def _draw_uniform(rng: np.random.Generator, layers: list[int], width: int, excluded: set[tuple[int, int]],
                  k: int) -> list[tuple[int, int]]:
    """``k`` neurons drawn uniformly from all free neurons of ``layers``."""
    position = {layer: j for j, layer in enumerate(layers)}
    mask = np.ones(len(layers) * width, dtype=bool)
    for layer, index in excluded:
        if layer in position:
            mask[position[layer] * width + index] = False
    free = np.flatnonzero(mask)
    if k > free.size:
        raise NeuronSetError(
            f"random control: k={k} but only {free.size} neurons remain in layers {format_layers(layers)} "
            "after excluding the reference set"
        )
    chosen = rng.choice(free, size=k, replace=False)
    return [(layers[int(c) // width], int(c) % width) for c in chosen]


def _control_method(like: NeuronSet, layers: list[int], k: int, seed: int, match_layers: bool) -> Method:
    source = like.method
    return Method(
        kind="random",
        type=source.type if source else None,
        language=source.language if source else None,
        languages=list(source.languages) if source else [],
        layers=layers,
        k=k,
        data=dict(source.data) if source else {},
        position=source.position if source else "last",
        dtype=source.dtype if source else None,
        tokenizer=dict(source.tokenizer) if source else {},
        seed=seed,
        tnedit_version=__version__,
        extra={"like_sha256": like.sha256(), "excluded": len(like.keys()), "match_layers": match_layers,
               "like_kind": source.kind if source else None},
    )


def random_control(
    like: NeuronSet,
    num_layers: int,
    intermediate_size: int,
    seed: int,
    *,
    layers: Sequence[int] | None = None,
    k: int | None = None,
    match_layers: bool = False,
    space: NeuronSpace | None = None,
) -> NeuronSet:
    """k random neurons from the candidate layers of ``like``, excluding ``like``'s neurons, seeded.

    Candidate layers: ``layers`` if given, else ``like.method.layers``, else the layers ``like``
    uses. ``match_layers=True`` draws the same number per layer as ``like`` instead of uniformly.
    For a mixture-of-experts model (``space``) the control draws, for each expert of each layer, as
    many of that expert's neurons as ``like`` has there: a routed expert's neurons act only on the
    tokens routed to it, so only the same experts make a like-for-like control.
    """
    if space is not None and space.moe:
        return _expert_control(like, space, seed)
    layers = _control_layers(like, layers)
    if not layers:
        raise NeuronSetError("random control: the reference set has no neurons and no candidate layers")
    like.validate_shape(num_layers, intermediate_size, "--like")
    bad = [x for x in layers if not 0 <= x < num_layers]
    if bad:
        raise NeuronSetError(f"random control: layer {bad[0]} is out of range (the model has {num_layers} layers)")
    k = len(like) if k is None else int(k)
    excluded = like.keys()
    rng = np.random.default_rng(seed)
    if match_layers:
        picked = _draw_per_layer(rng, like, layers, intermediate_size, excluded)
    else:
        picked = _draw_uniform(rng, layers, intermediate_size, excluded, k)
    picked.sort()
    method = _control_method(like, layers, len(picked), seed, match_layers)
    return NeuronSet(neurons=[Neuron(a, b) for a, b in picked], model=like.model, method=method)


def _expert_control(like: NeuronSet, space: NeuronSpace, seed: int) -> NeuronSet:
    check_neurons(like.neurons, space, "--like")
    rng = np.random.default_rng(seed)
    excluded = like.keys()
    wanted = Counter((n.layer, n.expert) for n in like.neurons)
    picked: list[Neuron] = []
    for (layer, expert), count in sorted(wanted.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        block = space.block(layer, expert)
        width = block.width if block is not None else 0
        free = np.array([i for i in range(width) if Neuron(layer, i, expert=expert).key not in excluded])
        if count > free.size:
            raise NeuronSetError(f"random control: layer {layer} {expert_label(expert)} has only {free.size} free "
                                 f"neurons, need {count}")
        picked += [Neuron(layer, int(i), expert=expert) for i in sorted(rng.choice(free, size=count, replace=False))]
    layers = sorted({n.layer for n in like.neurons})
    method = _control_method(like, layers, len(picked), seed, match_layers=True)
    return NeuronSet(neurons=picked, model=like.model, method=method)


def _local_checkpoint(model: str) -> Checkpoint | None:
    """The checkpoint of a local directory (a path that is no model directory fails here, one line); None for a
    Hub id."""
    local = Path(model).expanduser()
    if local.exists() or not is_hub_id(str(model)):
        return open_checkpoint(local)
    return None


def model_shape(model: str, like: NeuronSet | None = None) -> tuple[ModelInfo | None, int, int]:
    """(model info if known, layers, intermediate size) without loading weights.

    Reads the checkpoint headers of a local directory (via :mod:`tnedit.checkpoint`); for a Hub id
    falls back to the ``model`` block of ``like``.
    """
    return _shape(_local_checkpoint(model), model, like)


def _shape(checkpoint: Checkpoint | None, model: str, like: NeuronSet | None) -> tuple[ModelInfo | None, int, int]:
    if checkpoint is not None:
        info = ModelInfo(
            name_or_path=model,
            model_type=checkpoint.model_type,
            num_layers=checkpoint.num_layers,
            intermediate_size=checkpoint.intermediate_size,
            fingerprint=checkpoint.fingerprint(),
        )
        return info, checkpoint.num_layers, checkpoint.intermediate_size
    if like is not None and like.model is not None:
        return like.model, like.model.num_layers, like.model.intermediate_size
    raise InputError(
        f"{model}: not a local model directory, and the --like file has no 'model' block to read the shape from"
    )


# --- tnedit identify --control random ------------------------------------------------------------


def control_path(like: str, seed: int, output: str | None) -> Path:
    """-o FILE.json as is; -o DIR (or no -o: the --like file's directory) gets <like>-random-seed<N>.json."""
    name = f"{Path(like).stem}-random-seed{seed}.json"
    if output is None:
        return Path(like).with_name(name)
    out = Path(output)
    return out if out.suffix.lower() == ".json" else out / name


def run_random_control(settings: IdentifySettings, *, reporter: Reporter | None = None) -> tuple[NeuronSet, Path]:
    """Draw a random control like ``settings.like`` for ``settings.model`` and write it; returns (set, file)."""
    reporter = resolve_reporter(reporter)
    if settings.like is None:
        raise InputError("--control random needs --like NEURONS.json (the set to match)")
    like, model = str(settings.like), settings.model
    out = control_path(like, settings.seed, None if settings.output is None else str(settings.output))
    check_output_json(out, overwrite=settings.overwrite, inputs=[like], model=model)
    reference = read_neurons(like, "--like")
    checkpoint = _local_checkpoint(model)
    info, num_layers, width = _shape(checkpoint, model, reference)
    space = checkpoint.neuron_space if checkpoint is not None and checkpoint.neuron_space.moe else None
    if space is None and reference.has_experts:
        raise NeuronSetError(f"{like}: the set names experts; --control random needs the mixture-of-experts model "
                             "as a local directory to read its experts from")
    control = random_control(reference, num_layers, width, settings.seed, match_layers=settings.match_layers,
                             space=space)
    if info is not None:
        control.model = info if reference.model is None else reference.model
    if reference.model is not None and info is not None and reference.model.fingerprint != info.fingerprint:
        reporter.warn(f"{like}: its model fingerprint differs from {model}'s; the control uses {model}'s shape")
        control.model = info
    save_neuron_set(control, out)
    return control, out


# --- compare -------------------------------------------------------------------------------------


@dataclass
class Comparison:
    size_a: int
    size_b: int
    intersection: int
    overlap: float  # |A ∩ B| / |A|
    overlap_b: float  # |A ∩ B| / |B|
    jaccard: float
    per_layer: list[dict[str, int]]  # {layer, a, b, both}
    same_model: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(a: NeuronSet, b: NeuronSet) -> Comparison:
    """Overlap of two neuron sets: |A∩B|/|A|, |A∩B|/|B|, Jaccard and a per-layer table."""
    ka, kb = a.keys(), b.keys()
    both = ka & kb
    union = ka | kb
    layers = sorted({x[0] for x in union})
    per_layer = [
        {
            "layer": layer,
            "a": sum(1 for x in ka if x[0] == layer),
            "b": sum(1 for x in kb if x[0] == layer),
            "both": sum(1 for x in both if x[0] == layer),
        }
        for layer in layers
    ]
    same = None
    if a.model is not None and b.model is not None:
        same = a.model.fingerprint == b.model.fingerprint
    return Comparison(
        size_a=len(ka),
        size_b=len(kb),
        intersection=len(both),
        overlap=len(both) / len(ka) if ka else 0.0,
        overlap_b=len(both) / len(kb) if kb else 0.0,
        jaccard=len(both) / len(union) if union else 0.0,
        per_layer=per_layer,
        same_model=same,
    )


def with_k(neurons: NeuronSet, k: int) -> NeuronSet:
    """The first k neurons of a ranked set, with ``method.k`` updated."""
    out = neurons.top(k)
    if out.method is not None:
        out = replace(out, method=replace(out.method, k=len(out.neurons)))
    return out
