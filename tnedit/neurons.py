"""The neuron-set file format (``tnedit.neurons/1``) and the plain neuron lists apply accepts.

A leaf module: it imports nothing from tnedit, so files can be read and validated without torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

FORMAT = "tnedit.neurons/1"


class NeuronFormatError(ValueError):
    """A neurons file or list that cannot be used as given. The message names the file and key."""


@dataclass(frozen=True)
class Neuron:
    layer: int
    index: int
    score: float | None = None
    factor: float | None = None  # a per-neuron factor overrides the operation's factor

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.index)


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": asdict(self.model) if self.model else None,
            "method": asdict(self.method) if self.method else None,
            "neurons": [_neuron_dict(n) for n in self.neurons],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def validate_shape(self, num_layers: int, intermediate_size: int, where: str = "neurons") -> None:
        for n in self.neurons:
            if not 0 <= n.layer < num_layers:
                raise NeuronFormatError(
                    f"{where}: layer {n.layer} is out of range (the model has layers 0..{num_layers - 1})"
                )
            if not 0 <= n.index < intermediate_size:
                raise NeuronFormatError(
                    f"{where}: neuron index {n.index} in layer {n.layer} is out of range "
                    f"(intermediate size {intermediate_size}: 0..{intermediate_size - 1})"
                )


def _neuron_dict(n: Neuron) -> dict[str, Any]:
    out: dict[str, Any] = {"layer": n.layer, "index": n.index}
    if n.score is not None:
        out["score"] = n.score
    if n.factor is not None:
        out["factor"] = n.factor
    return out


LEGACY_FINGERPRINT_PREFIX = "sha256:"
FINGERPRINT_PREFIX = "fp2:"


def fingerprint(
    model_type: str, projections: Sequence[tuple[int, str, Sequence[int]]], content_sha256: str | None = None
) -> str:
    """Hash of the MLP output projections, (layer, name relative to the layer, shape) each, and a content digest.

    Names are relative to the decoder layer so that a CausalLM checkpoint and a loaded base model
    (whose keys differ by a prefix) agree. Without ``content_sha256`` this is the shape-only
    fingerprint of tnedit 0.1 (prefix ``sha256:``), still accepted with a warning.
    """
    text = (
        model_type
        + "\n"
        + "\n".join(f"{layer}:{name}:{'x'.join(str(s) for s in shape)}" for layer, name, shape in sorted(projections))
    )
    if content_sha256 is None:
        return LEGACY_FINGERPRINT_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]
    return FINGERPRINT_PREFIX + hashlib.sha256(f"{text}\ncontent:{content_sha256}".encode()).hexdigest()[:32]


# --- parsing -------------------------------------------------------------------------------------


def parse_factor(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise NeuronFormatError(f"{where}: factor must be a finite number, got {value!r}")
    try:
        factor = float(value)
    except (TypeError, ValueError):
        raise NeuronFormatError(f"{where}: factor must be a finite number, got {value!r}") from None
    if not math.isfinite(factor):
        raise NeuronFormatError(f"{where}: factor must be a finite number, got {value!r}")
    return factor


def _parse_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise NeuronFormatError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    if isinstance(value, int):
        parsed = value
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        parsed = int(value.strip())
    else:
        raise NeuronFormatError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    if parsed < 0:
        raise NeuronFormatError(f"{where}: {what} must be a non-negative integer, got {value!r}")
    return parsed


def _neuron_from_fields(fields: Sequence[Any], where: str) -> Neuron:
    if len(fields) not in (2, 3):
        raise NeuronFormatError(f"{where}: expected layer,index[,factor], got {list(fields)!r}")
    layer = _parse_int(fields[0], "layer", where)
    index = _parse_int(fields[1], "index", where)
    factor = parse_factor(fields[2], where) if len(fields) == 3 else None
    return Neuron(layer, index, factor=factor)


def _neuron_from_mapping(obj: dict[str, Any], where: str) -> Neuron:
    for key in ("layer", "index"):
        if key not in obj:
            raise NeuronFormatError(f"{where}: missing key '{key}' (expected layer, index[, score, factor])")
    score = obj.get("score")
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise NeuronFormatError(f"{where}: 'score' must be a number, got {score!r}") from None
    factor = parse_factor(obj["factor"], where) if obj.get("factor") is not None else None
    return Neuron(
        _parse_int(obj["layer"], "layer", where),
        _parse_int(obj["index"], "index", where),
        score=score,
        factor=factor,
    )


def parse_neuron_list(text: str, where: str = "--neurons") -> list[Neuron]:
    """``"3:17,3:99,12:5"``; a third field gives a per-neuron factor: ``"3:17:0.5"``."""
    items = [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]
    if not items:
        raise NeuronFormatError(f"{where}: no neurons given (expected LAYER:INDEX[,LAYER:INDEX...])")
    return [_neuron_from_fields(item.split(":"), f"{where} item '{item}'") for item in items]


def _parse_csv(text: str, where: str) -> list[Neuron]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        header = [c.strip().lower() for c in rows[0]]
        if header[:2] != ["layer", "index"]:
            raise NeuronFormatError(f"{where}: CSV header must start with layer,index, got {rows[0]!r}")
        rows = rows[1:]
    return [_neuron_from_fields([c.strip() for c in row], f"{where} row {i}") for i, row in enumerate(rows, start=1)]


def _require(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise NeuronFormatError(f"{where}: missing key '{key}'")
    if not isinstance(obj[key], kind):
        raise NeuronFormatError(f"{where}: key '{key}' must be a {kind.__name__}")
    return obj[key]


def neuron_set_from_dict(obj: dict[str, Any], where: str) -> NeuronSet:
    if obj.get("format") != FORMAT:
        raise NeuronFormatError(f"{where}: key 'format' must be '{FORMAT}', got {obj.get('format')!r}")
    raw = _require(obj, "neurons", list, where)
    neurons = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise NeuronFormatError(f"{where}: neurons[{i}] must be an object with layer and index")
        neurons.append(_neuron_from_mapping(item, f"{where}: neurons[{i}]"))
    model = None
    if obj.get("model") is not None:
        m = _require(obj, "model", dict, where)
        try:
            model = ModelInfo(**m)
        except TypeError as exc:
            raise NeuronFormatError(f"{where}: key 'model' is malformed ({exc})") from None
    method = None
    if obj.get("method") is not None:
        m = _require(obj, "method", dict, where)
        try:
            method = Method(**m)
        except TypeError as exc:
            raise NeuronFormatError(f"{where}: key 'method' is malformed ({exc})") from None
    return NeuronSet(neurons=neurons, model=model, method=method)


def _parse_json(text: str, where: str) -> NeuronSet:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NeuronFormatError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
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
                raise NeuronFormatError(f"{at}: expected [layer, index(, factor)] or an object")
        return NeuronSet(neurons=neurons, method=Method(kind="manual"))
    raise NeuronFormatError(f"{where}: expected a '{FORMAT}' object or a list of neurons")


def load_neurons(path: str | os.PathLike[str]) -> NeuronSet:
    """Read ``neurons.json``, a JSON list, or a CSV of ``layer,index[,factor]``."""
    p = Path(path)
    if not p.is_file():
        raise NeuronFormatError(f"{p}: neurons file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NeuronFormatError(f"{p}: not a UTF-8 text file") from None
    if not text.strip():
        raise NeuronFormatError(f"{p}: the file is empty")
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
            raise NeuronFormatError(
                f"neuron {n.layer}:{n.index} is listed twice with different factors ({prior.factor} and {n.factor})"
            )
        dups.append(n.key)
    return list(seen.values()), dups


def round_half_up(x: float) -> int:
    """0.5 rounds up (Python's round() would send 2.5 to 2): round(0.625·L) as the paper means it."""
    return int(math.floor(x + 0.5))


def parse_layers(
    spec: str | Sequence[int] | None, num_layers: int | None = None, where: str = "--layers"
) -> list[int] | None:
    """``"0-11"``, ``"0,3,5-7"``, a list of ints, or ``"0.0:0.625"`` (fractions of the depth).

    A fraction range ``a:b`` keeps layers round(a·L) .. round(b·L) − 1 (half rounds up), so
    ``0:0.625`` of 32 layers is 0–19. Fractions need ``num_layers``; with it, every layer is
    range-checked. None stays None.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        layers = sorted({int(x) for x in spec})
    else:
        text = spec.strip()
        if not text:
            raise NeuronFormatError(f"{where}: empty layer specification")
        if ":" in text:
            layers = _fraction_layers(text, num_layers, where)
        else:
            found: set[int] = set()
            for item in (p.strip() for p in text.split(",")):
                m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item)
                if not m:
                    raise NeuronFormatError(f"{where}: '{item}' is not a layer or a range like 0-11 (in '{spec}')")
                lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
                if hi < lo:
                    raise NeuronFormatError(f"{where}: range '{item}' runs backwards")
                found.update(range(lo, hi + 1))
            layers = sorted(found)
    if num_layers is not None:
        bad = [x for x in layers if not 0 <= x < num_layers]
        if bad:
            raise NeuronFormatError(
                f"{where}: layer {bad[0]} is out of range (the model has layers 0..{num_layers - 1})"
            )
    if not layers:
        raise NeuronFormatError(f"{where}: no layers selected")
    return layers


def format_layers(layers: Iterable[int]) -> str:
    """The inverse of :func:`parse_layers`: [0, 1, 2, 5] → '0-2,5'."""
    ordered = sorted(set(layers))
    runs: list[str] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(runs)


def _fraction_layers(text: str, num_layers: int | None, where: str) -> list[int]:
    parts = text.split(":")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise NeuronFormatError(f"{where}: '{text}' is not a fraction range like 0.0:0.625") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise NeuronFormatError(f"{where}: fraction range '{text}' must satisfy 0 <= start < end <= 1")
    if num_layers is None:
        raise NeuronFormatError(f"{where}: a fraction range needs the model's layer count")
    layers = list(range(round_half_up(lo * num_layers), round_half_up(hi * num_layers)))
    if not layers:
        raise NeuronFormatError(f"{where}: '{text}' selects no layer of a {num_layers}-layer model")
    return layers


_INLINE_LIST = re.compile(r"[\s0-9:.,eE+-]+")


def read_neuron_argument(value: str, where: str = "--neurons") -> tuple[NeuronSet, str]:
    """``--neurons`` takes either form: a neurons file, or an inline list ``"3:17,3:99:0.5"``.

    Returns the set and a label for messages and provenance (the path, or ``where``).
    """
    path = Path(value).expanduser()
    if path.is_file():
        return load_neurons(path), str(value)
    if ":" in value and _INLINE_LIST.fullmatch(value):
        return NeuronSet(parse_neuron_list(value, where), method=Method(kind="manual")), where
    raise NeuronFormatError(f"{where}: '{value}' is neither a neurons file nor an inline list like 3:17,3:99:0.5")
