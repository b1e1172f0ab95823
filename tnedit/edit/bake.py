"""Bake an edit into a new checkpoint directory, streaming one tensor at a time.

Every other file is copied byte for byte; ``tnedit.json`` (the typed :class:`Provenance`), the revert
file with the original slices (its keys: :mod:`tnedit.edit.revert`) and a model card are written beside
the weights, and OUT appears only complete. A mixture-of-experts edit lands where the checkpoint keeps
each expert (:mod:`tnedit.checkpoint.targets`): a per-expert weight's columns, or one expert's rows of a
fused 3-D tensor.
"""

from __future__ import annotations

import datetime
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tnedit.architectures import hidden_size
from tnedit.checkpoint import (
    Checkpoint,
    DigestCache,
    ResolvedSource,
    Target,
    TensorInfo,
    copy_plain,
    copy_with_patches,
    hashing_clock,
    hub_blob_sha256,
    open_checkpoint,
    open_digest_cache,
    resolve_source,
    view_shape,
    write_safetensors,
)
from tnedit.edit.numeric import patch_slices, restore_slices, storage_view
from tnedit.edit.settings import ApplyOptions
from tnedit.edit.spec import EditSpec, LayerEdit, check_fingerprint, check_neuron_range
from tnedit.edit.workers import copy_side_files, file_size, in_parallel, write_new_text
from tnedit.errors import CheckpointError
from tnedit.formats import card
from tnedit.formats.neurons import NeuronSet, method_dict
from tnedit.formats.outputs import atomic_directory, check_output_dir
from tnedit.formats.provenance import (
    CARD_NAME,
    PROVENANCE_NAME,
    REVERT_FORMAT,
    REVERT_NAME,
    SEMANTICS_NOTE,
    EditRecord,
    NeuronSetRecord,
    Provenance,
    SourceRecord,
    WeightRecord,
    read_previous,
)
from tnedit.reporting import Reporter, resolve_reporter
from tnedit.versions import package_versions


@dataclass
class ApplyResult:
    out: Path
    provenance: Provenance
    spec: EditSpec


@dataclass
class _Slices:
    """One projection's neurons in a tensor: all of a 2-D weight, or one expert's slab of rows of a fused one."""

    indices: np.ndarray  # neuron indices: columns (axis 1) or rows past rows[0] (axis 0)
    factors: np.ndarray | None
    restore_from: np.ndarray | None
    rows: tuple[int, int] | None  # the slab's rows of the tensor's 2-D view; None = every row
    where: str
    parts: list[np.ndarray] = field(default_factory=list)


