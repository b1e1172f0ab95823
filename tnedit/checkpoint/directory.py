"""A checkpoint directory: resolving a source, reading and cross-checking its config, index and headers.

:func:`open_checkpoint` refuses anything tnedit cannot edit safely (a quantized model, a broken index,
an output projection whose shape disagrees with config.json) before a byte of weights is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tnedit.architectures import (
    Architecture,
    ConfigShape,
    UnknownArchitecture,
    architecture_for_config,
    config_value,
    find_layer_prefix,
    out_proj_key,
)
from tnedit.checkpoint.safetensors import (
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    is_int,
    read_header,
    short_repr,
)
from tnedit.checkpoint.targets import (
    Projection,
    ProjectionMap,
    Target,
    dense_projections,
    expert_quantization_error,
    expert_storage_error,
    moe_projections,
)
from tnedit.errors import CheckpointError, TneditError, UnsupportedArchitectureError
from tnedit.experts import ExpertTag
from tnedit.formats.digest import LEGACY_FINGERPRINT_PREFIX, fingerprint
from tnedit.formats.outputs import contained_name
from tnedit.formats.provenance import REVERT_NAME

INDEX_NAME = "model.safetensors.index.json"
# Weights in other formats would ship unedited values beside the edited ones.
FOREIGN_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
SKIP_DIRS = {".git", ".cache", "__pycache__"}
CONTENT_SAMPLE = 4096  # bytes per tensor that the fingerprint reads
QUANT_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx", "SCB", "weight_format", "absmax", "quant_map")


# --- resolving a source -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSource:
    path: Path
    source: str
    revision: str | None
    is_hub: bool


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(source: str) -> bool:
    """``owner/name`` as the Hub spells repo ids (a leading dot is a relative path, never an id)."""
    return bool(_HUB_ID.match(source)) and not source.startswith(".")


def read_config(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    return config


def resolve_source(source: str, revision: str | None = None) -> ResolvedSource:
    """A local directory as is, or a Hub id downloaded with snapshot_download and pinned to its commit."""
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise CheckpointError(f"{source}: not a directory (expected a model directory or a Hub id)")
        return ResolvedSource(local, source, revision, is_hub=False)
    if not is_hub_id(source):
        raise CheckpointError(f"{source}: no such directory (and not a Hub id of the form owner/name)")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id=source, revision=revision))
    except Exception as exc:  # the hub client raises many types; all mean "could not fetch"
        raise CheckpointError(f"{source}: could not download from the Hub ({type(exc).__name__}: {exc})") from None
    commit = path.name if len(path.name) == 40 else revision
    return ResolvedSource(path, source, commit, is_hub=True)


def require_directory(path: Path, error: type[TneditError] = CheckpointError) -> None:
    """Raise ``error`` naming ``path`` unless it is an existing directory."""
    if not path.exists():
        raise error(f"{path}: no such directory")
    if not path.is_dir():
        raise error(f"{path}: not a directory")


# --- the checkpoint ------------------------------------------------------------------------------


@dataclass
class Checkpoint(ConfigShape):
    path: Path
    config: dict[str, Any]
    arch: Architecture
    weight_files: list[str]
    headers: dict[str, SafetensorsHeader]
    tensor_file: dict[str, str]
    index_file: str | None
    layer_prefix: str = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.layer_prefix = find_layer_prefix(self.tensor_file, self.arch)
        except UnknownArchitecture as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    def out_proj_name(self, layer: int) -> str:
        return out_proj_key(self.layer_prefix, layer, self.arch)

    def tensor(self, name: str) -> TensorInfo:
        return self.headers[self.tensor_file[name]].tensors[name]

    @cached_property
    def projections(self) -> ProjectionMap:
        """Every (layer, expert) output projection: its tensor, the shape config.json implies, its neuron axis.

        A dense model has one per layer (expert None). CheckpointError when a mixture-of-experts layer has
        neither expert layout (see :mod:`tnedit.checkpoint.targets`).
        """
        try:
            hidden, space = self.hidden_size, self.neuron_space
        except UnknownArchitecture as exc:
            raise CheckpointError(f"{self.path / 'config.json'}: {exc}") from None
        if self.arch.experts is None:
            return dense_projections(self.layer_prefix, self.arch, space.num_layers, hidden, space.width)
        return moe_projections(self.tensor_file, self.layer_prefix, self.arch, space, hidden, self.path)

    def target(self, layer: int, expert: ExpertTag = None) -> Target:
        """Where the neurons of one (layer, expert) projection are: a tensor and, in a fused one, the expert's rows."""
        return self.projections[(layer, expert)].target(expert)

    def projection_named(self, name: str) -> Projection | None:
        """The :class:`~tnedit.checkpoint.targets.Projection` stored as tensor ``name``, None for any other tensor."""
        return self._projections_by_name.get(name)

    @cached_property
    def _projections_by_name(self) -> dict[str, Projection]:
        return {p.name: p for p in self.projections.values()}

    def _projection_shapes(self) -> list[tuple[int, str, tuple[int, ...]]]:
        if self.arch.experts is not None:
            return self.expert_projection_shapes()
        return [
            (layer, self.arch.out_proj_weight, self.tensor(self.out_proj_name(layer)).shape)
            for layer in range(self.num_layers)
        ]

    def fingerprint(self) -> str:
        """Names, shapes and a content sample of the decoder weights that no edit touches.

        Edits only change output projections (every expert's, for a mixture-of-experts model), so an
        edited checkpoint keeps its source's fingerprint, while another model of the same shapes (a
        fine-tune) gets its own.
        """
        return fingerprint(self.model_type, self._projection_shapes(), self.content_sample_sha256())

    def legacy_fingerprint(self) -> str:
        """The shape-only fingerprint that tnedit 0.1 recorded."""
        return fingerprint(self.model_type, self._projection_shapes())

    def content_sample_sha256(self) -> str:
        """SHA-256 over the first CONTENT_SAMPLE bytes of every decoder tensor but the output projections."""
        out_projs = set(self._projections_by_name)
        prefix = self.layer_prefix + "."
        names = sorted(n for n in self.tensor_file if n.startswith(prefix) and n not in out_projs)
        sha = hashlib.sha256()
        for name in names:
            info = self.tensor(name)
            with open(self.path / self.tensor_file[name], "rb") as fh:
                sample = os.pread(fh.fileno(), min(CONTENT_SAMPLE, info.nbytes), info.begin)
            sha.update(f"{name[len(prefix):]}:{info.dtype}:{list(info.shape)}:{len(sample)}\n".encode())
            sha.update(sample)
        return sha.hexdigest()

    def fingerprint_status(self, recorded: str | None) -> str:
        """How a recorded fingerprint relates to this checkpoint: same, legacy (shape-only match) or different."""
        if recorded is None or recorded == self.fingerprint():
            return "same"
        if recorded.startswith(LEGACY_FINGERPRINT_PREFIX) and recorded == self.legacy_fingerprint():
            return "legacy"
        return "different"

    def side_files(self) -> Iterator[Path]:
        """Every non-weight file, relative to the checkpoint root."""
        weights = set(self.weight_files)
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                rel = (Path(root) / name).relative_to(self.path)
                if str(rel) in weights or name.lower().endswith(FOREIGN_WEIGHT_SUFFIXES):
                    continue
                if name.startswith(".tnedit"):  # local markers and temporaries, not model files
                    continue
                if name.endswith(".bin.index.json"):
                    continue
                yield rel

    def foreign_weight_files(self) -> list[str]:
        return sorted(
            str(p.relative_to(self.path))
            for p in self.path.rglob("*")
            if p.is_file()
            and p.name.lower().endswith(FOREIGN_WEIGHT_SUFFIXES)
            and not any(part in SKIP_DIRS for part in p.relative_to(self.path).parts)
        )


