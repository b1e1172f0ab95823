"""Edit specs and their three realisations: baked into files (streaming), in memory, and as hooks.

An edit ``a_i ← α·a_i`` of neuron i is baked by multiplying the output projection's column i
(row i for GPT-2's Conv1D) by α. Zero is written as exact +0.0; scaling is computed in fp32 and
rounded once to the stored dtype. The baked form acts at every position; :class:`RuntimeEdit`
can restrict the same edit to chosen positions, which is what the paper's analyses do.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
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
    TensorInfo,
    TensorPatch,
    atomic_directory,
    available_cores,
    check_output_dir,
    copy_plain,
    copy_with_patches,
    hub_blob_sha256,
    open_checkpoint,
    read_header,
    read_tensor,
    require_directory,
    resolve_source,
    write_json,
    write_safetensors,
)
from tnedit.errors import CheckpointError, InputError
from tnedit.neurons import Neuron, NeuronFormatError, NeuronSet, merge_duplicates, parse_factor

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
    """Validate the operation and factor, apply --top-k/--layers, and merge duplicate neurons."""
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
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"--top-k must be at least 1, got {top_k}")
        ns = ns.top(top_k)
    ns = ns.in_layers(layers)
    if not ns.neurons:
        raise InputError("no neurons left to edit (check --layers / --top-k)")
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
    weight: np.ndarray, dtype: str, axis: int, indices: Sequence[int], factors: Sequence[float]
) -> np.ndarray:
    """Multiply the neuron slices of ``weight`` (storage array, edited in place) by ``factors``.

    Returns the original slices, stacked along ``axis``, for the revert file.
    """
    idx = np.asarray(indices, dtype=np.int64)
    original = np.take(weight, idx, axis=axis)
    f = np.asarray(factors, dtype=np.float64 if dtype == "F64" else np.float32)
    shape = (1, -1) if axis == 1 else (-1, 1)
    scaled = _from_float(_to_float(original, dtype) * f.reshape(shape), dtype)
    zero = (f == 0).reshape(shape)
    scaled = np.where(zero, np.zeros((), dtype=scaled.dtype), scaled)  # exact +0.0, never -0.0
    if axis == 1:
        weight[:, idx] = scaled
    else:
        weight[idx, :] = scaled
    return original


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
    for edit in spec.by_layer():
        weight = resolve_module(layers[edit.layer], arch.out_proj).weight
        dtype = _TORCH_TO_SAFETENSORS.get(str(weight.dtype))
        if dtype is None:
            raise InputError(f"cannot edit weights of dtype {weight.dtype}")
        host = _host_storage(weight, dtype)
        original = patch_slices(host, dtype, axis, edit.indices, edit.factors)
        with torch.no_grad():
            weight.copy_(_from_host(host, weight))
        handle._saved.append((weight, axis, edit.indices, original))
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
    ):
        self.axis = axis
        self.indices = np.asarray(indices, dtype=np.int64)
        self.factors = None if factors is None else np.asarray(factors, dtype=np.float64)
        self.restore_from = original
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
        self._parts.append(patch_slices(weight, info.dtype, self.axis, local, factors))

    def original(self) -> np.ndarray:
        return np.concatenate(self._parts, axis=0)


def check_fingerprint(ckpt: Checkpoint, neuron_set: NeuronSet | None, where: str, force: bool) -> str | None:
    """Refuse a neuron set made for another model. Returns a warning when forced past a mismatch."""
    if neuron_set is None or neuron_set.model is None:
        return None
    mine = ckpt.fingerprint()
    theirs = neuron_set.model.fingerprint
    if theirs == mine:
        return None
    message = (
        f"{where}: fingerprint mismatch: the neurons were identified on {neuron_set.model.name_or_path} "
        f"({neuron_set.model.model_type}, {neuron_set.model.num_layers} layers × "
        f"{neuron_set.model.intermediate_size}, {theirs}), but {ckpt.path} is "
        f"{ckpt.model_type}, {ckpt.num_layers} layers × {ckpt.intermediate_size} ({mine})"
    )
    if not force:
        raise NeuronFormatError(message + "; pass --force to apply anyway")
    return message


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
    warn: Any = None,
) -> ApplyResult:
    """Write ``out``: ``source`` with the edit baked into its output projections.

    Streams one tensor at a time, copies every other file byte for byte, records provenance, the
    original slices (for :func:`revert_checkpoint`) and a model card; ``out`` appears only complete.
    """

    from tnedit.card import render_card

    out = Path(out)
    resolved = resolve_source(source, revision=revision)
    ckpt = open_checkpoint(resolved.path)
    check_neuron_range(spec, ckpt.num_layers, ckpt.intermediate_size, neuron_source or "neurons")
    mismatch = check_fingerprint(ckpt, neuron_set, neuron_source or "neurons", force)
    if mismatch and warn:
        warn(mismatch)
    check_output_dir(out, resolved.path, overwrite)
    foreign = ckpt.foreign_weight_files()
    if foreign and warn:
        warn(f"not copied (weights in another format would stay unedited): {', '.join(foreign)}")
    axis = neuron_axis(ckpt.arch)
    by_file = _patches_by_file(ckpt, spec)
    originals: dict[str, np.ndarray] = {}
    source_card = resolved.path / CARD_NAME
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for rel in ckpt.side_files():
            if str(rel) in (CARD_NAME, PROVENANCE_NAME, REVERT_NAME):
                continue
            copy_plain(resolved.path / rel, tmp / rel)
        weights = _write_weight_files(resolved.path, tmp, ckpt, by_file, axis, originals, link, progress)
        _write_revert_file(tmp / REVERT_NAME, ckpt, by_file, originals, source_card)
        provenance = _provenance(resolved, ckpt, spec, neuron_set, neuron_source, weights, command)
        write_json(tmp / PROVENANCE_NAME, provenance)
        source_text = source_card.read_text(encoding="utf-8") if source_card.is_file() else None
        (tmp / CARD_NAME).write_text(render_card(provenance, source_text), encoding="utf-8")
    return ApplyResult(out, provenance, spec)


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
    """Copy or patch every weight file, several at a time: hashing, not I/O, is what bounds apply."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def one(f: str) -> tuple[str, str]:
        src, dst = src_dir / f, out_dir / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        edits = by_file.get(f)
        if not edits:
            return f, copy_plain(src, dst, link=link, known_sha256=hub_blob_sha256(src))
        patches = {name: SlicePatch(axis, e.indices, e.factors) for name, e in edits.items()}
        digest = copy_with_patches(src, dst, patches, ckpt.headers[f]).output_sha256
        originals.update({name: patch.original() for name, patch in patches.items()})
        return f, digest

    sizes = {f: (src_dir / f).stat().st_size for f in ckpt.weight_files}
    order = sorted(ckpt.weight_files, key=lambda f: -sizes[f])  # largest first balances the workers
    digests: dict[str, str] = {}
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="apply", disable=not progress) as bar:
        with ThreadPoolExecutor(max_workers=_file_workers(len(order))) as pool:
            for f, digest in pool.map(one, order):
                digests[f] = digest
                bar.update(sizes[f])
    return {f: {"sha256": digests[f], "edited_tensors": sorted(by_file.get(f, {}))} for f in ckpt.weight_files}


