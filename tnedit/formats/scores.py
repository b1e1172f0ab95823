"""The scores file format (``tnedit.scores/1``): every neuron's score of one language, written by identify.

A ``scores-<lang>.safetensors`` holds float32 ``[layers, intermediate]`` tensors ``type1``/``type2`` (and
``eta2`` when measured; ``mean_abs_activation``, every neuron's mean |activation| over all real tokens of
the English sentences, in files written since it was added: optional, older files load without it) and
string metadata: the format, the language, the model block, the candidate
layers of each type, the method block identify would record, and the English/L2 sentence counts.
``tnedit select`` re-ranks it without a forward pass. Torch-free at import: numpy, torch and safetensors
are imported by :meth:`ScoresFile.save` and :meth:`ScoresFile.load` only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tnedit.errors import InputError
from tnedit.formats.neurons import ModelInfo
from tnedit.formats.outputs import atomic_file
from tnedit.versions import __version__

if TYPE_CHECKING:
    import numpy as np

FORMAT = "tnedit.scores/1"
MEAN_ABS = "mean_abs_activation"


@dataclass
class ScoresFile:
    """A ``scores-<lang>.safetensors``: float32 [layers, intermediate] scores per type, plus η²."""

    language: str
    scores: dict[int, np.ndarray]
    eta2: np.ndarray | None
    model: ModelInfo
    candidate_layers: dict[int, list[int]]
    method: dict[str, Any]
    n_en: int
    n_l2: int
    path: Path | None = None
    mean_abs_activation: np.ndarray | None = None  # [layers, intermediate], English, every real token
    # Mixture-of-experts models: per layer, [expert, width] of each block of columns in order (expert an int,
    # "shared", or null for a dense layer); the columns past a layer's blocks are padding. None: a dense model.
    neuron_columns: list[list[list[Any]]] | None = None

    def to_dict(self) -> dict[str, str]:
        """The safetensors metadata (every value a string, as the format requires)."""
        return {
            "format": FORMAT,
            "language": self.language,
            "model": json.dumps(asdict(self.model)),
            "model_name": self.model.name_or_path,
            "candidate_layers": json.dumps({str(t): v for t, v in self.candidate_layers.items()}),
            "method": json.dumps(self.method, ensure_ascii=False),
            "n_en": str(self.n_en),
            "n_l2": str(self.n_l2),
            "tnedit_version": __version__,  # the writer's
        } | ({"neuron_columns": json.dumps(self.neuron_columns)} if self.neuron_columns is not None else {})

    @classmethod
    def from_dict(cls, obj: Mapping[str, str], where: Path, *, arrays: Mapping[str, np.ndarray]) -> ScoresFile:
        """A scores file from its metadata ``obj`` and its float64 ``arrays``; errors name ``where`` and the key."""
        if obj.get("format") != FORMAT:
            raise InputError(f"{where}: metadata key 'format' must be '{FORMAT}', got {obj.get('format')!r}")
        language = obj.get("language", "")
        if not language.strip():
            raise InputError(f"{where}: metadata key 'language' is missing or empty")
        scores, eta2, mean_abs = _arrays(arrays, where)
        num_layers = next(iter(scores.values())).shape[0]
        model = _model(obj, where)
        layers = _candidate_layers(obj, where, num_layers)
        method = _meta_json(obj, "method", where, dict, default={})
        for key in ("data", "extra", "tokenizer"):
            if not isinstance(method.get(key, {}), dict):
                raise InputError(f"{where}: metadata key 'method' has a '{key}' that is not an object")
        n_en, n_l2 = _meta_count(obj, "n_en", where), _meta_count(obj, "n_l2", where)
        columns = _neuron_columns(obj, where, num_layers, next(iter(scores.values())).shape[1])
        return cls(language, scores, eta2, model, layers, method, n_en, n_l2, where, mean_abs, columns)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (a temporary sibling renamed into place), readable like any other file of the user."""
        import numpy as np
        import torch
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f"type{t}": torch.from_numpy(np.asarray(s, dtype=np.float32)) for t, s in self.scores.items()}
        if self.eta2 is not None:
            tensors["eta2"] = torch.from_numpy(np.asarray(self.eta2, dtype=np.float32))
        if self.mean_abs_activation is not None:
            tensors[MEAN_ABS] = torch.from_numpy(np.asarray(self.mean_abs_activation, dtype=np.float32))
        with atomic_file(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=self.to_dict())
            umask = os.umask(0)  # the permissions any other file of the user gets
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ScoresFile:
        """Read a scores file written by identify; errors name the file and the key."""
        import numpy as np
        from safetensors import SafetensorError, safe_open

        where = Path(path)
        if not where.exists():
            raise InputError(f"{where}: scores file not found")
        if not where.is_file():
            raise InputError(f"{where}: not a file (expected a scores-<lang>.safetensors written by tnedit identify)")
        try:
            with safe_open(str(where), framework="pt") as handle:
                meta = handle.metadata() or {}
                arrays = {k: handle.get_tensor(k).float().numpy().astype(np.float64) for k in handle.keys()}
        except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
            raise InputError(f"{where}: not a readable safetensors file ({exc})") from None
        return cls.from_dict(meta, where, arrays=arrays)


