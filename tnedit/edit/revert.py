"""Revert an edited checkpoint: write the weight files it was made from, byte for byte, and prove it.

Before anything is used, ``tnedit.json`` must record every digest revert checks and the revert file
must have the SHA-256 recorded there. Each weight file is verified while it is copied.

The revert file (``tnedit.revert/1``) holds, per edited projection, ``KEY::original`` (the original
slices, in the tensor's dtype) and ``KEY::indices`` (increasing I64 neuron indices):

* ``KEY = NAME`` for a whole 2-D weight (every dense model's entries, a shared expert's, a dense layer's
  and a per-expert checkpoint's routed experts): the originals are the weight with its neuron axis cut
  to the indices (``[hidden, n]`` for Linear, ``[n, hidden]`` for Conv1D);
* ``KEY = NAME::rows=R0:R1`` for one expert of a fused experts tensor: rows ``R0 … R1−1`` of its 2-D
  view are that expert's slab (``e·H … (e+1)·H−1`` of ``[E·H, I]``, or ``e·I … (e+1)·I−1`` of gpt-oss's
  ``[E·I, H]``), and the originals are the slab's neuron slices (``[H, n]``, or ``[n, H]``). The neuron
  axis comes from the checkpoint (:class:`~tnedit.checkpoint.Projection`), never from the file.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from tnedit.architectures import neuron_axis
from tnedit.checkpoint import (
    Checkpoint,
    DigestCache,
    SafetensorsHeader,
    TensorPatch,
    cached_sha256,
    copy_plain,
    copy_with_patches,
    hashing_clock,
    open_checkpoint,
    open_digest_cache,
    read_header,
    read_tensor,
    require_directory,
    view_shape,
)
from tnedit.edit.bake import ROWS_TAG, SlicePatch
from tnedit.edit.workers import copy_side_files, file_size, in_parallel, write_new_text
from tnedit.errors import CheckpointError
from tnedit.formats.outputs import atomic_directory, check_output_dir
from tnedit.formats.provenance import (
    CARD_NAME,
    PROVENANCE_NAME,
    REVERT_FORMAT,
    REVERT_NAME,
    RecordedDigests,
    read_provenance,
    recorded_digests,
)
from tnedit.reporting import Reporter, resolve_reporter


def _restore_patches(
    revert_path: Path, ckpt: Checkpoint, recorded: RecordedDigests
) -> tuple[dict[str, dict[str, TensorPatch]], dict[str, str]]:
    """Per weight file, the patches that put the original slices back; and the revert file's metadata.

    Every tensor of the revert file must restore a tensor of the checkpoint (one expert's rows of it,
    for a fused experts tensor), with indices in range and originals of that tensor's dtype and of the
    slice's shape, and the files it touches must be the ones tnedit.json lists as edited.
    """
    revert = read_header(revert_path)
    metadata = revert.metadata or {}
    if metadata.get("format") != REVERT_FORMAT:
        raise CheckpointError(f"{revert_path}: metadata key 'format' must be '{REVERT_FORMAT}'")
    if metadata.get("layout", ckpt.arch.layout) != ckpt.arch.layout:
        raise CheckpointError(
            f"{revert_path}: metadata key 'layout' must be '{ckpt.arch.layout}' for {ckpt.model_type}"
        )
    restore: dict[str, dict[str, SlicePatch]] = defaultdict(dict)
    for key in _restored_keys(revert, ckpt):
        name, rows = _split_rows(revert, key)
        axis, region = _region(revert, ckpt, key, name, rows)
        indices, original = _revert_slices(revert, ckpt, key, name, axis, region)
        # Keys of one tensor all have rows (fused) or it has one key: so one axis, and slabs that never overlap.
        restore[ckpt.tensor_file[name]].setdefault(name, SlicePatch(axis)).add(indices, original=original, rows=rows)
    for f in ckpt.weight_files:
        listed = recorded.edited_tensors.get(f)
        if listed is not None and listed != sorted(restore.get(f, {})):
            raise CheckpointError(
                f"{revert_path}: restores {sorted(restore.get(f, {}))} in {f}, but {PROVENANCE_NAME} key "
                f"'weights['{f}'].edited_tensors' lists {listed}"
            )
    return {f: dict(patches) for f, patches in restore.items()}, metadata


def _restored_keys(revert: SafetensorsHeader, ckpt: Checkpoint) -> list[str]:
    """The KEY of every ``KEY::original`` (see tnedit.edit.bake.revert_key), each with its ``KEY::indices``."""
    keys = []
    for entry in sorted(revert.tensors):
        key, _, part = entry.rpartition("::")
        if part not in ("original", "indices") or not key:
            raise CheckpointError(f"{revert.path}: tensor '{entry}' is not NAME::original or NAME::indices")
        name = key.split(ROWS_TAG, 1)[0]
        if name not in ckpt.tensor_file:
            raise CheckpointError(f"{revert.path}: names tensor '{name}', which the checkpoint lacks")
        if part == "original":
            keys.append(key)
        elif f"{key}::original" not in revert.tensors:
            raise CheckpointError(f"{revert.path}: has '{entry}' but no '{key}::original'")
    return keys


def _split_rows(revert: SafetensorsHeader, key: str) -> tuple[str, tuple[int, int] | None]:
    """``NAME`` → (NAME, None); ``NAME::rows=R0:R1`` → (NAME, (R0, R1))."""
    if ROWS_TAG not in key:
        return key, None
    name, _, span = key.partition(ROWS_TAG)
    first, sep, end = span.partition(":")
    if not (sep and first.isdigit() and end.isdigit()):
        raise CheckpointError(f"{revert.path}: tensor '{key}::original' must name its rows as '::rows=R0:R1'")
    return name, (int(first), int(end))


def _region(
    revert: SafetensorsHeader, ckpt: Checkpoint, key: str, name: str, rows: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """The neuron axis and the (rows, columns) of the slice ``key`` restores: a whole 2-D weight, or one
    expert's slab of a fused experts tensor, as apply lays them out."""
    info, projection = ckpt.tensor(name), ckpt.projection_named(name)
    fused = projection is not None and projection.slab is not None
    if rows is None:
        if fused:
            raise CheckpointError(f"{revert.path}: '{key}::original' must name the expert rows of the fused '{name}'")
        if len(info.shape) != 2:
            raise CheckpointError(f"{revert.path}: '{key}::original' restores '{name}', which is not 2-D")
        return neuron_axis(ckpt.arch), (info.shape[0], info.shape[1])
    total, columns = view_shape(info.shape)
    slab = projection.slab if fused else None
    if slab is None or rows[0] % slab or rows[1] != rows[0] + slab or rows[1] > total:
        raise CheckpointError(
            f"{revert.path}: '{key}::original' names rows {rows[0]}:{rows[1]} of '{name}', which are not one "
            "expert's rows of a fused experts tensor"
        )
    return projection.axis, (slab, columns)