class SlicePatch:
    """Scales (or restores) neuron slices of one tensor, one row block of its 2-D view at a time.

    Linear weights hold neuron i in column i, so every row block carries a piece of every neuron;
    Conv1D weights hold it in row i, so a block carries the neurons whose rows it spans. A fused
    experts tensor carries several experts' slices (:meth:`add`), each limited to its expert's rows
    (:class:`~tnedit.checkpoint.Target`). The original values are collected block by block, in
    index order, for the revert file.
    """

    def __init__(
        self,
        axis: int,
        indices: Sequence[int] | None = None,
        factors: Sequence[float] | None = None,
        original: np.ndarray | None = None,
        where: str = "weights",
        rows: tuple[int, int] | None = None,
    ):
        self.axis = axis
        self.groups: list[_Slices] = []
        if indices is not None:
            self.add(indices, factors, original, where, rows)

    def add(
        self,
        indices: Sequence[int],
        factors: Sequence[float] | None = None,
        original: np.ndarray | None = None,
        where: str = "weights",
        rows: tuple[int, int] | None = None,
    ) -> SlicePatch:
        """One more projection's slices of the same tensor (another expert's rows)."""
        f = None if factors is None else np.asarray(factors, dtype=np.float64)
        self.groups.append(_Slices(np.asarray(indices, dtype=np.int64), f, original, rows, where))
        return self

    def __call__(self, info: TensorInfo, block: memoryview, row0: int, row1: int) -> None:
        weight = storage_view(block, info.dtype, (row1 - row0, view_shape(info.shape)[1]))
        for group in self.groups:
            if self.axis == 1:
                self._columns(group, info, weight, row0, row1)
            else:
                self._rows(group, info, weight, row0, row1)

    def _columns(self, g: _Slices, info: TensorInfo, weight: np.ndarray, row0: int, row1: int) -> None:
        first, end = (row0, row1) if g.rows is None else (max(row0, g.rows[0]), min(row1, g.rows[1]))
        if first >= end:
            return
        sub = weight[first - row0 : end - row0]  # a view: edits reach the block
        if g.restore_from is not None:
            base = 0 if g.rows is None else g.rows[0]
            restore_slices(sub, 1, g.indices, g.restore_from[first - base : end - base])
            return
        where = f"{g.where} '{info.name}'"
        g.parts.append(patch_slices(sub, info.dtype, 1, g.indices, g.factors, where, g.indices))

    def _rows(self, g: _Slices, info: TensorInfo, weight: np.ndarray, row0: int, row1: int) -> None:
        flat = g.indices + (0 if g.rows is None else g.rows[0])
        chosen = (flat >= row0) & (flat < row1)
        if not chosen.any():
            return
        local = flat[chosen] - row0
        if g.restore_from is not None:
            restore_slices(weight, 0, local, g.restore_from[chosen])
            return
        where = f"{g.where} '{info.name}'"
        g.parts.append(patch_slices(weight, info.dtype, 0, local, g.factors[chosen], where, g.indices[chosen]))

    def originals(self) -> list[np.ndarray]:
        """The original slices of each group, in the order they were added."""
        return [np.concatenate(g.parts, axis=0) for g in self.groups]

    def original(self) -> np.ndarray:
        """The original slices of a patch with one group (a whole 2-D weight)."""
        return self.originals()[0]


@dataclass
class _Written:
    """What apply wrote or read on the way to tnedit.json."""

    weights: dict[str, WeightRecord]
    revert_sha256: str
    previous: Any  # the source's own tnedit.json, kept as is
    source_card: str | None


# Per weight file, per tensor: the projections edited in it (several experts of one fused tensor) and where.
ByFile = dict[str, dict[str, list[tuple[LayerEdit, Target]]]]


def _patches_by_file(ckpt: Checkpoint, spec: EditSpec) -> ByFile:
    by_file: ByFile = defaultdict(lambda: defaultdict(list))
    for edit in spec.by_layer():
        target = ckpt.target(edit.layer, edit.expert)
        by_file[ckpt.tensor_file[target.name]][target.name].append((edit, target))
    return by_file


def _where(edit: LayerEdit) -> str:
    return f"layer {edit.layer}" if edit.expert is None else f"layer {edit.layer} expert {edit.expert}"


def _slice_patch(edits: list[tuple[LayerEdit, Target]]) -> SlicePatch:
    patch = SlicePatch(edits[0][1].axis)
    for edit, target in edits:
        patch.add(edit.indices, edit.factors, where=_where(edit), rows=target.rows)
    return patch


def _protected_inputs(inputs: Iterable[str | Path], neuron_source: str | None) -> list[Path]:
    """What ``--overwrite`` must never delete: the given inputs and the neurons file, if it is one."""
    protected = [Path(p) for p in inputs]
    if neuron_source and Path(neuron_source).is_file():
        protected.append(Path(neuron_source))
    return protected


def read_card_text(path: Path) -> str | None:
    """A model card's text, None if there is none; a card that is not UTF-8 is named, not a traceback."""
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file (expected a Markdown model card)") from None


def _open_source(source: str, spec: EditSpec, neuron_set: NeuronSet | None, neuron_source: str | None,
                 options: ApplyOptions, reporter: Reporter) -> tuple[ResolvedSource, Checkpoint]:
    """The source checkpoint, once the edit fits it and OUT may be written."""
    resolved = resolve_source(source, revision=options.revision)
    ckpt = open_checkpoint(resolved.path)
    where = neuron_source or "neurons"
    check_neuron_range(spec, ckpt.neuron_space, where)
    note = check_fingerprint(ckpt, neuron_set, where, options.force)
    if note:
        reporter.warn(note)
    return resolved, ckpt


