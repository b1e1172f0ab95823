"""The settings of identify, LAPE and select: each field declared once, with its CLI spelling and help.

``tnedit.cli.identify`` generates its options from these classes and recipes nest them. Each class
validates itself in one place (:meth:`check`), with the messages the CLI prints. The parsing helpers
(types, languages, candidate layers) live here too, so the plan resolves them once. Torch-free: the CLI
imports this module to build ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import click

from tnedit.errors import InputError
from tnedit.formats.layers import parse_layers, round_half_up
from tnedit.formats.neurons import DEFAULT_CENTROIDS, CentroidSource
from tnedit.identify.outputs import check_output_directory
from tnedit.settings import setting

TYPE1_FRACTION = 0.625
SHARED_LANGUAGE = "en"

NeuronType = Literal[1, 2, "both"]
IdentifyMethod = Literal["transfer", "lape"]


# --- parsing -------------------------------------------------------------------------------------


def parse_types(value: int | str | Sequence[int]) -> list[int]:
    """``1``, ``2``, ``"both"`` (or ``"1,2"``) → the sorted list of neuron types."""
    if isinstance(value, int) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, str):
        text = value.strip().lower()
        items = [1, 2] if text == "both" else [p.strip() for p in text.split(",") if p.strip()]
    else:
        items = list(value)
    out = set()
    for item in items:
        if str(item) not in ("1", "2"):
            raise InputError(f"--type: expected 1, 2 or both, got {value!r}")
        out.add(int(item))
    if not out:
        raise InputError(f"--type: expected 1, 2 or both, got {value!r}")
    return sorted(out)


def default_layers(neuron_type: int, num_layers: int) -> list[int]:
    """Type-1: the first round(0.625·L) layers (0–19 of 32); Type-2: the rest (20–31 of 32)."""
    split = round_half_up(TYPE1_FRACTION * num_layers)
    return list(range(split)) if neuron_type == 1 else list(range(split, num_layers))


def candidate_layers(types: Sequence[int], num_layers: int, spec: str | Sequence[int] | None) -> dict[int, list[int]]:
    """Each type's candidate layers: ``spec`` for every type when given, else the type's defaults."""
    explicit = parse_layers(spec, num_layers)
    out = {t: (explicit if explicit is not None else default_layers(t, num_layers)) for t in types}
    for t, layers in out.items():
        if not layers:
            raise InputError(f"type {t}: no candidate layers in a {num_layers}-layer model; pass --layers")
    return out


def parse_languages(values: str | Iterable[str] | None) -> list[str]:
    """``["ja", "ko"]``, ``"ja,ko"`` or a mix (``--lang ja --lang ko,it``) → unique codes in order."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for code in str(item).split(","):
            code = code.strip()
            if code and code not in out:
                out.append(code)
    return out


