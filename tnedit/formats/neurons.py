"""The neuron-set file format (``tnedit.neurons/1``) and the plain neuron lists apply accepts.

Nearly a leaf: it imports only ``tnedit.errors`` and ``tnedit.formats.outputs`` (standard library only), so
files can be read and validated without torch or numpy.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from tnedit.errors import NeuronSetError
from tnedit.formats.digest import sha256_bytes
from tnedit.formats.outputs import write_text

FORMAT = "tnedit.neurons/1"
FLOAT32_MAX = 3.4028234663852886e38  # factors are applied in float32: a larger one is already inf
# Where a transfer set's centroids came from (``method.centroids``): the raw decoder-layer outputs, or HF's
# output_hidden_states (the last layer's after the final norm, as the authors' code reads them).
CentroidSource = Literal["layer-outputs", "hidden-states"]
CENTROID_SOURCES: tuple[str, ...] = get_args(CentroidSource)
DEFAULT_CENTROIDS = "layer-outputs"


# The name of NeuronSetError before the error family was one; kept for library callers for one release.
NeuronFormatError = NeuronSetError


SHARED = "shared"
# A mixture-of-experts neuron's expert: a routed expert's number or "shared"; None for a dense MLP layer.
ExpertTag = int | Literal["shared"] | None


@dataclass(frozen=True)
class Neuron:
    layer: int
    index: int
    score: float | None = None
    factor: float | None = None  # a per-neuron factor overrides the operation's factor
    expert: ExpertTag = None

    @property
    def key(self) -> tuple[int, int] | tuple[int, int, int | str]:
        """``(layer, index)``, or ``(layer, index, expert)`` for an expert's neuron."""
        return (self.layer, self.index) if self.expert is None else (self.layer, self.index, self.expert)

    @property
    def label(self) -> str:
        """``3:17``, or ``3:e2:17`` / ``3:shared:17`` for an expert's neuron."""
        if self.expert is None:
            return f"{self.layer}:{self.index}"
        return f"{self.layer}:{expert_label(self.expert)}:{self.index}"


def expert_label(expert: ExpertTag) -> str:
    """``"e3"``, ``"shared"``, or ``"dense"`` (no expert): how tables and messages name an expert."""
    if expert is None:
        return "dense"
    return SHARED if expert == SHARED else f"e{expert}"


@dataclass
class ModelInfo:
    name_or_path: str
    model_type: str
    num_layers: int
    intermediate_size: int
    fingerprint: str
    revision: str | None = None
    hidden_size: int | None = None


@dataclass
class Method:
    """How a neuron set was made. ``kind``: transfer, lape, random or manual."""

    kind: str
    type: int | None = None
    language: str | None = None
    languages: list[str] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    k: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    position: str = "last"
    dtype: str | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    tnedit_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    centroids: str = DEFAULT_CENTROIDS  # one of CENTROID_SOURCES; a file without the key means the default


def method_dict(method: Method) -> dict[str, Any]:
    """The ``method`` block as written: ``centroids`` only when it is not the default, so a default set (and every
    LAPE, random and manual one) is byte-identical, digest included, to one written before the key existed."""
    out = asdict(method)
    if out["centroids"] == DEFAULT_CENTROIDS:
        del out["centroids"]
    return out


