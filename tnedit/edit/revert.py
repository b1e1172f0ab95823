"""Revert an edited checkpoint: write the weight files it was made from, byte for byte, and prove it.

Before anything is used, ``tnedit.json`` must record every digest revert checks and the revert file
must have the SHA-256 recorded there. Each weight file is verified while it is copied.
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
)
from tnedit.edit.bake import SlicePatch
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

    Every tensor of the revert file must restore a tensor of the checkpoint, with indices in range
    and originals of that tensor's dtype and shape, and the files it touches must be the ones
    tnedit.json lists as edited.
    """
    revert = read_header(revert_path)
    metadata = revert.metadata or {}
    if metadata.get("format") != REVERT_FORMAT:
        raise CheckpointError(f"{revert_path}: metadata key 'format' must be '{REVERT_FORMAT}'")
    if metadata.get("layout", ckpt.arch.layout) != ckpt.arch.layout:
        raise CheckpointError(
            f"{revert_path}: metadata key 'layout' must be '{ckpt.arch.layout}' for {ckpt.model_type}"
        )
    axis = neuron_axis(ckpt.arch)
    restore: dict[str, dict[str, TensorPatch]] = defaultdict(dict)
    for name in _restored_names(revert, ckpt):
        indices, original = _revert_slices(revert, ckpt, name, axis)
        restore[ckpt.tensor_file[name]][name] = SlicePatch(axis, indices, original=original)
    for f in ckpt.weight_files:
        listed = recorded.edited_tensors.get(f)
        if listed is not None and listed != sorted(restore.get(f, {})):
            raise CheckpointError(
                f"{revert_path}: restores {sorted(restore.get(f, {}))} in {f}, but {PROVENANCE_NAME} key "
                f"'weights['{f}'].edited_tensors' lists {listed}"
            )
    return restore, metadata


def _restored_names(revert: SafetensorsHeader, ckpt: Checkpoint) -> list[str]:
    names = []
    for key in sorted(revert.tensors):
        name, _, part = key.rpartition("::")
        if part not in ("original", "indices") or not name:
            raise CheckpointError(f"{revert.path}: tensor '{key}' is not NAME::original or NAME::indices")
        if name not in ckpt.tensor_file:
            raise CheckpointError(f"{revert.path}: names tensor '{name}', which the checkpoint lacks")
        if part == "original":
            names.append(name)
        elif f"{name}::original" not in revert.tensors:
            raise CheckpointError(f"{revert.path}: has '{key}' but no '{name}::original'")
    return names


def _revert_slices(revert: SafetensorsHeader, ckpt: Checkpoint, name: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices and original slices of one tensor, checked against the tensor they restore."""
    info, where = ckpt.tensor(name), f"{revert.path}: tensor '{name}::indices'"
    index_info = revert.tensors.get(f"{name}::indices")
    if index_info is None or index_info.dtype != "I64" or len(index_info.shape) != 1:
        raise CheckpointError(f"{where} must be a 1-D I64 tensor of neuron indices")
    indices = read_tensor(revert, f"{name}::indices")
    if len(indices) == 0 or np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= info.shape[axis]:
        raise CheckpointError(f"{where} must be increasing neuron indices in 0..{info.shape[axis] - 1}")
    expected = list(info.shape)
    expected[axis] = len(indices)
    original = revert.tensors[f"{name}::original"]
    if original.dtype != info.dtype or list(original.shape) != expected:
        raise CheckpointError(
            f"{revert.path}: tensor '{name}::original' is {original.dtype} {list(original.shape)}, "
            f"expected {info.dtype} {expected} (the tensor it restores)"
        )
    return indices, read_tensor(revert, f"{name}::original")


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
