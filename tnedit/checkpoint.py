"""Safetensors checkpoints on disk: resolving, validating, streaming patched copies, atomic output.

Nothing here runs a model or loads a whole checkpoint: tensors are read one at a time from their
byte ranges, so peak memory is about one tensor whatever the model size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import queue
import re
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tnedit.architectures import (
    Architecture,
    ConfigShape,
    UnknownArchitecture,
    architecture_for_config,
    find_layer_prefix,
    out_proj_key,
)
from tnedit.errors import CheckpointError, TneditError, UnsupportedArchitectureError
from tnedit.formats.neurons import LEGACY_FINGERPRINT_PREFIX, fingerprint
from tnedit.formats.outputs import atomic_directory, check_output_dir, contained_name, write_json  # noqa: F401  (re-exported)

INDEX_NAME = "model.safetensors.index.json"
PROVENANCE_NAME = "tnedit.json"
REVERT_NAME = "tnedit_revert.safetensors"
CARD_NAME = "README.md"
# Weights in other formats would ship unedited values beside the edited ones.
FOREIGN_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")
SKIP_DIRS = {".git", ".cache", "__pycache__"}
CHUNK = 4 * 1024 * 1024  # bytes per patched row block
HASH_BUFFER = 1024 * 1024  # bytes per read of a file being hashed: large enough for full speed, small in RSS
CONTENT_SAMPLE = 4096  # bytes per tensor that the fingerprint reads
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
ELEMENT_SIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E8M0": 1,
    "C64": 8,
}
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


# --- safetensors headers ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


# What identifies one version of a file: a change of any field means it was replaced or rewritten.
FileIdentity = tuple[int, int, int, int, int]


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class SafetensorsHeader:
    path: Path
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None
    identity: FileIdentity | None = None  # the file as its header was read


MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def _short(value: Any, limit: int = 60) -> str:
    """A repr for messages that a crafted file cannot blow up to megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _open_regular(path: Path, kind: str = "a regular file") -> Any:
    """Open a file for reading, with one clear error for a missing file, a dangling link or a directory."""
    try:  # O_NONBLOCK: opening a FIFO planted among the model files must not wait for a writer
        fh = open(path, "rb", buffering=0, opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    except FileNotFoundError:
        what = "is a dangling symlink" if path.is_symlink() else "is missing"
        raise CheckpointError(f"{path}: {what}; expected {kind}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory; expected {kind}") from None
    if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        fh.close()
        raise CheckpointError(f"{path}: not a regular file; expected {kind}")
    return fh


def read_header(path: Path) -> SafetensorsHeader:
    """Parse a safetensors header and check it as safetensors itself does, before any byte is used.

    Every tensor must have a known dtype, a shape of non-negative integers and integer offsets whose
    span is exactly its size; sorted by offset, tensors tile the data buffer from 0 to its end with
    no gap or overlap. So every later read and copy stays inside the file and inside its tensor.
    """
    with _open_regular(path, "a safetensors file") as fh:
        st = os.fstat(fh.fileno())
        raw_len = fh.read(8)
        if len(raw_len) != 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file ({st.st_size} bytes)")
        (n,) = struct.unpack("<Q", raw_len)
        if n > st.st_size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: corrupt safetensors header length {n} (the file has {st.st_size} bytes; at most "
                f"{MAX_HEADER_BYTES} allowed)"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object, got a JSON {type(header).__name__}")
    data_start = 8 + n
    metadata = _header_metadata(path, header.pop("__metadata__", None))
    tensors = {name: _tensor_entry(path, name, entry, data_start) for name, entry in header.items()}
    _check_tiling(path, tensors, data_start, st.st_size - data_start)
    return SafetensorsHeader(path, data_start, tensors, metadata, file_identity(st))


def _header_metadata(path: Path, metadata: Any) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: '__metadata__' must be an object of strings, got {_short(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(f"{path}: '__metadata__' key '{key}' must be a string, got {_short(value)}")
    return metadata


def _tensor_entry(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry must be an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in ELEMENT_SIZE:
        raise CheckpointError(f"{where}: unknown dtype {_short(dtype)} (expected one of {', '.join(ELEMENT_SIZE)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: 'shape' must be a list of non-negative integers, got {_short(shape)}")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
        raise CheckpointError(
            f"{where}: 'data_offsets' must be two non-negative integers [begin, end], got {_short(offsets)}"
        )
    begin, end = offsets
    if end < begin:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] run backwards (expected begin <= end)")
    expected = math.prod(shape) * ELEMENT_SIZE[dtype]
    if end - begin != expected:
        raise CheckpointError(
            f"{where}: data_offsets span {end - begin} bytes, but {dtype} of shape {shape} takes {expected}"
        )
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def _check_tiling(path: Path, tensors: Mapping[str, TensorInfo], data_start: int, data_len: int) -> None:
    """Sorted by offset, the tensors must cover the data buffer exactly: from 0, contiguous, to its end."""
    pos, last = 0, None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        begin = info.begin - data_start
        if begin != pos:
            how = "overlaps the tensor before it" if begin < pos else f"leaves a gap of {begin - pos} bytes"
            raise CheckpointError(
                f"{path}: tensor '{info.name}' starts at data offset {begin}, expected {pos} "
                f"(tensors must be contiguous; this one {how})"
            )
        pos, last = info.end - data_start, info.name
    if pos > data_len:
        raise CheckpointError(
            f"{path}: tensor '{last}' ends at data offset {pos}, but the file holds {data_len} bytes of data "
            "(truncated?)"
        )
    if pos < data_len:
        after = f"after tensor '{last}'" if last else "but it lists no tensor"
        raise CheckpointError(
            f"{path}: {data_len - pos} bytes of data {after}; expected the tensors to end at the end of the file"
        )


_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def read_tensor(header: SafetensorsHeader, name: str) -> Any:
    """One tensor as a numpy array of its storage type (BF16 as uint16 bits)."""
    import numpy as np

    info = header.tensors.get(name)
    if info is None:
        raise CheckpointError(f"{header.path}: no tensor '{name}'")
    if info.dtype not in _NUMPY_DTYPES:
        raise CheckpointError(f"{header.path}: tensor '{name}' has unsupported dtype {info.dtype}")
    data = bytearray(info.nbytes)
    with _open_regular(header.path) as fh:
        _read_exact(fh.fileno(), memoryview(data), info.begin, header.path)
    return np.frombuffer(data, dtype=_NUMPY_DTYPES[info.dtype]).reshape(info.shape)


def write_safetensors(path: Path, tensors: Mapping[str, tuple[Any, str]], metadata: Mapping[str, str]) -> str:
    """A deterministic safetensors file: sorted keys, so equal inputs give equal bytes. Returns its SHA-256.

    ``tensors`` maps names to (numpy array in storage type, safetensors dtype label).
    """
    import numpy as np

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        array, dtype = tensors[name]
        data = np.ascontiguousarray(array).astype(_NUMPY_DTYPES[dtype], copy=False)
        header[name] = {"dtype": dtype, "shape": list(data.shape), "data_offsets": [offset, offset + data.nbytes]}
        arrays.append(data)
        offset += data.nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    blob += b" " * (-len(blob) % 8)
    sha = hashlib.sha256()
    with writing(path), create_new(path) as fh:
        for part in (struct.pack("<Q", len(blob)), blob, *(data.tobytes() for data in arrays)):
            sha.update(part)
            fh.write(part)
    return sha.hexdigest()


# --- checkpoints ---------------------------------------------------------------------------------


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

    def _projection_shapes(self) -> list[tuple[int, str, tuple[int, ...]]]:
        return [
            (layer, self.arch.out_proj_weight, self.tensor(self.out_proj_name(layer)).shape)
            for layer in range(self.num_layers)
        ]

    def fingerprint(self) -> str:
        """Names, shapes and a content sample of the decoder weights that no edit touches.

        Edits only change output projections, so an edited checkpoint keeps its source's
        fingerprint, while another model of the same shapes (a fine-tune) gets its own.
        """
        return fingerprint(self.model_type, self._projection_shapes(), self.content_sample_sha256())

    def legacy_fingerprint(self) -> str:
        """The shape-only fingerprint that tnedit 0.1 recorded."""
        return fingerprint(self.model_type, self._projection_shapes())

    def content_sample_sha256(self) -> str:
        """SHA-256 over the first CONTENT_SAMPLE bytes of every decoder tensor but the output projections."""
        out_projs = {self.out_proj_name(layer) for layer in range(self.num_layers)}
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


def _quantization_error(path: Path, config: Mapping[str, Any]) -> None:
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    if qc:
        method = qc.get("quant_method", "unknown") if isinstance(qc, Mapping) else "unknown"
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
    if len(files) > 1:
        raise CheckpointError(f"{path}: {len(files)} safetensors files but no {INDEX_NAME}")
    return files, None, None


def require_directory(path: Path, error: type[TneditError] = CheckpointError) -> None:
    """Raise ``error`` naming ``path`` unless it is an existing directory."""
    if not path.exists():
        raise error(f"{path}: no such directory")
    if not path.is_dir():
        raise error(f"{path}: not a directory")


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
    tensor_file: dict[str, str] = {}
    for f, header in headers.items():
        for name in header.tensors:
            tensor_file[name] = f
    if weight_map is not None:
        for name, f in weight_map.items():
            if name not in headers[f].tensors:
                raise CheckpointError(f"{root / INDEX_NAME}: maps '{name}' to {f}, but that shard has no such tensor")
        extra = sorted(set(tensor_file) - set(weight_map))
        if extra:
            raise CheckpointError(
                f"{root / INDEX_NAME}: shard {tensor_file[extra[0]]} holds '{extra[0]}', which the index does not list"
            )
    quantized = [n for n in tensor_file if n.rsplit(".", 1)[-1] in QUANT_SUFFIXES]
    if quantized:
        raise CheckpointError(
            f"{root}: quantized tensors found (e.g. '{quantized[0]}'); tnedit edits float weights only"
        )
    ckpt = Checkpoint(root, config, arch, files, headers, tensor_file, index_file)
    _check_out_proj(ckpt)
    return ckpt


def _check_out_proj(ckpt: Checkpoint) -> None:
    try:
        hidden, inter, layers = ckpt.hidden_size, ckpt.intermediate_size, ckpt.num_layers
    except UnknownArchitecture as exc:
        raise CheckpointError(f"{ckpt.path / 'config.json'}: {exc}") from None
    for what, value in (("hidden size", hidden), ("intermediate size", inter), ("layer count", layers)):
        if not _is_int(value) or value < 1:
            raise CheckpointError(
                f"{ckpt.path / 'config.json'}: the {what} must be a positive integer, got {_short(value)}"
            )
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


# --- hashing and streaming copies ---------------------------------------------------------------


class _Cancelled(CheckpointError):
    """Raised in a worker once the command is abandoned; the main thread reports its own cause instead."""

    def __init__(self) -> None:
        super().__init__("cancelled")


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise _Cancelled


def _changed(path: Path | str) -> CheckpointError:
    return CheckpointError(f"{path}: changed while tnedit was reading it (truncated, rewritten or replaced)")


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, len(view), offset)
    view[: len(data)] = data
    return len(data)


def _read_exact(fd: int, view: memoryview, offset: int, path: Path | str) -> None:
    """Fill ``view`` from ``offset``. Sources are read, never mapped: a file truncated under us is a
    short read and a clear error here, where a mapping would kill the process with SIGBUS."""
    got = 0
    while got < len(view):
        n = _pread_into(fd, view[got:], offset + got)
        if n == 0:
            raise _changed(path)
        got += n


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


@contextmanager
def open_source(path: Path, expected: FileIdentity | None = None) -> Iterator[Any]:
    """Open a file to read whole; on leaving, fail if it changed meanwhile (or since ``expected`` was taken).

    The identity (device, inode, size, mtime, ctime) is compared on the open descriptor and on the
    path, so an in-place rewrite, a truncation and a rename over the path are all caught.
    """
    fh = _open_regular(path)
    try:
        before = file_identity(os.fstat(fh.fileno()))
        if expected is not None and before != expected:
            raise CheckpointError(f"{path}: changed since its header was read (rewritten or replaced)")
        yield fh
        if file_identity(os.fstat(fh.fileno())) != before or file_identity(os.stat(path)) != before:
            raise _changed(path)
    finally:
        fh.close()


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_new(path: Path) -> Any:
    """Open a new file for writing. Never an existing file, never through a symlink planted where it goes."""
    return os.fdopen(os.open(path, _CREATE_FLAGS, 0o666), "wb")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Name ``path`` in an OSError that names no file (a full disk fails in write, not in open)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


class _StreamHasher:
    """SHA-256 of a file being written (and optionally of its source), computed on a worker thread.

    The writer describes the output as segments: byte ranges shared with the source file (hashed by
    reading the source, already in the page cache, into one reusable buffer) and in-memory buffers
    (patched tensors). A bounded queue keeps at most two buffers alive, so memory stays about one
    block. Source and output agree up to the first patched block, so that prefix is hashed once and
    the digest state is then forked.
    """

    def __init__(self, src: Path, fd: int, hash_source: bool, cancel: threading.Event | None = None):
        self._src, self._fd = src, fd
        self._out = hashlib.sha256()
        self._in: Any = None  # forked from _out at the first patched block
        self._hash_source = hash_source
        self._cancel = cancel
        self._abort = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"sha256 {src.name}")
        self._thread.start()

    def source_range(self, begin: int, end: int) -> None:
        self._put(("range", begin, end))

    def buffers(self, original: bytes | bytearray | None, patched: bytes | bytearray | memoryview) -> None:
        """Hash in-memory bytes; returns once they are hashed, so the caller's next block may reuse memory."""
        self._put(("buffers", original, patched))
        self._queue.join()

    def _put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def _stopping(self) -> bool:
        return self._abort.is_set() or (self._cancel is not None and self._cancel.is_set())

    def _run(self) -> None:
        try:
            buffer = memoryview(bytearray(HASH_BUFFER))
            while (item := self._queue.get()) is not None:
                try:
                    if self._stopping():
                        raise _Cancelled
                    if item[0] == "range":
                        self._hash_range(buffer, item[1], item[2])
                    else:
                        self._hash_buffers(item[1], item[2])
                finally:
                    self._queue.task_done()
        except BaseException as exc:  # reported to the writer on its next call
            self._error = exc
            while self._queue.get() is not None:
                self._queue.task_done()

    def _hash_range(self, buffer: memoryview, begin: int, end: int) -> None:
        for start in range(begin, end, len(buffer)):
            if self._stopping():
                raise _Cancelled
            chunk = buffer[: min(len(buffer), end - start)]
            _read_exact(self._fd, chunk, start, self._src)
            self._out.update(chunk)
            if self._in is not None:
                self._in.update(chunk)

    def _hash_buffers(self, original: bytes | bytearray | None, patched: bytes | bytearray | memoryview) -> None:
        if self._hash_source and self._in is None:
            self._in = self._out.copy()
        if self._in is not None:
            self._in.update(original)
        self._out.update(patched)

    def finish(self) -> tuple[str | None, str]:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        out = self._out.hexdigest()
        if not self._hash_source:
            return None, out
        return (self._in.hexdigest() if self._in is not None else out), out

    def abort(self) -> None:
        """Stop hashing at the next chunk and wait for the thread; its error, if any, is dropped."""
        self._abort.set()
        self._queue.put(None)
        self._thread.join()


COPY_STEP = 64 * 1024 * 1024  # bytes per copy_file_range call: the cancel flag is checked between them
# copy_file_range refuses some pairs of files (other filesystems, old kernels): copy through user space.
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _copy_range(fi: Any, fo: Any, begin: int, end: int, cancel: threading.Event | None = None) -> None:
    """Copy [begin, end) to the same offsets in the kernel (copy_file_range), else through user space."""
    src, dst = fi.fileno(), fo.fileno()
    while begin < end:
        _check_cancel(cancel)
        step = min(COPY_STEP, end - begin)
        try:
            n = os.copy_file_range(src, dst, step, begin, begin)
        except (AttributeError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in _NO_KERNEL_COPY:
                raise
            data = os.pread(src, min(CHUNK, step), begin)
            _write_all(dst, memoryview(data), begin)
            n = len(data)
        if n <= 0:
            raise _changed(fi.name)
        begin += n


def sha256_file(path: Path, progress: Callable[[int], Any] | None = None) -> str:
    """SHA-256 read through one reusable buffer (no mapping: a file truncated meanwhile is an error, not SIGBUS)."""
    sha = hashlib.sha256()
    buffer = memoryview(bytearray(HASH_BUFFER))
    with open_source(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        for start in range(0, size, len(buffer)):
            chunk = buffer[: min(len(buffer), size - start)]
            _read_exact(fh.fileno(), chunk, start, path)
            sha.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return sha.hexdigest()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sha256_files(paths: Sequence[Path], progress: Callable[[int], Any] | None = None) -> list[str]:
    """SHA-256 of several files, as many at a time as there are cores: one file's digest is sequential."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(len(paths), available_cores()))) as pool:
        return list(pool.map(lambda path: sha256_file(path, progress), paths))


# Patches a block of whole rows [row0, row1) of a 2-D tensor in place.
TensorPatch = Callable[[TensorInfo, memoryview, int, int], None]


@dataclass(frozen=True)
class CopyResult:
    source_sha256: str | None
    output_sha256: str


def copy_with_patches(
    src: Path,
    dst: Path,
    patches: Mapping[str, TensorPatch],
    header: SafetensorsHeader,
    hash_source: bool = False,
    cancel: threading.Event | None = None,
) -> CopyResult:
    """Copy ``src`` to the new file ``dst`` byte for byte, replacing the bytes of the patched tensors.

    The header, tensor order, dtypes and ``__metadata__`` are the source's own bytes: untouched
    ranges are copied by the kernel. Patched tensors stream through one block-sized buffer, so peak
    memory is about CHUNK whatever the tensor size; SHA-256 is computed alongside on a worker thread.
    The source must be the file ``header`` was read from, unchanged until the copy ends; setting
    ``cancel`` stops the copy at the next block.
    """
    targets = sorted((header.tensors[name] for name in patches), key=lambda t: t.begin)
    scratch = bytearray(max((_rows_per_block(t)[1] for t in targets), default=0))
    with writing(dst), open_source(src, header.identity) as fi, create_new(dst) as fo:
        size = os.fstat(fi.fileno()).st_size
        hasher = _StreamHasher(src, fi.fileno(), hash_source, cancel)
        try:
            pos = 0
            for info in targets:
                hasher.source_range(pos, info.begin)
                _copy_range(fi, fo, pos, info.begin, cancel)
                _patch_tensor(fi, fo, info, patches[info.name], scratch, hasher, hash_source, cancel)
                pos = info.end
            hasher.source_range(pos, size)
            _copy_range(fi, fo, pos, size, cancel)
            digests = hasher.finish()
        except BaseException:
            hasher.abort()
            raise
    return CopyResult(*digests)


def _rows_per_block(info: TensorInfo) -> tuple[int, int]:
    """Rows per block and the block's bytes: about CHUNK, never less than one row."""
    if len(info.shape) != 2:
        raise CheckpointError(f"tensor '{info.name}' has shape {list(info.shape)}; only 2-D tensors can be patched")
    row_bytes = info.nbytes // max(info.shape[0], 1)
    rows = max(1, CHUNK // max(row_bytes, 1))
    return rows, rows * row_bytes


def _patch_tensor(
    fi: Any,
    fo: Any,
    info: TensorInfo,
    patch: TensorPatch,
    scratch: bytearray,
    hasher: _StreamHasher,
    hash_source: bool,
    cancel: threading.Event | None = None,
) -> None:
    """Stream one tensor through ``patch`` in row blocks, so memory is one block, not one tensor."""
    rows, _ = _rows_per_block(info)
    row_bytes = info.nbytes // max(info.shape[0], 1)
    for row0 in range(0, info.shape[0], rows):
        _check_cancel(cancel)
        row1 = min(row0 + rows, info.shape[0])
        offset, length = info.begin + row0 * row_bytes, (row1 - row0) * row_bytes
        block = memoryview(scratch)[:length]
        _read_exact(fi.fileno(), block, offset, fi.name)
        original = bytes(block) if hash_source else None
        patch(info, block, row0, row1)
        hasher.buffers(original, block)
        _write_all(fo.fileno(), block, offset)


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(value: Any) -> bool:
    """A SHA-256 hex digest as tnedit records them: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256_HEX.match(value) is not None


def hub_blob_sha256(path: Path) -> str | None:
    """The SHA-256 the Hub serves a cached file under, read from its blob's name; None if unknown.

    snapshot_download stores each LFS file once as ``blobs/<sha256>`` and links it from
    ``snapshots/<commit>/``, so for an untouched weight file the digest is known without reading it.
    """
    if not path.is_symlink():
        return None
    target = path.resolve()
    return target.name if target.parent.name == "blobs" and _SHA256_HEX.match(target.name) else None


def copy_plain(
    src: Path,
    dst: Path,
    link: bool = False,
    known_sha256: str | None = None,
    expected: FileIdentity | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Copy (or hardlink) an untouched file to the new file ``dst`` and return its SHA-256.

    The digest is hashed while the kernel copies, unless the caller already knows it (a Hub blob),
    in which case the file is only copied: hashing, not copying, is what costs time. A source that
    is a symlink is read through; ``dst`` is always a file of its own (or, with ``link``, a hardlink).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src.resolve(), dst)  # link(2) would hardlink a Hub snapshot's symlink itself
            return known_sha256 or sha256_file(src)
        except OSError:
            pass
    if known_sha256 is None:
        header = SafetensorsHeader(src, 0, {}, None, expected)
        return copy_with_patches(src, dst, {}, header, cancel=cancel).output_sha256
    with writing(dst), open_source(src, expected) as fi, create_new(dst) as fo:
        _copy_range(fi, fo, 0, os.fstat(fi.fileno()).st_size, cancel)
    return known_sha256