def check_exclude_massive(value: float) -> None:
    """``--exclude-massive Q``: a fraction 0 ≤ Q < 1 (NaN refused too)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InputError(f"--exclude-massive: expected a fraction 0 <= Q < 1 of all neurons, got {value!r}")


def check_centroids(method: str, centroids: str) -> None:
    """LAPE ranks activation probabilities and has no centroids: a centroid source other than the default is refused."""
    if method == "lape" and centroids != DEFAULT_CENTROIDS:
        raise InputError(f"--centroids {centroids}: --method lape has no centroids; "
                         f"expected no --centroids (or {DEFAULT_CENTROIDS})")


CENTROIDS_HELP = ("layer-outputs: centroids from the raw decoder-layer outputs (the last layer before the final "
                  "norm); hidden-states: from HF's output_hidden_states, as the authors' code (the last layer's "
                  "centroid after the final norm).")

EXCLUDE_MASSIVE_HELP = ("Drop the top-Q fraction of all the model's neurons by mean |activation| on the English "
                        "sentences (massive-activation neurons) before the top k; 0 keeps them.")


def _items(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- settings ------------------------------------------------------------------------------------


@dataclass
class PassSettings:
    """What every pass over a model and a corpus needs: identify and LAPE share these."""

    model: str = setting("", help="A local model directory or a Hub id.", cli=False, recipe=False)
    langs: Sequence[str] = setting(
        default_factory=list, multiple=True, recipe=False, flags=("--lang", "--langs"),
        help="Target language(s): --lang ja --lang ko or --lang ja,ko. Default: every non-English language of "
             "the data. LAPE lists every language, en included.")
    data: str | None = setting(None, help="TSV (header of language codes), JSONL or hf:NAME[:CONFIG]. "
                                          "Default: the built-in corpus.")
    limit: int | None = setting(None, help="Use only the first N pairs.")
    layers: str | Sequence[int] | None = setting(
        None, help="Candidate layers: 0-11, 0,3,5-7 or fractions 0.0:0.625. Default: Type-1 the first 62.5%, "
                   "Type-2 the rest.")
    batch_size: int = setting(16, show_default=True, help="Sentences per forward pass.")
    dtype: str = setting("auto", show_default=True, help="auto (the checkpoint's), float32, bfloat16, float16.")
    device: str = setting("auto", show_default=True, help="cpu, cuda, mps or auto.")
    device_map: str | None = setting(None, help="e.g. auto: spread a large model over devices (accelerate).")
    max_length: int | None = setting(
        None, help="Truncate sentences to this many tokens (default: the model's context length, at most 4096).")
    revision: str | None = setting(None, help="Hub revision of MODEL.")
    output: str | os.PathLike[str] | None = setting(
        None, flags=("-o", "--output"), recipe=False,
        help="Output directory (default ./tnedit-identify/<model-name>); a .json file for --control.")

    def languages(self) -> list[str]:
        """The target languages: unique codes in the order given (``["ja,ko", "it"]`` → ja, ko, it)."""
        return parse_languages(_items(self.langs))

    def check_batch_size(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class IdentifySettings(PassSettings):
    """Everything one ``tnedit identify`` takes: the transfer-neuron run, and the verb's LAPE and control modes.

    ``type``: 1, 2 or "both". ``layers``: None for the defaults (Type-1 = the first round(0.625·L)
    layers, Type-2 = the rest), else a spec such as ``"0-11"``, ``"0,3,5-7"``, ``"0.0:0.625"`` (fractions
    of the depth) or a list of ints; it applies to every requested type. ``data``: None (built-in
    corpus), a TSV/JSONL path or ``hf:NAME[:CONFIG]``. ``output``: directory for the neuron sets, the
    score files and the resume state; None writes nothing (:func:`run_identify`).
    """

    type: NeuronType = setting(1, show_default=True, help="Type-1 (toward the shared space) or Type-2 (toward the "
                                                          "L2 space) transfer neurons.")
    k: int = setting(1000, flags=("-k", "--k"), show_default=True, help="Neurons to keep per language and type.")
    method: IdentifyMethod = setting("transfer", show_default=True,
                                     help="transfer: rank transfer neurons; lape: LAPE language-specific neurons.")
    control: Literal["random"] | None = setting(
        None, recipe=False, help="Write a random control set like --like (same candidate layers and count, disjoint).")
    like: str | None = setting(None, recipe=False, click_type=click.Path(dir_okay=False),
                               help="Reference neuron set for --control.")
    match_layers: bool = setting(False, recipe=False, help="--control: draw as many per layer as the reference set.")
    seed: int = setting(42, show_default=True, help="Seed of the random control.")
    exclude_massive: float = setting(0.0, show_default=True, help=EXCLUDE_MASSIVE_HELP)
    centroids: CentroidSource = setting(DEFAULT_CENTROIDS, show_default=True, help=CENTROIDS_HELP)
    checkpoint_every: int | None = setting(None, help="Persist partial sums every N batches.")
    resume: bool = setting(False, recipe=False, help="Continue an interrupted run from its checkpoint under -o.")
    overwrite: bool = setting(False, recipe=False, help="--control: replace an existing -o file.")
    eta2: bool = setting(True, cli=False, help="Measure η² (language specificity) of every neuron.")

    def neuron_types(self) -> list[int]:
        return parse_types(self.type)

    def check(self) -> None:
        """The checks that need neither the model nor the data, in the order the CLI reports them."""
        check_centroids(self.method, self.centroids)
        if self.method != "transfer":
            raise InputError(f"method {self.method!r}: run_identify finds transfer neurons; "
                             "run LAPE with run_lape(lape_settings(settings))")
        self.neuron_types()
        self.check_batch_size()
        if self.k < 1:
            raise InputError(f"--k must be at least 1, got {self.k}")
        check_exclude_massive(self.exclude_massive)
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise InputError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
        if (self.checkpoint_every or self.resume) and self.output is None:
            raise InputError("--checkpoint-every and --resume need an output directory (-o)")
        if self.output is not None:
            check_output_directory(self.output, self.model)


@dataclass
class LapeSettings(PassSettings):
    """LAPE (Tang et al., ACL 2024): the shared pass settings plus the three rates of the selection."""

    top_rate: float = setting(0.01, cli=False, help="Share of all neurons kept (lowest entropy first).")
    filter_rate: float = setting(0.95, cli=False,
                                 help="Quantile of all probabilities a neuron must exceed in some language.")
    bar_rate: float = setting(0.95, cli=False,
                              help="Quantile a neuron's probability must exceed for a language to get it.")

    def check(self) -> None:
        if len(self.languages()) < 2:
            raise InputError("--method lape needs at least two languages (e.g. --langs en,ja,ko)")
        self.check_batch_size()
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.output is not None:
            check_output_directory(self.output, self.model)


def lape_settings(settings: PassSettings, **changes: Any) -> LapeSettings:
    """The LAPE settings of the pass fields of ``settings`` (an identify verb's, a recipe's), with ``changes``.

    An identify verb's or recipe's ``centroids`` other than the default is refused here: LAPE never reads it.
    """
    check_centroids("lape", getattr(settings, "centroids", DEFAULT_CENTROIDS))
    shared = {f.name: getattr(settings, f.name) for f in fields(PassSettings)}
    return LapeSettings(**{**shared, **changes})


@dataclass
class SelectSettings:
    """``tnedit select``: re-rank a scores file into a neuron set without a forward pass."""

    scores: str = setting("", cli=False, recipe=False, help="A scores-<lang>.safetensors written by identify.")
    type: Literal[1, 2] = setting(1, show_default=True, help="Neuron type to rank: 1 or 2.")
    k: int = setting(1000, flags=("-k", "--k"), show_default=True, help="Neurons to keep.")
    layers: str | Sequence[int] | None = setting(
        None, help="Candidate layers (default: those identify used for this type).")
    exclude_massive: float = setting(0.0, show_default=True, help=EXCLUDE_MASSIVE_HELP + " Needs a scores file "
                                     "with mean_abs_activation.")
    output: str | os.PathLike[str] | None = setting(None, flags=("-o", "--output"), recipe=False,
                                                    help="Neuron-set JSON (default: next to SCORES).")
    overwrite: bool = setting(False, recipe=False, help="Replace an existing output file.")
