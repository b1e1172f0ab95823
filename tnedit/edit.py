"""Edit specs and their three realisations: baked into files (streaming), in memory, and as hooks.

An edit ``a_i ← α·a_i`` of neuron i is baked by multiplying the output projection's column i
(row i for GPT-2's Conv1D) by α. Zero is written as exact +0.0; scaling is computed in fp32 and
rounded once to the stored dtype. The baked form acts at every position; :class:`RuntimeEdit`
can restrict the same edit to chosen positions, which is what the paper's analyses do.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tnedit import package_versions
from tnedit.architectures import Architecture, get_architecture, neuron_axis, resolve_module
from tnedit.checkpoint import (
    CARD_NAME,
    PROVENANCE_NAME,
    REVERT_NAME,
    Checkpoint,
    ResolvedSource,
    SafetensorsHeader,
    TensorInfo,
    TensorPatch,
    atomic_directory,
    available_cores,
    check_output_dir,
    contained_name,
    copy_plain,
    copy_with_patches,
    create_new,
    hub_blob_sha256,
    is_sha256,
    open_checkpoint,
    read_header,
    read_tensor,
    require_directory,
    resolve_source,
    sha256_file,
    write_safetensors,
    writing,
)
from tnedit.errors import CheckpointError, InputError, NonFiniteEditError, TneditWarning
from tnedit.formats.neurons import Neuron, NeuronFormatError, NeuronSet, merge_duplicates, parse_factor
from tnedit.reporting import NullReporter, TqdmReporter

Op = Literal["zero", "scale"]
Positions = Literal["all", "last", "prompt"]


@dataclass(frozen=True)
class LayerEdit:
    layer: int
    indices: tuple[int, ...]
    factors: tuple[float, ...]


@dataclass(frozen=True)
class EditSpec:
    """Which neurons to change and by what factor. Built by :func:`make_edit_spec`."""

    op: Op
    factor: float
    neurons: tuple[Neuron, ...]
    duplicates: tuple[tuple[int, int], ...] = field(default=(), compare=False)

    def factor_of(self, neuron: Neuron) -> float:
        return self.factor if neuron.factor is None else neuron.factor

    def by_layer(self) -> list[LayerEdit]:
        grouped: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for n in self.neurons:
            grouped[n.layer].append((n.index, self.factor_of(n)))
        out = []
        for layer in sorted(grouped):
            pairs = sorted(grouped[layer])
            out.append(LayerEdit(layer, tuple(i for i, _ in pairs), tuple(f for _, f in pairs)))
        return out

    def per_layer_counts(self) -> dict[int, int]:
        return {e.layer: len(e.indices) for e in self.by_layer()}

    def describe(self) -> str:
        if self.op == "zero":
            return f"zero {len(self.neurons)} neurons"
        return f"scale {len(self.neurons)} neurons by {self.factor:g}"


def make_edit_spec(
    neurons: NeuronSet | Sequence[Neuron],
    op: str = "zero",
    factor: Any = None,
    top_k: int | None = None,
    layers: Iterable[int] | None = None,
) -> EditSpec:
    """Validate the operation and factor, keep the first ``top_k`` neurons within ``layers``, merge duplicates."""
    if op not in ("zero", "scale"):
        raise InputError(f"--op must be 'zero' or 'scale', got {op!r}")
    if op == "zero":
        if factor is not None and parse_factor(factor, "--factor") != 0.0:
            raise InputError("--op zero takes no --factor (use --op scale --factor F)")
        value = 0.0
    else:
        if factor is None:
            raise InputError("--op scale needs --factor F (a finite number)")
        value = parse_factor(factor, "--factor")
    ns = neurons if isinstance(neurons, NeuronSet) else NeuronSet(list(neurons))
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {top_k}")
    # --layers first: "--top-k 200 --layers 1-10" means the best 200 within layers 1-10.
    ns = ns.in_layers(layers).top(top_k)
    if not ns.neurons:
        raise InputError("no neurons left to edit (check --layers / --top-k)")
    for n in ns.neurons:  # library callers build Neuron objects without parse_factor
        if n.factor is not None:
            parse_factor(n.factor, f"neuron {n.layer}:{n.index}")
    kept, dups = merge_duplicates(ns.neurons)
    if op == "zero":
        kept = [Neuron(n.layer, n.index, n.score, None) if n.factor == 0.0 else n for n in kept]
    return EditSpec(op, value, tuple(kept), tuple(dups))  # type: ignore[arg-type]


# --- numeric core shared by the file and in-memory paths ----------------------------------------

_NUMPY_STORAGE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16}


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


_LARGEST = {
    "F64": float(np.finfo(np.float64).max),
    "F32": float(np.finfo(np.float32).max),
    "F16": float(np.finfo(np.float16).max),
    "BF16": 3.3895313892515355e38,
}


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


# --- in memory ----------------------------------------------------------------------------------

_TORCH_TO_SAFETENSORS = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
}


def _arch_of(model: Any, arch: Architecture | None) -> Architecture:
    return arch if arch is not None else get_architecture(model.config.model_type)


def check_neuron_range(spec: EditSpec, num_layers: int, width: int, where: str) -> None:
    NeuronSet(list(spec.neurons)).validate_shape(num_layers, width, where)


@dataclass
class EditHandle:
    """Restores the original weights of an in-memory edit."""

    _saved: list[tuple[Any, int, tuple[int, ...], np.ndarray]]
    spec: EditSpec

    def restore(self) -> None:
        import torch

        for weight, axis, indices, original in reversed(self._saved):
            dtype = _TORCH_TO_SAFETENSORS[str(weight.dtype)]
            host = _host_storage(weight, dtype)
            restore_slices(host, axis, indices, original)
            with torch.no_grad():
                weight.copy_(_from_host(host, weight))
        self._saved.clear()


def _host_storage(weight: Any, dtype: str) -> np.ndarray:
    import torch

    cpu = weight.detach().to("cpu").contiguous()
    if dtype == "BF16":
        return cpu.view(torch.int16).numpy().view(np.uint16).copy()
    return cpu.numpy().copy()


def _from_host(host: np.ndarray, like: Any) -> Any:
    import torch

    if like.dtype == torch.bfloat16:
        return torch.from_numpy(host.view(np.int16)).view(torch.bfloat16).to(like.device)
    return torch.from_numpy(host).to(like.device)


def apply_to_model(
    model: Any,
    neurons: NeuronSet | Sequence[Neuron] | EditSpec,
    op: str = "zero",
    factor: Any = None,
    arch: Architecture | None = None,
) -> EditHandle:
    """Edit a loaded transformers model's output-projection weights in place, exactly as apply bakes.

    Returns a handle whose :meth:`EditHandle.restore` puts the original values back.
    """
    import torch

    spec = neurons if isinstance(neurons, EditSpec) else make_edit_spec(neurons, op, factor)
    arch = _arch_of(model, arch)
    from tnedit.architectures import decoder_layers

    layers = decoder_layers(model, arch)
    axis = neuron_axis(arch)
    first = resolve_module(layers[0], arch.out_proj).weight
    check_neuron_range(spec, len(layers), first.shape[axis], "apply_to_model")
    handle = EditHandle([], spec)
    try:
        for edit in spec.by_layer():
            weight = resolve_module(layers[edit.layer], arch.out_proj).weight
            dtype = _TORCH_TO_SAFETENSORS.get(str(weight.dtype))
            if dtype is None:
                raise InputError(f"cannot edit weights of dtype {weight.dtype}")
            host = _host_storage(weight, dtype)
            where = f"layer {edit.layer} ({arch.out_proj}.weight)"
            original = patch_slices(host, dtype, axis, edit.indices, edit.factors, where)
            with torch.no_grad():
                weight.copy_(_from_host(host, weight))
            handle._saved.append((weight, axis, edit.indices, original))
    except BaseException:
        handle.restore()  # all or nothing: a failure in a later layer must not leave earlier ones edited
        raise
    return handle


# --- runtime hooks ------------------------------------------------------------------------------


def last_token_mask(attention_mask: Any) -> Any:
    """One True per row at its last real token, for left or right padding."""
    import torch

    mask = attention_mask.bool()
    width = mask.shape[1]
    last = width - 1 - torch.flip(mask.long(), dims=[1]).argmax(dim=1)
    out = torch.zeros_like(mask)
    out[torch.arange(mask.shape[0], device=mask.device), last] = True
    return out


class RuntimeEdit:
    """Forward pre-hooks that scale neuron activations (the output projection's inputs).

    ``positions``: ``all`` multiplies every position, equal to the baked edit; ``last`` only each
    row's last real token and ``prompt`` every real prompt token, as in the paper. For ``last`` and
    ``prompt`` call :meth:`set_attention_mask` before each forward; passes whose length differs from
    that mask (cached generation steps) are left unedited, so generated tokens are never edited.
    """

    def __init__(self, model: Any, spec: EditSpec, positions: Positions = "all", arch: Architecture | None = None):
        if positions not in ("all", "last", "prompt"):
            raise InputError(f"--positions must be all, last or prompt, got {positions!r}")
        from tnedit.architectures import decoder_layers

        self.model = model
        self.spec = spec
        self.positions = positions
        self.arch = _arch_of(model, arch)
        self.layers = decoder_layers(model, self.arch)
        width = resolve_module(self.layers[0], self.arch.out_proj).weight.shape[neuron_axis(self.arch)]
        check_neuron_range(spec, len(self.layers), width, "runtime edit")
        self._mask: Any = None
        self._handles: list[Any] = []

    def set_attention_mask(self, attention_mask: Any) -> None:
        if self.positions == "all":
            self._mask = None
        elif self.positions == "last":
            self._mask = last_token_mask(attention_mask)
        else:
            self._mask = attention_mask.bool()

    def __enter__(self) -> RuntimeEdit:
        import torch

        for edit in self.spec.by_layer():
            module = resolve_module(self.layers[edit.layer], self.arch.out_proj)
            idx = torch.tensor(edit.indices, dtype=torch.long)
            factors = torch.tensor(edit.factors, dtype=torch.float32)
            self._handles.append(module.register_forward_pre_hook(self._hook(idx, factors)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, idx: Any, factors: Any) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            mask = self._position_mask(x)
            if mask is False:
                return None
            i, f = idx.to(x.device), factors.to(x.device)
            x = x.clone()
            picked = x[..., i]
            scaled = (picked.float() * f).to(x.dtype)
            scaled = scaled.masked_fill(f == 0, 0)
            if mask is not None:
                scaled = scaled.where(mask.unsqueeze(-1), picked)
            x[..., i] = scaled
            return (x, *args[1:])

        return hook

    def _position_mask(self, x: Any) -> Any:
        """None = every position; False = skip this pass; else a bool mask shaped like x[..., 0]."""
        if self.positions == "all":
            return None
        if self._mask is None:
            raise RuntimeError("RuntimeEdit: call set_attention_mask() before each forward")
        mask = self._mask.to(x.device)
        if x.dim() == 2:  # layers that flatten (batch, time) first, e.g. OPT
            return mask.reshape(-1) if mask.numel() == x.shape[0] else False
        return mask if tuple(mask.shape) == tuple(x.shape[:2]) else False


# --- streaming: bake into a new checkpoint directory --------------------------------------------

SEMANTICS_NOTE = (
    "A baked edit multiplies neuron activations at every token position, generated tokens included. "
    "The paper's analyses deactivate neurons with hooks at the last token (representations) or at "
    "prompt tokens (QA, MMLU-ProX); `tnedit evaluate --positions last|prompt` reproduces those."
)


@dataclass
class ApplyResult:
    out: Path
    provenance: dict[str, Any]
    spec: EditSpec


def _patches_by_file(ckpt: Checkpoint, spec: EditSpec) -> dict[str, dict[str, LayerEdit]]:
    by_file: dict[str, dict[str, LayerEdit]] = defaultdict(dict)
    for edit in spec.by_layer():
        name = ckpt.out_proj_name(edit.layer)
        by_file[ckpt.tensor_file[name]][name] = edit
    return by_file


class SlicePatch:
    """Scales (or restores) the neuron slices of one output projection, one row block at a time.

    Linear weights hold neuron i in column i, so every row block carries a piece of every neuron;
    Conv1D weights hold it in row i, so a block carries the neurons whose rows it spans. The
    original values are collected block by block, in index order, for the revert file.
    """

    def __init__(
        self,
        axis: int,
        indices: Sequence[int],
        factors: Sequence[float] | None = None,
        original: np.ndarray | None = None,
        where: str = "weights",
    ):
        self.axis = axis
        self.indices = np.asarray(indices, dtype=np.int64)
        self.factors = None if factors is None else np.asarray(factors, dtype=np.float64)
        self.restore_from = original
        self.where = where
        self._parts: list[np.ndarray] = []

    def __call__(self, info: TensorInfo, block: memoryview, row0: int, row1: int) -> None:
        weight = storage_view(block, info.dtype, (row1 - row0, info.shape[1]))
        if self.axis == 1:
            local, pick = self.indices, slice(row0, row1)
        else:
            chosen = (self.indices >= row0) & (self.indices < row1)
            if not chosen.any():
                return
            local, pick = self.indices[chosen] - row0, chosen
        if self.restore_from is not None:
            restore_slices(weight, self.axis, local, self.restore_from[pick])
            return
        factors = self.factors if self.axis == 1 else self.factors[pick]
        neurons = self.indices if self.axis == 1 else self.indices[pick]
        where = f"{self.where} '{info.name}'"
        self._parts.append(patch_slices(weight, info.dtype, self.axis, local, factors, where, neurons))

    def original(self) -> np.ndarray:
        return np.concatenate(self._parts, axis=0)


def check_fingerprint(ckpt: Checkpoint, neuron_set: NeuronSet | None, where: str, force: bool) -> str | None:
    """Refuse a neuron set made for another model. Returns a warning to show, or None.

    A shape-only fingerprint of tnedit 0.1 that matches by shape is accepted with a warning (it
    cannot tell a same-shaped fine-tune apart); a different one is refused unless ``force``.
    """
    if neuron_set is None or neuron_set.model is None:
        return None
    theirs = neuron_set.model.fingerprint
    status = ckpt.fingerprint_status(theirs)
    if status == "same":
        return None
    if status == "legacy":
        return (
            f"{where}: the neuron set was made by an older tnedit that checked shapes only ({theirs}); it matches "
            f"{ckpt.path} by shape, which cannot tell apart another model of the same shapes (a fine-tune)"
        )
    mine = ckpt.fingerprint()
    message = (
        f"{where}: fingerprint mismatch: the neurons were identified on {neuron_set.model.name_or_path} "
        f"({neuron_set.model.model_type}, {neuron_set.model.num_layers} layers × "
        f"{neuron_set.model.intermediate_size}, {theirs}), but {ckpt.path} is "
        f"{ckpt.model_type}, {ckpt.num_layers} layers × {ckpt.intermediate_size} ({mine})"
    )
    if not force:
        raise NeuronFormatError(message + "; pass --force to apply anyway")
    return message


def _warner(warn: Callable[[str], Any] | None) -> Callable[[str], Any]:
    """The caller's warning callback, else a Python warning (which the CLI prints as one line)."""
    import warnings

    return warn or (lambda message: warnings.warn(message, TneditWarning, stacklevel=3))


def _protected_inputs(inputs: Iterable[str | Path], neuron_source: str | None) -> list[Path]:
    """What ``--overwrite`` must never delete: the given inputs and the neurons file, if it is one."""
    protected = [Path(p) for p in inputs]
    if neuron_source and Path(neuron_source).is_file():
        protected.append(Path(neuron_source))
    return protected


def apply_to_checkpoint(
    source: str,
    spec: EditSpec,
    out: str | Path,
    *,
    neuron_set: NeuronSet | None = None,
    neuron_source: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    link: bool = False,
    command: str | None = None,
    progress: bool = True,
    warn: Callable[[str], Any] | None = None,
    inputs: Iterable[str | Path] = (),
) -> ApplyResult:
    """Write ``out``: ``source`` with the edit baked into its output projections.

    Streams one tensor at a time, copies every other file byte for byte, records provenance, the
    original slices (for :func:`revert_checkpoint`) and a model card; ``out`` appears only complete.
    ``out`` may neither overlap the source nor hold ``inputs`` or the neurons file.
    """
    from tnedit.formats.card import render_card

    out = Path(out)
    warn = _warner(warn)
    resolved = resolve_source(source, revision=revision)
    ckpt = open_checkpoint(resolved.path)
    where = neuron_source or "neurons"
    check_neuron_range(spec, ckpt.num_layers, ckpt.intermediate_size, where)
    note = check_fingerprint(ckpt, neuron_set, where, force)
    if note:
        warn(note)
    check_output_dir(out, resolved.path, overwrite, inputs=_protected_inputs(inputs, neuron_source))
    source_card = read_card_text(resolved.path / CARD_NAME)
    previous = _previous_provenance(resolved.path)
    foreign = ckpt.foreign_weight_files()
    if foreign:
        warn(f"not copied (weights in another format would stay unedited): {', '.join(foreign)}")
    axis = neuron_axis(ckpt.arch)
    by_file = _patches_by_file(ckpt, spec)
    originals: dict[str, np.ndarray] = {}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        _copy_side_files(resolved.path, tmp, ckpt)
        weights = _write_weight_files(resolved.path, tmp, ckpt, by_file, axis, originals, link, progress)
        revert_sha256 = _write_revert_file(tmp / REVERT_NAME, ckpt, by_file, originals, source_card)
        files = {"weights": weights, "revert_sha256": revert_sha256, "previous": previous, "card": source_card}
        provenance = _provenance(resolved, ckpt, spec, neuron_set, neuron_source, command, files)
        # Not write_json: that lists the file as a completed output, and this one is not yet.
        write_new_text(tmp / PROVENANCE_NAME, json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
        write_new_text(tmp / CARD_NAME, render_card(provenance, source_card))
    return ApplyResult(out, provenance, spec)


def write_new_text(path: Path, text: str) -> None:
    """A new file in a directory tnedit is building: never an existing file or a planted symlink."""
    with writing(path), create_new(path) as fh:
        fh.write(text.encode("utf-8"))


def read_card_text(path: Path) -> str | None:
    """A model card's text, None if there is none; a card that is not UTF-8 is named, not a traceback."""
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file (expected a Markdown model card)") from None


def _previous_provenance(model_dir: Path) -> Any:
    """The source's own tnedit.json (a re-edited checkpoint), kept as is in the new provenance."""
    path = model_dir / PROVENANCE_NAME
    return _read_json(path) if path.is_file() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file (expected JSON)") from None


def _copy_side_files(src_dir: Path, out_dir: Path, ckpt: Checkpoint) -> None:
    """Every non-weight file byte for byte, except the card, provenance and revert file tnedit writes itself."""
    for rel in ckpt.side_files():
        if str(rel) in (CARD_NAME, PROVENANCE_NAME, REVERT_NAME):
            continue
        copy_plain(src_dir / rel, out_dir / rel)


def _write_weight_files(
    src_dir: Path,
    out_dir: Path,
    ckpt: Checkpoint,
    by_file: dict[str, dict[str, LayerEdit]],
    axis: int,
    originals: dict[str, np.ndarray],
    link: bool,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    """Copy or patch every weight file, several at a time: hashing, not I/O, is what bounds apply.

    Each file records its output's SHA-256 and its source's (``source_sha256``), which revert
    checks its restored bytes against. An untouched file's source digest is its output's; an edited
    one's is hashed alongside the copy, or read from a Hub blob's name.
    """
    cancel = threading.Event()

    def one(f: str) -> tuple[str, dict[str, Any]]:
        src, dst = src_dir / f, out_dir / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        header, blob = ckpt.headers[f], hub_blob_sha256(src)
        edits = by_file.get(f)
        if not edits:
            digest = copy_plain(src, dst, link=link, known_sha256=blob, expected=header.identity, cancel=cancel)
            return f, {"sha256": digest, "source_sha256": digest, "edited_tensors": []}
        patches = {name: SlicePatch(axis, e.indices, e.factors, where=f"layer {e.layer}") for name, e in edits.items()}
        result = copy_with_patches(src, dst, patches, header, hash_source=blob is None, cancel=cancel)
        originals.update({name: patch.original() for name, patch in patches.items()})
        entry = {"sha256": result.output_sha256, "source_sha256": blob or result.source_sha256}
        return f, {**entry, "edited_tensors": sorted(edits)}

    sizes = {f: _size(ckpt, f) for f in ckpt.weight_files}
    results = _in_parallel(one, sizes, "apply", progress, cancel)
    return {f: results[f] for f in ckpt.weight_files}


def _size(ckpt: Checkpoint, f: str) -> int:
    identity = ckpt.headers[f].identity
    return identity[2] if identity is not None else (ckpt.path / f).stat().st_size


def _in_parallel(
    work: Callable[[str], tuple[str, Any]],
    sizes: dict[str, int],
    desc: str,
    progress: bool,
    cancel: threading.Event,
) -> dict[str, Any]:
    """Run ``work`` on every file, largest first, one per core plus one, with a byte progress bar.

    On the first failure, Ctrl-C or SIGTERM/SIGHUP, every worker is told to stop at its next block
    and waited for before the exception leaves: only then may the caller remove the temporary
    directory they write into.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    order = sorted(sizes, key=lambda f: -sizes[f])  # largest first balances the workers
    results: dict[str, Any] = {}
    with (TqdmReporter() if progress else NullReporter()).progress(sum(sizes.values()), desc, unit="B") as bar:
        advance = bar.update
        pool = ThreadPoolExecutor(max_workers=_file_workers(len(order)))
        futures: list[Any] = []
        try:  # submitting is inside: a signal may arrive once the first worker already writes
            for f in order:
                futures.append(pool.submit(work, f))
            for future in as_completed(futures):
                key, value = future.result()
                results[key] = value
                advance(sizes[key])
        except BaseException:
            _stop_workers(pool, futures, cancel)
            raise
        pool.shutdown(wait=True)
    return results


def _stop_workers(pool: Any, futures: Sequence[Any], cancel: threading.Event) -> None:
    """Cancel queued files, make running ones stop at their next block, and wait until none runs.

    A second signal must not cut the wait short, or the temporary directory would be removed while
    a worker still writes into it. The wait is on the futures, not on the threads: Python 3.11's
    Thread.join() takes an interrupted join for a finished thread, so it cannot be retried.
    """
    from concurrent.futures import wait

    cancel.set()
    pool.shutdown(wait=False, cancel_futures=True)
    running = [f for f in futures if not f.cancelled()]  # a cancelled future is never "done" for wait()
    while True:
        try:
            wait(running)
            return
        except KeyboardInterrupt:
            continue


def _file_workers(n_files: int) -> int:
    """One file per core plus one: shards differ in size, and a spare file keeps every core hashing."""
    return max(1, min(n_files, available_cores() + 1))


def _write_revert_file(
    path: Path,
    ckpt: Checkpoint,
    by_file: dict[str, dict[str, LayerEdit]],
    originals: dict[str, np.ndarray],
    source_card: str | None,
) -> str:
    """The original slices and their indices, and the source card; returns the file's SHA-256."""
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for edits in by_file.values():
        for name, edit in edits.items():
            tensors[f"{name}::original"] = (originals[name], ckpt.tensor(name).dtype)
            tensors[f"{name}::indices"] = (np.asarray(edit.indices, dtype=np.int64), "I64")
    metadata = {
        "format": REVERT_FORMAT,
        "layout": ckpt.arch.layout,
        "source_card": source_card or "",
        "source_had_card": "1" if source_card is not None else "0",
    }
    return write_safetensors(path, tensors, metadata)


def _provenance(
    resolved: ResolvedSource,
    ckpt: Checkpoint,
    spec: EditSpec,
    neuron_set: NeuronSet | None,
    neuron_source: str | None,
    command: str | None,
    files: dict[str, Any],
) -> dict[str, Any]:
    """tnedit.json. ``files``: the weight files' digests, the revert file's, the source's own
    provenance (``previous``) and its card's text."""
    import datetime

    from tnedit.architectures import hidden_size

    method = asdict(neuron_set.method) if neuron_set and neuron_set.method else None
    return {
        "format": PROVENANCE_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "source": {
            "name_or_path": resolved.source,
            "revision": resolved.revision,
            "is_hub": resolved.is_hub,
            "model_type": ckpt.model_type,
            "num_layers": ckpt.num_layers,
            "intermediate_size": ckpt.intermediate_size,
            "hidden_size": hidden_size(ckpt.config, ckpt.arch),
            "fingerprint": ckpt.fingerprint(),
            "license": _card_license(files["card"]),
        },
        "neuron_set": {
            "path": neuron_source,
            "sha256": neuron_set.sha256() if neuron_set else None,
            "method": method,
            "model": asdict(neuron_set.model) if neuron_set and neuron_set.model else None,
        },
        "edit": {
            "op": spec.op,
            "factor": spec.factor,
            "n_neurons": len(spec.neurons),
            "per_layer": {str(k): v for k, v in spec.per_layer_counts().items()},
            "neurons": [[n.layer, n.index, spec.factor_of(n)] for n in spec.neurons],
            "semantics": SEMANTICS_NOTE,
        },
        "versions": package_versions(),
        "weights": files["weights"],
        "revert_file": REVERT_NAME,
        "revert_sha256": files["revert_sha256"],
        "previous_provenance": files["previous"],
    }


def _card_license(card: str | None) -> str | None:
    from tnedit.formats.card import read_front_matter

    if card is None:
        return None
    value = read_front_matter(card).get("license")
    return str(value) if value is not None else None


# --- revert -------------------------------------------------------------------------------------

PROVENANCE_FORMAT = "tnedit.provenance/1"
REVERT_FORMAT = "tnedit.revert/1"


def read_provenance(edited: Path) -> dict[str, Any]:
    path = edited / PROVENANCE_NAME
    if not path.is_file():
        raise CheckpointError(f"{edited}: no {PROVENANCE_NAME}; not a checkpoint written by tnedit apply")
    prov = _read_json(path)
    if not isinstance(prov, dict) or prov.get("format") != PROVENANCE_FORMAT:
        raise CheckpointError(f"{path}: key 'format' must be '{PROVENANCE_FORMAT}'")
    return prov


@dataclass(frozen=True)
class RecordedDigests:
    """What tnedit.json promises about an edited checkpoint, checked for shape before revert trusts it.

    ``source`` and ``revert_sha256`` are None for provenance written by tnedit 0.1, which recorded
    only the edited files' digests.
    """

    edited: dict[str, str]  # SHA-256 of each weight file of the edited checkpoint
    source: dict[str, str] | None  # SHA-256 of each weight file of its source
    edited_tensors: dict[str, list[str]]  # per file, as apply listed them (files without the key absent)
    revert_sha256: str | None


def _digest_at(obj: dict[str, Any], key: str, label: str, path: Path) -> str:
    if key not in obj:
        raise CheckpointError(f"{path}: key '{label}' is missing")
    if not is_sha256(obj[key]):
        raise CheckpointError(f"{path}: key '{label}' must be a SHA-256 hex digest, got {obj[key]!r:.80}")
    return str(obj[key])


def recorded_digests(prov: dict[str, Any], ckpt: Checkpoint) -> RecordedDigests:
    """The digests tnedit.json records, every key present and of its type, naming exactly ``ckpt``'s weight files."""
    path = ckpt.path / PROVENANCE_NAME
    weights = prov.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: key 'weights' must be an object mapping each weight file to its SHA-256")
    for name in weights:
        contained_name(ckpt.path, name, f"{path}: key 'weights'")
    if sorted(weights) != sorted(ckpt.weight_files):
        raise CheckpointError(
            f"{path}: key 'weights' lists {sorted(weights)}, but {ckpt.path} holds {sorted(ckpt.weight_files)}"
        )
    legacy = "revert_sha256" not in prov and not any(
        isinstance(entry, dict) and "source_sha256" in entry for entry in weights.values()
    )
    edited, source, tensors = {}, {}, {}
    for name, entry in weights.items():
        label = f"weights['{name}']"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: key '{label}' must be an object with its sha256")
        edited[name] = _digest_at(entry, "sha256", f"{label}.sha256", path)
        if not legacy:
            source[name] = _digest_at(entry, "source_sha256", f"{label}.source_sha256", path)
        if "edited_tensors" in entry:
            listed = entry["edited_tensors"]
            if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
                raise CheckpointError(f"{path}: key '{label}.edited_tensors' must be a list of tensor names")
            tensors[name] = sorted(listed)
    revert_sha256 = None if legacy else _digest_at(prov, "revert_sha256", "revert_sha256", path)
    return RecordedDigests(edited, None if legacy else source, tensors, revert_sha256)


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


def revert_checkpoint(
    edited: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    warn: Callable[[str], Any] | None = None,
) -> Path:
    """Write ``out`` with the weight files of the checkpoint ``edited`` was made from, byte for byte.

    Before anything is used, tnedit.json must record every digest revert checks, and the revert
    file must have the SHA-256 recorded there. Each weight file is verified while it is copied: the
    edited file against its recorded SHA-256, the restored bytes against the source's, and ``out``
    appears only if every one matches. Provenance of tnedit 0.1 recorded no source digests: its
    checkpoints are still restored, with a warning that the result cannot be verified.
    """
    edited, out = Path(edited), Path(out)
    require_directory(edited)
    prov = read_provenance(edited)
    revert_path = edited / REVERT_NAME
    if not revert_path.is_file():
        raise CheckpointError(f"{edited}: {REVERT_NAME} is missing; cannot restore the original columns")
    ckpt = open_checkpoint(edited)
    recorded = recorded_digests(prov, ckpt)
    check_output_dir(out, edited, overwrite)
    if recorded.revert_sha256 is None:
        _warner(warn)(
            f"{edited / PROVENANCE_NAME}: written by tnedit 0.1 (no 'revert_sha256' or 'source_sha256'): the edited "
            "files are checked, but the restored bytes cannot be verified against the original's"
        )
    elif sha256_file(revert_path) != recorded.revert_sha256:
        raise CheckpointError(
            f"{revert_path}: SHA-256 differs from key 'revert_sha256' of {PROVENANCE_NAME}; the revert file was "
            "modified or corrupted after apply"
        )
    restore, metadata = _restore_patches(revert_path, ckpt, recorded)
    cancel = threading.Event()
    with atomic_directory(out, overwrite=overwrite) as tmp:
        _copy_side_files(edited, tmp, ckpt)

        def one(f: str) -> tuple[str, str]:
            return f, _restore_file(ckpt, f, tmp / f, restore.get(f), recorded, cancel)

        _in_parallel(one, {f: _size(ckpt, f) for f in ckpt.weight_files}, "revert", progress, cancel)
        if metadata.get("source_had_card") == "1":
            write_new_text(tmp / CARD_NAME, metadata.get("source_card", ""))
    return out


def _restore_file(
    ckpt: Checkpoint,
    f: str,
    dst: Path,
    patches: dict[str, TensorPatch] | None,
    recorded: RecordedDigests,
    cancel: threading.Event,
) -> str:
    """Write one original weight file; its digests are checked before revert's output can appear."""
    src, header = ckpt.path / f, ckpt.headers[f]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if patches:
        result = copy_with_patches(src, dst, patches, header, hash_source=True, cancel=cancel)
        read, written = result.source_sha256, result.output_sha256
    else:
        read = written = copy_plain(src, dst, expected=header.identity, cancel=cancel)
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