def _file_workers(n_files: int) -> int:
    """One file per core plus one: shards differ in size, and a spare file keeps every core hashing."""
    return max(1, min(n_files, available_cores() + 1))


def _write_revert_file(
    path: Path,
    ckpt: Checkpoint,
    by_file: dict[str, dict[str, LayerEdit]],
    originals: dict[str, np.ndarray],
    source_card: Path,
) -> None:
    tensors: dict[str, tuple[np.ndarray, str]] = {}
    for edits in by_file.values():
        for name, edit in edits.items():
            tensors[f"{name}::original"] = (originals[name], ckpt.tensor(name).dtype)
            tensors[f"{name}::indices"] = (np.asarray(edit.indices, dtype=np.int64), "I64")
    metadata = {
        "format": "tnedit.revert/1",
        "layout": ckpt.arch.layout,
        "source_card": source_card.read_text(encoding="utf-8") if source_card.is_file() else "",
        "source_had_card": "1" if source_card.is_file() else "0",
    }
    write_safetensors(path, tensors, metadata)


def _provenance(
    resolved: ResolvedSource,
    ckpt: Checkpoint,
    spec: EditSpec,
    neuron_set: NeuronSet | None,
    neuron_source: str | None,
    weights: dict[str, dict[str, Any]],
    command: str | None,
) -> dict[str, Any]:
    import datetime

    from tnedit.architectures import hidden_size

    previous = resolved.path / PROVENANCE_NAME
    method = asdict(neuron_set.method) if neuron_set and neuron_set.method else None
    return {
        "format": "tnedit.provenance/1",
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
            "license": _source_license(resolved.path / CARD_NAME),
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
        "weights": weights,
        "revert_file": REVERT_NAME,
        "previous_provenance": json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else None,
    }


