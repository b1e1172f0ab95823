"""Where a recipe's paths point, and what a run reads and writes, checked before anything is written.

Paths in a recipe are relative to the recipe file's directory, so a recipe runs the same from anywhere;
values given with ``--set`` are relative to the working directory (see :func:`resolve_paths`). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tnedit.checkpoint import is_hub_id
from tnedit.errors import InputError, RecipeError
from tnedit.formats.outputs import check_output_dir
from tnedit.recipes.schema import BUILTIN, Recipe, edit_languages, identify_ref


def _tidy(path: Path) -> Path:
    """``path`` without ``..`` and ``.`` parts where that names the same place (below a symlink it may not).

    The longest existing ancestor is normalised and checked with samefile; the rest is kept as written.
    """
    head = path
    while not head.exists() and head != head.parent:
        head = head.parent
    rest = path.relative_to(head)
    norm = Path(os.path.normpath(head))
    try:
        same = norm == head or os.path.samefile(norm, head)
    except OSError:
        same = False
    return (norm if same else head) / rest


def _local_path(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else _tidy(base / path))


def is_data_path(source: str) -> bool:
    """A data source that is a local file (not the built-in corpus, not ``hf:NAME``)."""
    return source != BUILTIN and not source.startswith("hf:")


def resolve_paths(recipe: Recipe, recipe_dir: Path, overridden: Sequence[tuple[str, ...]] = (),
                  own_output: bool = True) -> Recipe:
    """Make the recipe's paths independent of the working directory, in place.

    The base of a value is the recipe file's directory, or the working directory for a value
    given with ``--set`` (it was typed in the shell). ``~`` is expanded; absolute paths stay.

    - ``model.name``: a value that names an existing path relative to the base is that path;
      otherwise a value of the Hub-id form ``owner/name`` stays a Hub id; anything else is a
      local directory relative to the base.
    - ``data.source``, ``data.evaluate_source``: ``builtin`` and ``hf:NAME`` stay; anything else
      is a file relative to the base (``{lang}`` is kept and filled in per language later).
    - ``edits[].neurons``: ``LANG:TYPE`` names an identify output unless a file of that name
      exists relative to the base; anything else is a neurons file relative to the base.
    - ``evaluate.lm_eval_include``: a folder of task YAML files relative to the base.
    - ``output``: relative to the base; without one (``own_output`` false), ``runs/NAME`` under
      the working directory.
    """
    cwd = Path.cwd()

    def base(*key: str) -> Path:
        return cwd if any(key[: len(o)] == o for o in overridden) else recipe_dir

    model = recipe.model.name
    if (base("model", "name") / Path(model).expanduser()).exists() or not is_hub_id(model):
        recipe.model.name = _local_path(model, base("model", "name"))
    for key in ("source", "evaluate_source"):
        value = getattr(recipe.data, key)
        if value is not None and is_data_path(value):
            setattr(recipe.data, key, _local_path(value, base("data", key)))
    recipe.tune.keep_data = [value if not is_data_path(value) else _local_path(value, base("tune", "keep_data"))
                             for value in recipe.tune.keep_data]
    if recipe.evaluate.lm_eval_include is not None:
        include = base("evaluate", "lm_eval_include")
        recipe.evaluate.lm_eval_include = _local_path(recipe.evaluate.lm_eval_include, include)
    for i, edit in enumerate(recipe.edits):
        where = base("edits", str(i), "neurons")
        if identify_ref(edit.neurons) is None or (where / edit.neurons).is_file():
            edit.neurons = _local_path(edit.neurons, where)
    if own_output or ("output",) in overridden:
        recipe.output = _local_path(recipe.output, base("output"))
    return recipe


def _data_files(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, file) for every local data file a run reads: one per language where the source has {lang}."""
    data = recipe.data
    per_language = recipe.identify.method != "lape" and "{lang}" in data.source
    wanted = [("data.source", data.source, list(recipe.languages) if per_language else recipe.languages[:1])]
    if recipe.evaluate.enabled and recipe.edits:
        key = "data.source" if data.evaluate_source is None else "data.evaluate_source"
        source = data.source if data.evaluate_source is None else data.evaluate_source
        wanted.append((key, source, sorted({edit_languages(recipe, e)[0] for e in recipe.edits})))
    if recipe.tune.enabled:
        if "{lang}" in data.source:
            wanted.append(("data.source", data.source, list(recipe.languages)))
        wanted += [("tune.keep_data", source, [""]) for source in recipe.tune.keep_data]
    files: dict[str, str] = {}
    for key, source, langs in wanted:
        if is_data_path(source):
            for lang in langs:
                files.setdefault(source.replace("{lang}", lang), key)
    return [(key, path) for path, key in files.items()]


def _neuron_files(recipe: Recipe) -> list[tuple[str, str]]:
    return [(f"edits[{i}].neurons", e.neurons) for i, e in enumerate(recipe.edits) if identify_ref(e.neurons) is None]


def check_output_location(recipe: Recipe, where: str) -> None:
    """Refuse, before anything is written, an output that is, contains or lies inside the model
    directory, holds a data or neurons file, or is the working directory or one of its parents."""
    out = Path(recipe.output).expanduser()
    model = Path(recipe.model.name).expanduser()
    inputs = [path for _, path in _data_files(recipe) + _neuron_files(recipe) if Path(path).exists()]
    try:
        check_output_dir(out, source=model if model.exists() else None, overwrite=True, inputs=inputs)
    except InputError as exc:
        raise RecipeError(f"{where}: output: {exc}") from None


def check_inputs(recipe: Recipe, where: str) -> None:
    """What a run reads must exist: the model (a local directory, or a Hub id of the form
    owner/name) and every data and neurons file. One line for the first that does not."""
    model = recipe.model.name
    local = Path(model).expanduser()
    if local.exists() and not local.is_dir():
        raise RecipeError(f"{where}: model.name: {model} is not a directory (expected a model directory or a Hub id)")
    if not local.exists() and not is_hub_id(model):
        raise RecipeError(f"{where}: model.name: {model}: no such directory (and not a Hub id of the form owner/name)")
    for key, path in _data_files(recipe):
        if not Path(path).is_file():
            raise RecipeError(f"{where}: {key}: {path}: no such file")
    for key, path in _neuron_files(recipe):
        if not Path(path).is_file():
            raise RecipeError(f"{where}: {key}: {path}: no such neurons file")
