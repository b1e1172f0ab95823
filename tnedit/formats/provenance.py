"""``tnedit.json`` (``tnedit.provenance/1``): what an edited checkpoint was made from, typed, and its one reader.

``tnedit apply`` writes it next to the edited weights, the revert file (``tnedit.revert/1``) and the model
card. :func:`read_provenance` is the only reader: ``revert`` needs the format and, against the checkpoint,
the digests of :func:`recorded_digests`; ``push`` and ``evaluate`` also need every key they read
(``complete=True``). Files written by tnedit 0.1 (no ``revert_sha256``, no ``source_sha256``) still load.
Values are kept as read: the checks guarantee what the tools use, the rest is carried along. Torch-free.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tnedit.errors import CheckpointError
from tnedit.formats.neurons import SHARED, Neuron
from tnedit.formats.outputs import contained_name

PROVENANCE_NAME = "tnedit.json"
REVERT_NAME = "tnedit_revert.safetensors"
CARD_NAME = "README.md"
PROVENANCE_FORMAT = "tnedit.provenance/1"
REVERT_FORMAT = "tnedit.revert/1"

SEMANTICS_NOTE = (
    "A baked edit multiplies neuron activations at every token position, generated tokens included. "
    "The paper's analyses deactivate neurons with hooks at the last token (representations) or at "
    "prompt tokens (QA, MMLU-ProX); `tnedit evaluate --positions last|prompt` reproduces those."
)

# What read_provenance says when a directory has no tnedit.json ({directory}, {name}): revert's, push's/evaluate's.
NOT_APPLIED = "{directory}: no {name}; not a checkpoint written by tnedit apply"
NOT_A_CHECKPOINT = "{directory}: not a tnedit checkpoint (no {name}); expected a directory written by `tnedit apply`"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: Any) -> bool:
    """A SHA-256 hex digest as tnedit records them: 64 lowercase hex digits and nothing else (``fullmatch``:
    ``$`` would let a trailing newline by)."""
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def _record(cls: type, obj: Any) -> Any:
    """``cls`` from a mapping's keys (missing ones None, other keys dropped); a non-mapping gives the empty record."""
    block = obj if isinstance(obj, dict) else {}
    return cls(**{f.name: block.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class SourceRecord:
    """The model the edit was baked into."""

    name_or_path: str | None = None
    revision: str | None = None
    is_hub: bool | None = None
    model_type: str | None = None
    num_layers: int | None = None
    intermediate_size: int | None = None
    hidden_size: int | None = None
    fingerprint: str | None = None
    license: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class NeuronSetRecord:
    """The neuron set the edit came from: its path, digest, and its ``method`` and ``model`` blocks as written."""

    path: str | None = None
    sha256: str | None = None
    method: dict[str, Any] | None = None
    model: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class EditRecord:
    """The operation and every edited neuron as ``[layer, index, factor]``, an expert's as
    ``[layer, index, factor, expert]`` (a routed expert's number or ``"shared"``)."""

    op: str | None = None
    factor: float | None = None
    n_neurons: int | None = None
    per_layer: dict[str, int] | None = None
    neurons: list[list[Any]] | None = None
    semantics: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def edited_neurons(self, where: Path | str) -> list[Neuron]:
        """The edited neurons with their factors; CheckpointError naming ``where`` if the list is malformed or empty."""
        try:
            neurons = [_edited_neuron(entry) for entry in self.neurons or []]
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{where}: key 'edit.neurons' must list [layer, index, factor] triples "
                "([layer, index, factor, expert] for an expert's neuron, expert a number or \"shared\")"
            ) from None
        if not neurons:
            raise CheckpointError(f"{where}: key 'edit.neurons' lists no neurons")
        return neurons


def _edited_neuron(entry: Any) -> Neuron:
    """One ``edit.neurons`` entry; TypeError or ValueError when it is not one."""
    if not isinstance(entry, (list, tuple)) or len(entry) not in (3, 4):
        raise ValueError(entry)
    layer, index, factor = int(entry[0]), int(entry[1]), float(entry[2])
    if len(entry) == 3:
        return Neuron(layer, index, factor=factor)
    expert = entry[3]
    if expert != SHARED and (isinstance(expert, bool) or not isinstance(expert, int) or expert < 0):
        raise ValueError(expert)
    return Neuron(layer, index, factor=factor, expert=expert)


@dataclass(frozen=True)
class WeightRecord:
    """One weight file of the edited checkpoint: its SHA-256, its source's and the tensors apply edited in it.

    ``source_sha256`` and ``edited_tensors`` are None in provenance of tnedit 0.1.
    """

    sha256: str | None = None
    source_sha256: str | None = None
    edited_tensors: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Provenance:
    """A ``tnedit.json``. ``raw`` is the mapping as read (None for one built by apply)."""

    source: SourceRecord = field(default_factory=SourceRecord)
    neuron_set: NeuronSetRecord = field(default_factory=NeuronSetRecord)
    edit: EditRecord = field(default_factory=EditRecord)
    weights: dict[str, WeightRecord] = field(default_factory=dict)
    created: str | None = None
    command: str | None = None
    versions: dict[str, Any] | None = None
    revert_file: str | None = REVERT_NAME
    revert_sha256: str | None = None
    previous_provenance: Any = None
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The ``tnedit.json`` object, keys in the order apply writes them (no ``revert_sha256`` of 0.1 files)."""
        out = {
            "format": PROVENANCE_FORMAT,
            "created": self.created,
            "command": self.command,
            "source": self.source.to_dict(),
            "neuron_set": self.neuron_set.to_dict(),
            "edit": self.edit.to_dict(),
            "versions": self.versions,
            "weights": {name: record.to_dict() for name, record in self.weights.items()},
            "revert_file": self.revert_file,
            "revert_sha256": self.revert_sha256,
            "previous_provenance": self.previous_provenance,
        }
        if self.revert_sha256 is None:
            del out["revert_sha256"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, obj: Any, where: Path | str) -> Provenance:
        """A provenance object whose ``format`` is ``tnedit.provenance/1``; its other keys are kept as read."""
        if not isinstance(obj, dict) or obj.get("format") != PROVENANCE_FORMAT:
            raise CheckpointError(f"{where}: key 'format' must be '{PROVENANCE_FORMAT}'")
        weights = obj.get("weights")
        return cls(
            source=_record(SourceRecord, obj.get("source")),
            neuron_set=_record(NeuronSetRecord, obj.get("neuron_set")),
            edit=_record(EditRecord, obj.get("edit")),
            weights={name: _record(WeightRecord, entry) for name, entry in weights.items()}
            if isinstance(weights, dict) else {},
            created=obj.get("created"),
            command=obj.get("command"),
            versions=obj.get("versions"),
            revert_file=obj.get("revert_file"),
            revert_sha256=obj.get("revert_sha256"),
            previous_provenance=obj.get("previous_provenance"),
            raw=obj,
        )


def read_json(path: Path) -> Any:
    """A JSON file's value; a file that is not JSON or not UTF-8 is named in one line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a UTF-8 text file (expected JSON)") from None


def read_previous(directory: Path) -> Any:
    """A source checkpoint's own ``tnedit.json`` (a re-edited checkpoint), as is; None when it has none."""
    path = directory / PROVENANCE_NAME
    return read_json(path) if path.is_file() else None


# Keys of tnedit.json that push (the card, the commit message) and evaluate (the edit) read, and their types.
REQUIRED_KEYS: tuple[tuple[str, str, type], ...] = (
    ("source", "name_or_path", str),
    ("source", "model_type", str),
    ("source", "num_layers", int),
    ("edit", "op", str),
    ("edit", "n_neurons", int),
    ("edit", "per_layer", dict),
    ("edit", "neurons", list),
    ("edit", "semantics", str),
)
_JSON_TYPE = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def check_complete(directory: Path, obj: dict[str, Any]) -> None:
    """Refuse a ``tnedit.json`` that lacks a key push or evaluate reads, or whose weight names leave ``directory``.

    ``weights`` must map each weight file (a name inside ``directory``) to ``{"sha256": HEX}``.
    """
    where = directory / PROVENANCE_NAME
    for section, key, kind in REQUIRED_KEYS:
        block = obj.get(section)
        value = block.get(key) if isinstance(block, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CheckpointError(f"{where}: key '{section}.{key}' is missing or not {_JSON_TYPE[kind]}")
    edit = obj["edit"]
    if edit["op"] not in ("zero", "scale"):
        raise CheckpointError(f"{where}: key 'edit.op' must be 'zero' or 'scale', got {edit['op']!r}")
    factor = edit.get("factor")
    if edit["op"] == "scale" and (not isinstance(factor, int | float) or isinstance(factor, bool)):
        raise CheckpointError(f"{where}: key 'edit.factor' must be a number for op 'scale', got {factor!r}")
    if not isinstance(obj.get("neuron_set") or {}, dict):
        raise CheckpointError(f"{where}: key 'neuron_set' must be an object")
    weights = obj.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{where}: key 'weights' must map each weight file to its sha256")
    for name, entry in weights.items():
        contained_name(directory, name, f"{where}: weights")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise CheckpointError(f"{where}: weights['{name}'] has no sha256")


def read_provenance(directory: Path | str, *, complete: bool = False, missing: str = NOT_APPLIED) -> Provenance:
    """The ``tnedit.json`` of ``directory``, checked; CheckpointError in one line otherwise.

    ``missing`` is the message for a directory without one (``{directory}`` and ``{name}`` are filled in):
    :data:`NOT_APPLIED` (revert) or :data:`NOT_A_CHECKPOINT` (push, evaluate). ``complete`` also requires
    every key push and evaluate read (:func:`check_complete`); revert checks only what it uses, with
    :func:`recorded_digests`, once it has opened the checkpoint.
    """
    directory = Path(directory)
    path = directory / PROVENANCE_NAME
    if not path.is_file():
        raise CheckpointError(missing.format(directory=directory, name=PROVENANCE_NAME))
    obj = read_json(path)
    provenance = Provenance.from_dict(obj, path)
    if complete:
        check_complete(directory, obj)
    return provenance


# --- what revert trusts -----------------------------------------------------------------------------


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


def _listed_weights(obj: dict[str, Any], directory: Path, weight_files: Sequence[str]) -> dict[str, Any]:
    path = directory / PROVENANCE_NAME
    weights = obj.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(f"{path}: key 'weights' must be an object mapping each weight file to its SHA-256")
    for name in weights:
        contained_name(directory, name, f"{path}: key 'weights'")
    if sorted(weights) != sorted(weight_files):
        raise CheckpointError(
            f"{path}: key 'weights' lists {sorted(weights)}, but {directory} holds {sorted(weight_files)}"
        )
    return weights


def recorded_digests(provenance: Provenance, directory: Path, weight_files: Sequence[str]) -> RecordedDigests:
    """The digests ``tnedit.json`` records, every key present and of its type, naming exactly ``weight_files``."""
    obj = provenance.raw if provenance.raw is not None else provenance.to_dict()
    path = directory / PROVENANCE_NAME
    weights = _listed_weights(obj, directory, weight_files)
    legacy = "revert_sha256" not in obj and not any(
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
    revert_sha256 = None if legacy else _digest_at(obj, "revert_sha256", "revert_sha256", path)
    return RecordedDigests(edited, None if legacy else source, tensors, revert_sha256)
