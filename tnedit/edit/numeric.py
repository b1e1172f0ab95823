"""The numeric core shared by the file and in-memory edits: scale neuron slices of a storage array, or restore them.

Zero is written as exact +0.0; scaling is computed in fp32 (fp64 for F64) and rounded once to the stored
dtype, bf16 by round-to-nearest-even. A factor that would turn a finite weight into inf or NaN is refused
before anything is written. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tnedit.errors import InputError, NonFiniteEditError

_NUMPY_STORAGE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}

_LARGEST = {
    "F64": float(np.finfo(np.float64).max),
    "F32": float(np.finfo(np.float32).max),
    "F16": float(np.finfo(np.float16).max),
    "BF16": 3.3895313892515355e38,
}


def _to_float(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float64 if dtype == "F64" else np.float32)


def _from_float(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
        rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)  # round to nearest even
        return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)
    return values.astype(_NUMPY_STORAGE[dtype])


def patch_slices(
    weight: np.ndarray,
    dtype: str,
    axis: int,
    indices: Sequence[int],
    factors: Sequence[float],
    where: str = "weights",
    neuron_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """Multiply the neuron slices of ``weight`` (storage array, edited in place) by ``factors``.

    Returns the original slices, stacked along ``axis``, for the revert file. Raises
    NonFiniteEditError, before writing anything, if a finite weight would become inf or NaN;
    ``where`` and ``neuron_ids`` (the neurons' indices, when ``indices`` are block-local) name it.
    """
    idx = np.asarray(indices, dtype=np.int64)
    original = np.take(weight, idx, axis=axis)
    f = np.asarray(factors, dtype=np.float64 if dtype == "F64" else np.float32)
    shape = (1, -1) if axis == 1 else (-1, 1)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below, not as a warning
        scaled = _from_float(_to_float(original, dtype) * f.reshape(shape), dtype)
    zero = (f == 0).reshape(shape)
    scaled = np.where(zero, np.zeros((), dtype=scaled.dtype), scaled)  # exact +0.0, never -0.0
    _refuse_new_non_finite(original, scaled, dtype, axis, indices if neuron_ids is None else neuron_ids, factors, where)
    if axis == 1:
        weight[:, idx] = scaled
    else:
        weight[idx, :] = scaled
    return original


def _refuse_new_non_finite(
    original: np.ndarray,
    scaled: np.ndarray,
    dtype: str,
    axis: int,
    indices: Sequence[int],
    factors: Sequence[float],
    where: str,
) -> None:
    """Weights that were inf or NaN may stay so; a finite weight that the factor overflows may not."""
    with np.errstate(over="ignore", invalid="ignore"):
        created = np.isfinite(_to_float(original, dtype)) & ~np.isfinite(_to_float(scaled, dtype))
    if not created.any():
        return
    column = int(np.argwhere(created)[0][axis])
    largest = _LARGEST[dtype]
    raise NonFiniteEditError(
        f"{where}: scaling neuron {indices[column]} by {factors[column]:g} overflows {dtype} "
        f"({int(created.sum())} value(s) would become inf or NaN; |weight| must stay below {largest:.4g}); "
        "use a smaller factor"
    )


def restore_slices(weight: np.ndarray, axis: int, indices: Sequence[int], original: np.ndarray) -> None:
    idx = np.asarray(indices, dtype=np.int64)
    if axis == 1:
        weight[:, idx] = original
    else:
        weight[idx, :] = original


def storage_view(buffer: bytearray | memoryview, dtype: str, shape: Sequence[int]) -> np.ndarray:
    if dtype not in _NUMPY_STORAGE:
        raise InputError(f"cannot edit a tensor of dtype {dtype}; expected one of {sorted(_NUMPY_STORAGE)}")
    return np.frombuffer(buffer, dtype=_NUMPY_STORAGE[dtype]).reshape(tuple(shape))