# --- opening and checking ------------------------------------------------------------------------


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and cross-check config, index and shard headers; raise CheckpointError on anything odd."""
    root = Path(path)
    require_directory(root)
    config = read_config(root)
    _quantization_error(root, config)
    try:
        arch = architecture_for_config(config)
    except UnknownArchitecture as exc:
        raise UnsupportedArchitectureError(f"{root / 'config.json'}: {exc}") from None
    files, index_file, weight_map = _weight_files(root)
    headers = {f: read_header(root / f) for f in files}
    tensor_file = {name: f for f, header in headers.items() for name in header.tensors}
    if weight_map is not None:
        _check_index(root, headers, tensor_file, weight_map)
    if arch.experts is not None:
        expert_storage_error(root, {n: headers[f].tensors[n] for n, f in tensor_file.items()})
    quantized = [n for n in tensor_file if n.rsplit(".", 1)[-1] in QUANT_SUFFIXES]
    if quantized:
        raise CheckpointError(
            f"{root}: quantized tensors found (e.g. '{quantized[0]}'); tnedit edits float weights only"
        )
    ckpt = Checkpoint(root, config, arch, files, headers, tensor_file, index_file)
    _check_out_proj(ckpt)
    return ckpt


def _quantization_error(path: Path, config: Mapping[str, Any]) -> None:
    qc = config_value(config, "quantization_config")
    if qc:
        method = qc.get("quant_method", "unknown") if isinstance(qc, Mapping) else "unknown"
        expert_quantization_error(path, config, method)
        raise CheckpointError(
            f"{path}: quantized checkpoint ({method}); tnedit edits float weights only — "
            "use the unquantized model and quantize after editing"
        )


def _read_weight_map(path: Path, index_path: Path) -> dict[str, str]:
    """The index's tensor → shard map; every shard a .safetensors name that stays inside ``path``."""
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{index_path}: not valid JSON (expected an object with a 'weight_map')") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: malformed index (expected a 'weight_map' object)")
    for tensor, shard in weight_map.items():
        where = f"{index_path}: weight_map['{tensor}']"
        contained_name(path, shard, where)  # a crafted "../x" or "/abs" must never become a path
        if not shard.endswith(".safetensors") or Path(shard).name == REVERT_NAME:
            raise CheckpointError(f"{where}: '{shard}' is not a weight shard (expected a .safetensors file name)")
    return weight_map