@dataclass
class NeuronSet:
    neurons: list[Neuron]
    model: ModelInfo | None = None
    method: Method | None = None

    def __len__(self) -> int:
        return len(self.neurons)

    def keys(self) -> set[tuple[int, int]]:
        return {n.key for n in self.neurons}

    def top(self, k: int | None) -> NeuronSet:
        return self if k is None else replace(self, neurons=self.neurons[:k])

    def in_layers(self, layers: Iterable[int] | None) -> NeuronSet:
        if layers is None:
            return self
        wanted = set(layers)
        return replace(self, neurons=[n for n in self.neurons if n.layer in wanted])

    def per_layer_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(n.layer for n in self.neurons).items()))

    @property
    def has_experts(self) -> bool:
        return any(n.expert is not None for n in self.neurons)

    def per_expert_counts(self) -> dict[str, int]:
        """Neurons per expert over all layers (``e0``, ``shared``, ``dense``); empty for a set without experts."""
        if not self.has_experts:
            return {}
        names = Counter(expert_label(n.expert) for n in self.neurons)
        return dict(sorted(names.items(), key=lambda kv: (kv[0] in ("shared", "dense"), len(kv[0]), kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": asdict(self.model) if self.model else None,
            "method": method_dict(self.method) if self.method else None,
            "neurons": [_neuron_dict(n) for n in self.neurons],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def sha256(self) -> str:
        return sha256_bytes(self.to_json().encode())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a reader never sees half a file, and a killed writer's temporary is cleaned up."""
        return write_text(Path(path), self.to_json())

    def validate_shape(self, num_layers: int, intermediate_size: int, where: str = "neurons") -> None:
        for n in self.neurons:
            if n.expert is not None:
                raise NeuronSetError(
                    f"{where}: neuron {n.label} names an expert, but the model has no experts (a dense model: "
                    "drop the 'expert' keys, or use the mixture-of-experts model the set was made for)"
                )
            if not 0 <= n.layer < num_layers:
                raise NeuronSetError(
                    f"{where}: layer {n.layer} is out of range (the model has layers 0..{num_layers - 1})"
                )
            if not 0 <= n.index < intermediate_size:
                raise NeuronSetError(
                    f"{where}: neuron index {n.index} in layer {n.layer} is out of range "
                    f"(intermediate size {intermediate_size}: 0..{intermediate_size - 1})"
                )


def _neuron_dict(n: Neuron) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": n.layer}
    if n.expert is not None:
        out["expert"] = n.expert
    out["index"] = n.index
    if n.score is not None:
        out["score"] = n.score
    if n.factor is not None:
        out["factor"] = n.factor
    return out


# --- parsing -------------------------------------------------------------------------------------


def parse_factor(value: Any, where: str) -> float:
    """A finite factor, finite in float32 too: edits multiply in float32, where 1e39 is already inf."""
    if isinstance(value, bool):
        raise NeuronSetError(f"{where}: factor must be a finite number, got {value!r}")
    try:
        factor = float(value)
    except (TypeError, ValueError, OverflowError):
        raise NeuronSetError(f"{where}: factor must be a finite number, got {value!r}") from None
    if not math.isfinite(factor):
        raise NeuronSetError(f"{where}: factor must be a finite number, got {value!r}")
    if abs(factor) > FLOAT32_MAX:
        raise NeuronSetError(
            f"{where}: factor {value!r} is not finite in float32 (|factor| must be at most {FLOAT32_MAX:.4g})"
        )
    return factor


# ASCII digits only: str.isdigit() accepts '²', which int() then rejects.
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _parse_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise NeuronSetError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    if isinstance(value, int):
        parsed = value
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        parsed = int(value.strip())
    else:
        raise NeuronSetError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    if parsed < 0:
        raise NeuronSetError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return parsed


# An expert in a list or CSV row, as Neuron.label writes it: e3 (routed expert 3) or shared.
_EXPERT_FIELD = re.compile(r"e([0-9]+)|shared", re.ASCII)


def _neuron_from_fields(fields: Sequence[Any], where: str, expert_column: bool = False) -> Neuron:
    """``layer,index[,factor]``, or with an expert second: ``layer,e3,index[,factor]`` / ``layer,shared,index``
    (a CSV's ``expert`` column also takes a bare number, and is empty for a dense layer's neuron)."""
    fields, expert = list(fields), None
    second = str(fields[1]).strip() if len(fields) in (3, 4) else ""
    if expert_column or _EXPERT_FIELD.fullmatch(second):
        expert = _expert_field(fields.pop(1), where)
    if len(fields) not in (2, 3):
        raise NeuronSetError(f"{where}: expected layer,index[,factor], got {list(fields)!r}")
    layer = _parse_int(fields[0], "layer", where)
    index = _parse_int(fields[1], "index", where)
    factor = parse_factor(fields[2], where) if len(fields) == 3 else None
    return Neuron(layer, index, factor=factor, expert=expert)


def _expert_field(value: Any, where: str) -> ExpertTag:
    text = str(value).strip()
    if not text:
        return None
    match = _EXPERT_FIELD.fullmatch(text)
    return parse_expert(match.group(1) if match and match.group(1) else text, where)


def parse_expert(value: Any, where: str) -> ExpertTag:
    """An ``expert`` value: a non-negative integer, ``"shared"``, or absent (None, a dense layer's neuron)."""
    if value is None or value == SHARED:
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NeuronSetError(f"{where}: 'expert' must be a non-negative integer or \"shared\", got {value!r}")
    return value


def _neuron_from_mapping(obj: dict[str, Any], where: str) -> Neuron:
    for key in ("layer", "index"):
        if key not in obj:
            raise NeuronSetError(f"{where}: missing key '{key}' (expected layer, index[, score, factor])")
    score = obj.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise NeuronSetError(f"{where}: 'score' must be a finite number, got {score!r}")
        score = float(score)
    factor = parse_factor(obj["factor"], where) if obj.get("factor") is not None else None
    return Neuron(
        _parse_int(obj["layer"], "layer", where),
        _parse_int(obj["index"], "index", where),
        score=score,
        factor=factor,
        expert=parse_expert(obj.get("expert"), where),
    )


def parse_neuron_list(text: str, where: str = "--neurons") -> list[Neuron]:
    """``"3:17,3:99,12:5"``; a third field gives a per-neuron factor: ``"3:17:0.5"``; an expert's neuron names
    its expert second: ``"5:e17:301"``, ``"5:shared:12:0.5"``."""
    items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
    if not items:
        raise NeuronSetError(f"{where}: no neurons given (expected LAYER:INDEX[,LAYER:INDEX...])")
    return [_neuron_from_fields(item.split(":"), f"{where} item '{item}'") for item in items]


def _parse_csv(text: str, where: str) -> list[Neuron]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    expert_column = False
    if rows and not _DIGITS.fullmatch(rows[0][0].strip().lstrip("-")):
        header = [c.strip().lower() for c in rows[0]]
        expert_column = header[:3] == ["layer", "expert", "index"]
        if header[:2] != ["layer", "index"] and not expert_column:
            raise NeuronSetError(f"{where}: CSV header must start with layer,index (or layer,expert,index), "
                                 f"got {rows[0]!r}")
        rows = rows[1:]
    return [_neuron_from_fields([c.strip() for c in row], f"{where} row {i}", expert_column)
            for i, row in enumerate(rows, start=1)]


def _require(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise NeuronSetError(f"{where}: missing key '{key}'")
    if not isinstance(obj[key], kind):
        raise NeuronSetError(f"{where}: key '{key}' must be a {kind.__name__}")
    return obj[key]


def neuron_set_from_dict(obj: dict[str, Any], where: str) -> NeuronSet:
    if obj.get("format") != FORMAT:
        raise NeuronSetError(f"{where}: key 'format' must be '{FORMAT}', got {obj.get('format')!r}")
    raw = _require(obj, "neurons", list, where)
    neurons = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise NeuronSetError(f"{where}: neurons[{i}] must be an object with layer and index")
        neurons.append(_neuron_from_mapping(item, f"{where}: neurons[{i}]"))
    model = None
    if obj.get("model") is not None:
        model = ModelInfo(**_checked_block(_require(obj, "model", dict, where), "model", _MODEL_FIELDS, where))
    method = None
    if obj.get("method") is not None:
        method = Method(**_checked_block(_require(obj, "method", dict, where), "method", _METHOD_FIELDS, where))
    return NeuronSet(neurons=neurons, model=model, method=method)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What each field of the model and method blocks must hold: (description, check).
_KINDS: dict[str, Any] = {
    "a string": lambda v: isinstance(v, str),
    "an integer": _is_int,
    "a positive integer": lambda v: _is_int(v) and v > 0,
    "a non-negative integer": lambda v: _is_int(v) and v >= 0,
    "an object": lambda v: isinstance(v, dict),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of non-negative integers": lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v),
    " or ".join(CENTROID_SOURCES): lambda v: v in CENTROID_SOURCES,
}
_MODEL_FIELDS = {
    "name_or_path": "a string",
    "model_type": "a string",
    "num_layers": "a positive integer",
    "intermediate_size": "a positive integer",
    "fingerprint": "a string",
    "revision": "a string",
    "hidden_size": "a positive integer",
}
_METHOD_FIELDS = {
    "kind": "a string",
    "type": "an integer",
    "language": "a string",
    "languages": "a list of strings",
    "layers": "a list of non-negative integers",
    "k": "a non-negative integer",
    "data": "an object",
    "position": "a string",
    "dtype": "a string",
    "tokenizer": "an object",
    "seed": "an integer",
    "tnedit_version": "a string",
    "extra": "an object",
    "centroids": " or ".join(CENTROID_SOURCES),
}


def _checked_block(block: dict[str, Any], name: str, kinds: dict[str, str], where: str) -> dict[str, Any]:
    """The ``model`` or ``method`` object with every field of the type its dataclass expects.

    Required fields must be present; fields whose default is None may be null; the others, when
    present, must hold their kind (a list stays a list).
    """
    cls = ModelInfo if name == "model" else Method
    for key in block:
        if key not in kinds:
            raise NeuronSetError(f"{where}: key '{name}.{key}' is unknown (expected {', '.join(kinds)})")
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if f.name not in block:
            if required:
                raise NeuronSetError(f"{where}: key '{name}.{f.name}' is missing")
            continue
        value, kind = block[f.name], kinds[f.name]
        if value is None and not required and f.default is None:
            continue
        if not _KINDS[kind](value):
            raise NeuronSetError(f"{where}: key '{name}.{f.name}' must be {kind}, got {value!r}")
    return block


def _parse_json(text: str, where: str) -> NeuronSet:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NeuronSetError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(obj, dict):
        return neuron_set_from_dict(obj, where)
    if isinstance(obj, list):
        neurons = []
        for i, item in enumerate(obj):
            at = f"{where}: item {i}"
            if isinstance(item, dict):
                neurons.append(_neuron_from_mapping(item, at))
            elif isinstance(item, list):
                neurons.append(_neuron_from_fields(item, at))
            else:
                raise NeuronSetError(f"{at}: expected [layer, index(, factor)] or an object")
        return NeuronSet(neurons=neurons, method=Method(kind="manual"))
    raise NeuronSetError(f"{where}: expected a '{FORMAT}' object or a list of neurons")


def load_neurons(path: str | os.PathLike[str]) -> NeuronSet:
    """Read ``neurons.json``, a JSON list, or a CSV of ``layer,index[,factor]``."""
    p = Path(path)
    if not p.is_file():
        raise NeuronSetError(f"{p}: neurons file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NeuronSetError(f"{p}: not a UTF-8 text file") from None
    if not text.strip():
        raise NeuronSetError(f"{p}: the file is empty")
    if p.suffix.lower() == ".csv" or not text.lstrip().startswith(("{", "[")):
        return NeuronSet(neurons=_parse_csv(text, str(p)), method=Method(kind="manual"))
    return _parse_json(text, str(p))


def merge_duplicates(neurons: Sequence[Neuron]) -> tuple[list[Neuron], list[tuple[int, int]]]:
    """Keep the first of each (layer, index); return the kept list and the duplicated keys.

    Two entries with different explicit factors are a contradiction, not a duplicate.
    """
    seen: dict[tuple[int, int], Neuron] = {}
    dups: list[tuple[int, int]] = []
    for n in neurons:
        prior = seen.get(n.key)
        if prior is None:
            seen[n.key] = n
            continue
        if prior.factor != n.factor:
            raise NeuronSetError(
                f"neuron {n.label} is listed twice with different factors ({prior.factor} and {n.factor})"
            )
        dups.append(n.key)
    return list(seen.values()), dups


_FILE_SUFFIXES = {".json", ".csv", ".tsv", ".txt"}


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or Path(value).suffix.lower() in _FILE_SUFFIXES


def read_neuron_argument(value: str, where: str = "--neurons") -> tuple[NeuronSet, str]:
    """``--neurons`` takes either form: a neurons file, or an inline list ``"3:17,3:99:0.5"``.

    Returns the set and a label for messages and provenance (the path, or ``where``). A value that
    names no file and does not look like a path is parsed as a list, so its error names the item.
    """
    path = Path(value).expanduser()
    try:
        is_file, is_dir = path.is_file(), path.is_dir()
    except OSError:  # a long inline list is no valid file name (ENAMETOOLONG)
        is_file = is_dir = False
    if is_file:
        return load_neurons(path), str(value)
    if is_dir:
        raise NeuronSetError(f"{where}: '{value}' is a directory; expected a neurons file or a list like 3:17,3:99")
    if _looks_like_path(value) or ":" not in value:
        raise NeuronSetError(
            f"{where}: '{value}' is neither a neurons file nor a list of layer,index[,factor] items like 3:17,3:99:0.5"
        )
    return NeuronSet(parse_neuron_list(value, where), method=Method(kind="manual")), where
