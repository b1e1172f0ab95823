"""Safetensors files: the header, checked as safetensors itself checks it, and single tensors.

Nothing here loads a whole file: a tensor is read from its byte range, so memory is one tensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tnedit.checkpoint.files import FileIdentity, create_new, file_identity, open_regular, read_exact, writing
from tnedit.errors import CheckpointError

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
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "U8": "u1"}


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


@dataclass
class SafetensorsHeader:
    path: Path
    data_start: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None
    identity: FileIdentity | None = None  # the file as its header was read


def short_repr(value: Any, limit: int = 60) -> str:
    """A repr for messages that a crafted file cannot blow up to megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON ``true`` must not count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path: Path) -> SafetensorsHeader:
    """Parse a safetensors header and check it as safetensors itself does, before any byte is used.

    Every tensor must have a known dtype, a shape of non-negative integers and integer offsets whose
    span is exactly its size; sorted by offset, tensors tile the data buffer from 0 to its end with
    no gap or overlap. So every later read and copy stays inside the file and inside its tensor.
    """
    with open_regular(path, "a safetensors file") as fh:
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
        raise CheckpointError(f"{path}: '__metadata__' must be an object of strings, got {short_repr(metadata)}")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise CheckpointError(f"{path}: '__metadata__' key '{key}' must be a string, got {short_repr(value)}")
    return metadata


def _tensor_entry(path: Path, name: str, entry: Any, data_start: int) -> TensorInfo:
    where = f"{path}: tensor '{name}'"
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where}: header entry must be an object with dtype, shape and data_offsets")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in ELEMENT_SIZE:
        raise CheckpointError(
            f"{where}: unknown dtype {short_repr(dtype)} (expected one of {', '.join(ELEMENT_SIZE)})"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: 'shape' must be a list of non-negative integers, got {short_repr(shape)}")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) and o >= 0 for o in offsets):
        raise CheckpointError(
            f"{where}: 'data_offsets' must be two non-negative integers [begin, end], got {short_repr(offsets)}"
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


def read_tensor(header: SafetensorsHeader, name: str) -> Any:
    """One tensor as a numpy array of its storage type (BF16 as uint16 bits)."""
    import numpy as np

    info = header.tensors.get(name)
    if info is None:
        raise CheckpointError(f"{header.path}: no tensor '{name}'")
    if info.dtype not in NUMPY_DTYPES:
        raise CheckpointError(f"{header.path}: tensor '{name}' has unsupported dtype {info.dtype}")
    data = bytearray(info.nbytes)
    with open_regular(header.path) as fh:
        read_exact(fh.fileno(), memoryview(data), info.begin, header.path)
    return np.frombuffer(data, dtype=NUMPY_DTYPES[info.dtype]).reshape(info.shape)


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
        data = np.ascontiguousarray(array).astype(NUMPY_DTYPES[dtype], copy=False)
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