def apply_to_checkpoint(
    source: str,
    spec: EditSpec,
    out: str | Path,
    *,
    neuron_set: NeuronSet | None = None,
    neuron_source: str | None = None,
    options: ApplyOptions | None = None,
    reporter: Reporter | None = None,
) -> ApplyResult:
    """Write ``out``: ``source`` with the edit baked into its output projections.

    Streams one tensor at a time, copies every other file byte for byte, records provenance, the
    original slices (for :func:`~tnedit.edit.revert.revert_checkpoint`) and a model card; ``out``
    appears only complete. ``out`` may neither overlap the source nor hold ``options.inputs`` or the
    neurons file (``neuron_source``).
    """
    options, reporter, out = options or ApplyOptions(), resolve_reporter(reporter), Path(out)
    resolved, ckpt = _open_source(source, spec, neuron_set, neuron_source, options, reporter)
    check_output_dir(out, resolved.path, options.overwrite, inputs=_protected_inputs(options.inputs, neuron_source))
    source_card = read_card_text(resolved.path / CARD_NAME)
    previous = read_previous(resolved.path)
    foreign = ckpt.foreign_weight_files()
    if foreign:
        reporter.warn(f"not copied (weights in another format would stay unedited): {', '.join(foreign)}")
    by_file = _patches_by_file(ckpt, spec)
    with atomic_directory(out, overwrite=options.overwrite) as tmp:
        copy_side_files(resolved.path, tmp, ckpt)
        cache = open_digest_cache(not options.no_cache, warn=reporter.warn).outside(resolved.path, out)
        weights, originals = _write_weight_files(resolved.path, tmp, ckpt, by_file, options.link, cache, reporter)
        revert_sha256 = _write_revert_file(tmp / REVERT_NAME, ckpt, by_file, originals, source_card)
        written = _Written(weights, revert_sha256, previous, source_card)
        provenance = _provenance(resolved, ckpt, spec, neuron_set, neuron_source, options.command, written)
        # Not write_json: that lists the file as a completed output, and this one is not yet.
        write_new_text(tmp / PROVENANCE_NAME, provenance.to_json())
        write_new_text(tmp / CARD_NAME, card.render_card(provenance, source_card))
    return ApplyResult(out, provenance, spec)


def _write_weight_files(
    src_dir: Path,
    out_dir: Path,
    ckpt: Checkpoint,
    by_file: ByFile,
    link: bool,
    cache: DigestCache,
    reporter: Reporter,
) -> tuple[dict[str, WeightRecord], dict[str, list[np.ndarray]]]:
    """Copy or patch every weight file, several at a time: hashing, not I/O, is what bounds apply.

    Each file records its output's SHA-256 and its source's (``source_sha256``), which revert
    checks its restored bytes against. A source's digest is read from a Hub blob's name or a trusted
    digest-cache entry where there is one (an untouched file is then only cloned or copied, an
    edited one hashes its output alone), else hashed alongside the copy and recorded in the cache.
    Also returns the original slices of every edited tensor (one array per projection), for the revert file.
    """
    cancel = threading.Event()
    originals: dict[str, list[np.ndarray]] = {}

    def one(f: str) -> tuple[str, WeightRecord]:
        src, dst = src_dir / f, out_dir / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        header = ckpt.headers[f]
        known = hub_blob_sha256(src) or cache.lookup(header.identity)
        started, edits = hashing_clock(), by_file.get(f)
        if not edits:
            digest = copy_plain(src, dst, link=link, known_sha256=known, expected=header.identity, cancel=cancel)
            record = WeightRecord(digest, digest, [])
        else:
            patches = {name: _slice_patch(pairs) for name, pairs in edits.items()}
            result = copy_with_patches(src, dst, patches, header, hash_source=known is None, cancel=cancel)
            originals.update({name: patch.originals() for name, patch in patches.items()})
            record = WeightRecord(result.output_sha256, known or result.source_sha256, sorted(edits))
        if known is None:
            cache.record(src, header.identity, str(record.source_sha256), started)
        return f, record

    sizes = {f: file_size(ckpt, f) for f in ckpt.weight_files}
    results = in_parallel(one, sizes, "apply", reporter, cancel)
    return {f: results[f] for f in ckpt.weight_files}, originals