def _revert_slices(
    revert: SafetensorsHeader, ckpt: Checkpoint, key: str, name: str, axis: int, region: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The indices and original slices of entry ``key`` (of tensor ``name``), checked against the slice they restore."""
    info, where = ckpt.tensor(name), f"{revert.path}: tensor '{key}::indices'"
    index_info = revert.tensors.get(f"{key}::indices")
    if index_info is None or index_info.dtype != "I64" or len(index_info.shape) != 1:
        raise CheckpointError(f"{where} must be a 1-D I64 tensor of neuron indices")
    indices = read_tensor(revert, f"{key}::indices")
    if len(indices) == 0 or np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= region[axis]:
        raise CheckpointError(f"{where} must be increasing neuron indices in 0..{region[axis] - 1}")
    expected = list(region)
    expected[axis] = len(indices)
    original = revert.tensors[f"{key}::original"]
    if original.dtype != info.dtype or list(original.shape) != expected:
        raise CheckpointError(
            f"{revert.path}: tensor '{key}::original' is {original.dtype} {list(original.shape)}, "
            f"expected {info.dtype} {expected} (the tensor it restores)"
        )
    return indices, read_tensor(revert, f"{key}::original")


def _checked_inputs(
    edited: Path, out: Path, overwrite: bool, cache: DigestCache, reporter: Reporter
) -> tuple[Checkpoint, RecordedDigests]:
    """EDITED opened and its recorded digests, once tnedit.json and the revert file can be trusted."""
    require_directory(edited)
    provenance = read_provenance(edited)
    revert_path = edited / REVERT_NAME
    if not revert_path.is_file():
        raise CheckpointError(f"{edited}: {REVERT_NAME} is missing; cannot restore the original columns")
    ckpt = open_checkpoint(edited)
    recorded = recorded_digests(provenance, ckpt.path, ckpt.weight_files)
    check_output_dir(out, edited, overwrite)
    if recorded.revert_sha256 is None:
        reporter.warn(
            f"{edited / PROVENANCE_NAME}: written by tnedit 0.1 (no 'revert_sha256' or 'source_sha256'): the edited "
            "files are checked, but the restored bytes cannot be verified against the original's"
        )
    elif cached_sha256(revert_path, cache) != recorded.revert_sha256:
        raise CheckpointError(
            f"{revert_path}: SHA-256 differs from key 'revert_sha256' of {PROVENANCE_NAME}; the revert file was "
            "modified or corrupted after apply"
        )
    return ckpt, recorded


def revert_checkpoint(
    edited: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    no_cache: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Write ``out`` with the weight files of the checkpoint ``edited`` was made from, byte for byte.

    Each weight file is verified while it is copied: the edited file against its recorded SHA-256,
    the restored bytes against the source's, and ``out`` appears only if every one matches.
    Provenance of tnedit 0.1 recorded no source digests: its checkpoints are still restored, with a
    warning that the result cannot be verified. The edited files' digests come from the digest cache
    where its entries are trusted, unless ``no_cache``; the restored bytes are always hashed.
    """
    edited, out, reporter = Path(edited), Path(out), resolve_reporter(reporter)
    cache = open_digest_cache(not no_cache, warn=reporter.warn).outside(edited, out)
    ckpt, recorded = _checked_inputs(edited, out, overwrite, cache, reporter)
    restore, metadata = _restore_patches(edited / REVERT_NAME, ckpt, recorded)
    cancel = threading.Event()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        copy_side_files(edited, tmp, ckpt)

        def one(f: str) -> tuple[str, str]:
            return f, _restore_file(ckpt, f, tmp / f, restore.get(f), recorded, cache, cancel)

        in_parallel(one, {f: file_size(ckpt, f) for f in ckpt.weight_files}, "revert", reporter, cancel)
        if metadata.get("source_had_card") == "1":
            write_new_text(tmp / CARD_NAME, metadata.get("source_card", ""))
    return out


def _restore_file(
    ckpt: Checkpoint,
    f: str,
    dst: Path,
    patches: dict[str, TensorPatch] | None,
    recorded: RecordedDigests,
    cache: DigestCache,
    cancel: threading.Event,
) -> str:
    """Write one original weight file; its digests are checked before revert's output can appear.

    The edited file's digest may come from the cache; the restored bytes' is always computed.
    """
    src, header = ckpt.path / f, ckpt.headers[f]
    dst.parent.mkdir(parents=True, exist_ok=True)
    known, started = cache.lookup(header.identity), hashing_clock()
    if patches:
        result = copy_with_patches(src, dst, patches, header, hash_source=known is None, cancel=cancel)
        read, written = known or result.source_sha256, result.output_sha256
    else:
        read = written = copy_plain(src, dst, known_sha256=known, expected=header.identity, cancel=cancel)
    if known is None and read is not None:
        cache.record(src, header.identity, read, started)
    if read != recorded.edited[f]:
        raise CheckpointError(
            f"{src}: SHA-256 differs from {PROVENANCE_NAME} key 'weights['{f}'].sha256'; the edited checkpoint was "
            "modified after apply, so a byte-identical revert is impossible"
        )
    if recorded.source is not None and written != recorded.source[f]:
        raise CheckpointError(
            f"{ckpt.path / REVERT_NAME}: restoring {f} does not give the original bytes (SHA-256 differs from "
            f"{PROVENANCE_NAME} key 'weights['{f}'].source_sha256')"
        )
    return written