def _weight_files(path: Path) -> tuple[list[str], str | None, dict[str, str] | None]:
    index_path = path / INDEX_NAME
    if index_path.is_file():
        weight_map = _read_weight_map(path, index_path)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{index_path}: names shard '{missing[0]}', which is missing")
        return files, INDEX_NAME, weight_map
    files = sorted(p.name for p in path.glob("*.safetensors") if p.name != REVERT_NAME)
    if not files:
        _no_safetensors(path)
    if len(files) > 1:
        raise CheckpointError(f"{path}: {len(files)} safetensors files but no {INDEX_NAME}")
    return files, None, None


def _no_safetensors(path: Path) -> None:
    """Why a directory without an index holds no .safetensors weights, with the way out."""
    if list(path.glob("*.gguf")):
        raise CheckpointError(
            f"{path}: only GGUF weights (quantized); load them with transformers "
            "(from_pretrained(dir, gguf_file=...)), then save_pretrained to get safetensors"
        )
    if list(path.glob("*.bin")) or list(path.glob("*.pt")) or list(path.glob("*.pth")):
        raise CheckpointError(
            f"{path}: no .safetensors weights, only PyTorch .bin files; convert them with "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out) (writes safetensors)"
        )
    raise CheckpointError(f"{path}: no .safetensors weight files found")


def _check_index(
    root: Path, headers: Mapping[str, SafetensorsHeader], tensor_file: Mapping[str, str], weight_map: Mapping[str, str]
) -> None:
    """The index and the shards must list the same tensors, each in the shard the index names."""
    for name, f in weight_map.items():
        if name not in headers[f].tensors:
            raise CheckpointError(f"{root / INDEX_NAME}: maps '{name}' to {f}, but that shard has no such tensor")
    extra = sorted(set(tensor_file) - set(weight_map))
    if extra:
        raise CheckpointError(
            f"{root / INDEX_NAME}: shard {tensor_file[extra[0]]} holds '{extra[0]}', which the index does not list"
        )


def _check_out_proj(ckpt: Checkpoint) -> None:
    try:
        hidden, inter, layers = ckpt.hidden_size, ckpt.intermediate_size, ckpt.num_layers
    except UnknownArchitecture as exc:
        raise CheckpointError(f"{ckpt.path / 'config.json'}: {exc}") from None
    for what, value in (("hidden size", hidden), ("intermediate size", inter), ("layer count", layers)):
        if not is_int(value) or value < 1:
            raise CheckpointError(
                f"{ckpt.path / 'config.json'}: the {what} must be a positive integer, got {short_repr(value)}"
            )
    if ckpt.arch.experts is not None:
        _check_expert_projections(ckpt)
        return
    expected = (hidden, inter) if ckpt.arch.layout == "linear" else (inter, hidden)
    for layer in range(layers):
        name = ckpt.out_proj_name(layer)
        if name not in ckpt.tensor_file:
            raise CheckpointError(f"{ckpt.path}: tensor '{name}' is missing (config says {layers} layers)")
        info = ckpt.tensor(name)
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{ckpt.path}: '{name}' has dtype {info.dtype}; quantized weights are not supported")
        if info.shape != expected:
            raise CheckpointError(
                f"{ckpt.path}: '{name}' has shape {list(info.shape)}, expected {list(expected)} from config.json"
            )


def _check_expert_projections(ckpt: Checkpoint) -> None:
    """Every projection a mixture-of-experts config implies, present, float and of the implied shape."""
    seen: set[str] = set()
    for (layer, _), projection in sorted(ckpt.projections.items(), key=lambda kv: kv[0][0]):
        name = projection.name
        if name in seen:
            continue
        seen.add(name)
        if name not in ckpt.tensor_file:
            raise CheckpointError(f"{ckpt.path}: tensor '{name}' is missing (config.json implies it for layer {layer})")
        info = ckpt.tensor(name)
        if info.dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{ckpt.path}: '{name}' has dtype {info.dtype}; quantized weights are not supported")
        if info.shape != projection.shape:
            expected = list(projection.shape)
            raise CheckpointError(
                f"{ckpt.path}: '{name}' has shape {list(info.shape)}, expected {expected} from config.json"
            )