ROWS_TAG = "::rows="  # a revert file's key of one expert's slab: NAME::rows=R0:R1


def revert_key(name: str, rows: tuple[int, int] | None) -> str:
    """``NAME`` for a whole 2-D weight, ``NAME::rows=R0:R1`` for one expert's slab of a fused tensor."""
    return name if rows is None else f"{name}{ROWS_TAG}{rows[0]}:{rows[1]}"


def _write_revert_file(
    path: Path,
    ckpt: Checkpoint,
    by_file: ByFile,
    originals: dict[str, list[np.ndarray]],
    source_card: str | None,
) -> str:
    """The original slices and their indices, and the source card; returns the file's SHA-256.

    Each edited projection gives ``KEY::original`` (its slices, in the tensor's dtype) and ``KEY::indices``
    (I64 neuron indices), ``KEY`` from :func:`revert_key`: a whole 2-D weight (dense models write only
    these, as tnedit always did) or one expert's rows of a fused experts tensor, whose neuron axis is
    the checkpoint's (:class:`~tnedit.checkpoint.Projection`).
    """
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for edits in by_file.values():
        for name, pairs in edits.items():
            for (edit, target), original in zip(pairs, originals[name], strict=True):
                key = revert_key(name, target.rows)
                tensors[f"{key}::original"] = (original, ckpt.tensor(name).dtype)
                tensors[f"{key}::indices"] = (np.asarray(edit.indices, dtype=np.int64), "I64")
    metadata = {
        "format": REVERT_FORMAT,
        "layout": ckpt.arch.layout,
        "source_card": source_card or "",
        "source_had_card": "1" if source_card is not None else "0",
    }
    return write_safetensors(path, tensors, metadata)


def _source_record(resolved: ResolvedSource, ckpt: Checkpoint, source_card: str | None) -> SourceRecord:
    return SourceRecord(
        name_or_path=resolved.source,
        revision=resolved.revision,
        is_hub=resolved.is_hub,
        model_type=ckpt.model_type,
        num_layers=ckpt.num_layers,
        intermediate_size=ckpt.intermediate_size,
        hidden_size=hidden_size(ckpt.config, ckpt.arch),
        fingerprint=ckpt.fingerprint(),
        license=_card_license(source_card),
    )


def _edit_record(spec: EditSpec) -> EditRecord:
    return EditRecord(
        op=spec.op,
        factor=spec.factor,
        n_neurons=len(spec.neurons),
        per_layer={str(k): v for k, v in spec.per_layer_counts().items()},
        neurons=spec.entries(),
        semantics=SEMANTICS_NOTE,
    )


def _provenance(
    resolved: ResolvedSource,
    ckpt: Checkpoint,
    spec: EditSpec,
    neuron_set: NeuronSet | None,
    neuron_source: str | None,
    command: str | None,
    written: _Written,
) -> Provenance:
    """tnedit.json: the source, the neuron set, the edit, the versions and every digest revert checks."""
    neurons = NeuronSetRecord(
        path=neuron_source,
        sha256=neuron_set.sha256() if neuron_set else None,
        method=method_dict(neuron_set.method) if neuron_set and neuron_set.method else None,
        model=asdict(neuron_set.model) if neuron_set and neuron_set.model else None,
    )
    return Provenance(
        source=_source_record(resolved, ckpt, written.source_card),
        neuron_set=neurons,
        edit=_edit_record(spec),
        weights=written.weights,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        command=command,
        versions=package_versions(),
        revert_sha256=written.revert_sha256,
        previous_provenance=written.previous,
    )


def _card_license(source_card: str | None) -> str | None:
    if source_card is None:
        return None
    value = card.read_front_matter(source_card).get("license")
    return str(value) if value is not None else None