def _source_license(card: Path) -> str | None:
    from tnedit.card import read_front_matter

    if not card.is_file():
        return None
    value = read_front_matter(card.read_text(encoding="utf-8")).get("license")
    return str(value) if value is not None else None


# --- revert -------------------------------------------------------------------------------------


def read_provenance(edited: Path) -> dict[str, Any]:
    path = edited / PROVENANCE_NAME
    if not path.is_file():
        raise CheckpointError(f"{edited}: no {PROVENANCE_NAME}; not a checkpoint written by tnedit apply")
    try:
        prov = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(prov, dict) or prov.get("format") != "tnedit.provenance/1":
        raise CheckpointError(f"{path}: key 'format' must be 'tnedit.provenance/1'")
    return prov


def revert_checkpoint(edited: str | Path, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``out`` with the weight files of the checkpoint ``edited`` was made from, byte for byte."""
    from tqdm.auto import tqdm

    edited, out = Path(edited), Path(out)
    require_directory(edited)
    prov = read_provenance(edited)
    revert_path = edited / REVERT_NAME
    if not revert_path.is_file():
        raise CheckpointError(f"{edited}: {REVERT_NAME} is missing; cannot restore the original columns")
    ckpt = open_checkpoint(edited)
    check_output_dir(out, edited, overwrite)
    axis = neuron_axis(ckpt.arch)
    revert = read_header(revert_path)
    metadata = revert.metadata or {}
    if metadata.get("format") != "tnedit.revert/1":
        raise CheckpointError(f"{revert_path}: metadata key 'format' must be 'tnedit.revert/1'")
    restore: dict[str, dict[str, TensorPatch]] = defaultdict(dict)
    for key in revert.tensors:
        if not key.endswith("::original"):
            continue
        name = key[: -len("::original")]
        if name not in ckpt.tensor_file:
            raise CheckpointError(f"{revert_path}: names tensor '{name}', which the checkpoint lacks")
        indices = read_tensor(revert, f"{name}::indices")
        restore[ckpt.tensor_file[name]][name] = SlicePatch(axis, indices, original=read_tensor(revert, key))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for rel in ckpt.side_files():
            if str(rel) in (CARD_NAME, PROVENANCE_NAME, REVERT_NAME):
                continue
            copy_plain(edited / rel, tmp / rel)
        for f in tqdm(ckpt.weight_files, desc="revert", disable=not progress):
            expected = prov.get("weights", {}).get(f, {}).get("sha256")
            if f in restore:
                result = copy_with_patches(edited / f, tmp / f, restore[f], ckpt.headers[f], hash_source=True)
                actual = result.source_sha256
            else:
                actual = copy_plain(edited / f, tmp / f)
            if expected and actual != expected:
                raise CheckpointError(
                    f"{edited / f}: SHA-256 differs from {PROVENANCE_NAME}; the edited checkpoint was modified "
                    "after apply, so a byte-identical revert is impossible"
                )
        if metadata.get("source_had_card") == "1":
            (tmp / CARD_NAME).write_text(metadata.get("source_card", ""), encoding="utf-8")
    return out
