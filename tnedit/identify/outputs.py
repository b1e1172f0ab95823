"""Where identify, LAPE, select and the random control write, and how their inputs are read.

Torch-free: the checks run before any model is loaded, and ``tnedit.identify.settings`` uses them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tnedit.errors import InputError, NeuronSetError
from tnedit.formats.neurons import NeuronSet, load_neurons
from tnedit.formats.outputs import check_output_file, is_within, require_writable
from tnedit.formats.scores import ScoresFile


def default_output_dir(model: str) -> Path:
    """``tnedit-identify/<model-name>``: the directory the CLI writes to without ``-o``."""
    local = Path(model).expanduser()
    name = Path(os.path.abspath(local)).name if local.is_dir() else Path(str(model).rstrip("/")).name
    return Path("tnedit-identify") / (name or "model")


def _local_model_dir(model: str | os.PathLike[str] | None) -> Path | None:
    if model is None:
        return None
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def check_output_directory(out: Path | str, model: str | os.PathLike[str] | None, where: str = "-o") -> None:
    """Refuse an identify/LAPE output directory that is a file, is or lies inside the model, or cannot be written.

    identify adds its files to an existing directory (a second language, a resumed run), so an
    existing directory is fine; the model's own directory never is, resume state included.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{where} {out}: exists and is not a directory (expected an output directory)")
    source = _local_model_dir(model)
    if source is not None and is_within(out, source):
        raise InputError(f"{where} {out}: is inside the model directory {source}; tnedit never writes into its input, "
                         "choose another output directory")
    require_writable(out, where)


def check_output_json(
    path: Path | str, *, overwrite: bool, inputs: Sequence[Path | str] = (), model: str | None = None
) -> None:
    """Refuse a single-file output (a control set, a select result) that is an input, exists without
    ``overwrite``, lies in the model directory, or cannot be written."""
    path = Path(path)
    check_output_file(path, overwrite, inputs)
    source = _local_model_dir(model)
    if source is not None and is_within(path, source):
        raise InputError(f"{path}: is inside the model directory {source}; tnedit never writes into its input")
    require_writable(path, "-o", file=True)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError while writing an output names the output, not its temporary sibling."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def save_neuron_set(neurons: NeuronSet, path: str | os.PathLike[str]) -> Path:
    """:meth:`NeuronSet.save` (atomic, via :mod:`tnedit.formats.outputs`) with a write error that names ``path``."""
    path = Path(path)
    with writing(path):
        neurons.save(path)
    return path


def save_scores_file(scores: ScoresFile, path: str | os.PathLike[str]) -> Path:
    """:meth:`ScoresFile.save` with a write error that names ``path``."""
    path = Path(path)
    with writing(path):
        scores.save(path)
    return path


def read_neurons(path: str | os.PathLike[str], where: str) -> NeuronSet:
    """:func:`tnedit.formats.neurons.load_neurons` with errors that say which option the file came from."""
    try:
        return load_neurons(path)
    except NeuronSetError as exc:
        raise NeuronSetError(f"{where}: {exc}") from None
