"""Reading a recipe: the YAML file, ``--set`` overrides, ``${VAR}`` expansion, the build, the checks, the paths.

``${NAME}`` and ``${NAME:-default}`` in a string value are replaced by the environment variable NAME (or
the default when NAME is unset or empty) before anything else; an unset NAME without a default is an
error. Torch-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tnedit.errors import RecipeError
from tnedit.recipes.paths import check_output_location, resolve_paths
from tnedit.recipes.schema import Recipe, build_recipe, check_recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``identify.k=500`` → (["identify", "k"], 500); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. identify.k=500")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"--set {text!r}: empty key")
    if not value.strip():
        return path, None
    try:
        return path, yaml.safe_load(value)
    except yaml.YAMLError:
        raise RecipeError(f"--set {text!r}: the value is not valid YAML (quote a string: KEY='VALUE')") from None


def _not_a_container(path: list[str], i: int, node: Any) -> RecipeError:
    return RecipeError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is {node!r}, not a mapping or a list")


def _apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {'.'.join(path)}: '{part}' is not an index of {'.'.join(path[:i])}")
            node = node[int(part)]
        elif isinstance(node, dict):
            if node.get(part) is None:  # a missing or empty section
                node[part] = {}
            node = node[part]
        else:
            raise _not_a_container(path, i, node)
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--set {'.'.join(path)}: '{last}' is not a valid index")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise _not_a_container(path, len(path) - 1, node)


_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_environment(value: Any, where: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of ``value`` (a parsed recipe)."""
    if isinstance(value, dict):
        return {k: expand_environment(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        found = os.environ.get(match["name"])
        if match["default"] is not None:
            return found or match["default"]
        if found is None:
            raise RecipeError(
                f"{where}: environment variable {match['name']} is not set (write ${{{match['name']}:-DEFAULT}} "
                "for a default)"
            )
        return found

    return _ENV.sub(one, value)


def _read_raw(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text; expected a YAML recipe") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}: not valid YAML{at}") from None
    if raw is None:
        raise RecipeError(f"{path}: the recipe is empty; expected a mapping with at least model.name and languages")
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping of keys at the top level, got a YAML {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (``--set``), expand ``${VAR}``, validate and resolve the paths of a recipe.

    Nothing is written. Refused here, among malformed values and misspelt keys: an edit or run
    name that is not one plain directory name, and an output that is, contains or lies inside
    the model directory or holds a data or neurons file.
    """
    file = Path(path)
    raw = _read_raw(file)
    overridden = []
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(raw, key_path, value)
        overridden.append(tuple(key_path))
    try:
        recipe = build_recipe(expand_environment(raw))
    except RecipeError as exc:
        raise RecipeError(f"{file}: {exc}") from None
    if not recipe.name:
        recipe.name = file.stem
    own_output = bool(recipe.output)
    if not own_output:
        recipe.output = str(Path("runs") / recipe.name)
    check_recipe(recipe, str(file))
    resolve_paths(recipe, file.absolute().parent, overridden, own_output)
    check_output_location(recipe, str(file))
    return recipe