# --- reading the metadata -------------------------------------------------------------------------


def _meta_json(meta: Mapping[str, str], key: str, where: Path, kind: type, default: Any = None) -> Any:
    """One JSON-encoded metadata entry of a scores file, of the expected kind; errors name the key."""
    if key not in meta:
        if default is not None:
            return default
        raise InputError(f"{where}: metadata key '{key}' is missing; is this a scores file written by tnedit identify?")
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: metadata key '{key}' is not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise InputError(f"{where}: metadata key '{key}' must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _meta_count(meta: Mapping[str, str], key: str, where: Path) -> int:
    text = meta.get(key, "0")
    if not text.isdigit():
        raise InputError(f"{where}: metadata key '{key}' must be a sentence count, got {text!r}")
    return int(text)


def _model(meta: Mapping[str, str], where: Path) -> ModelInfo:
    raw = _meta_json(meta, "model", where, dict)
    try:
        model = ModelInfo(**raw)
    except TypeError as exc:
        raise InputError(f"{where}: metadata key 'model' does not describe a model ({exc})") from None
    if not isinstance(model.name_or_path, str):
        raise InputError(f"{where}: metadata key 'model' has no 'name_or_path' string")
    return model


def _neuron_columns(meta: Mapping[str, str], where: Path, num_layers: int, width: int) -> list[list[list[Any]]] | None:
    if "neuron_columns" not in meta:
        return None
    raw = _meta_json(meta, "neuron_columns", where, list)

    def block_ok(block: Any) -> bool:
        expert_ok = block[0] is None or block[0] == "shared" or (isinstance(block[0], int) and block[0] >= 0)
        return expert_ok and isinstance(block[1], int) and not isinstance(block[1], bool) and block[1] > 0

    ok = len(raw) == num_layers and all(
        isinstance(layer, list) and all(isinstance(b, list) and len(b) == 2 and block_ok(b) for b in layer)
        and sum(b[1] for b in layer) <= width for layer in raw)
    if not ok:
        raise InputError(f"{where}: metadata key 'neuron_columns' must list, for each of the {num_layers} layers, "
                         f"[expert, width] blocks of at most {width} columns in all")
    return raw


def _candidate_layers(meta: Mapping[str, str], where: Path, num_layers: int) -> dict[int, list[int]]:
    raw = _meta_json(meta, "candidate_layers", where, dict)
    out: dict[int, list[int]] = {}
    for t, layers in raw.items():
        ok = str(t) in ("1", "2") and isinstance(layers, list)
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < num_layers for x in layers)
        if not ok:
            raise InputError(f"{where}: metadata key 'candidate_layers' must map 1 and 2 to lists of layers "
                             f"0..{num_layers - 1}, got {t!r}: {layers!r}")
        out[int(t)] = list(layers)
    return out


def _arrays(arrays: Mapping[str, np.ndarray],
            where: Path) -> tuple[dict[int, np.ndarray], np.ndarray | None, np.ndarray | None]:
    scores = {int(k[4:]): v for k, v in arrays.items() if re.fullmatch(r"type[12]", k)}
    if not scores:
        raise InputError(f"{where}: no 'type1'/'type2' score tensors (found {', '.join(arrays) or 'none'})")
    shapes = {f"type{t}": v.shape for t, v in scores.items()}
    for optional in ("eta2", MEAN_ABS):
        if optional in arrays:
            shapes[optional] = arrays[optional].shape
    for key, shape in shapes.items():
        if len(shape) != 2 or 0 in shape:
            raise InputError(f"{where}: tensor '{key}' has shape {list(shape)}, expected [layers, intermediate]")
    if len(set(shapes.values())) > 1:
        detail = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
        raise InputError(f"{where}: tensors of different shapes ({detail}); expected one [layers, intermediate]")
    return scores, arrays.get("eta2"), arrays.get(MEAN_ABS)
