"""Recipes: one YAML file names a whole experiment; `tnedit run` executes it step by step.

A recipe validates into :class:`Recipe`, a tree of dataclasses. Unknown keys are rejected with
the nearest valid key suggested. Each step writes a stamp under ``OUTPUT/.tnedit-steps/`` with the hash of
the settings it depends on; a rerun skips a step whose stamp matches, unless forced. Each step's
output (identify's neuron sets, an edited checkpoint, a report), ``recipe.json`` and the stamps
appear atomically.

Paths in a recipe are relative to the recipe file's directory, not the working directory, so a
recipe runs the same from anywhere (see :func:`resolve_paths` for the exact rule; values given
with ``--set`` are relative to the working directory). ``${NAME}`` and ``${NAME:-default}`` in a
string value are replaced by the environment variable NAME (or the default when NAME is unset or
empty) before anything else; an unset NAME without a default is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tnedit.checkpoint import is_hub_id
from tnedit.errors import InputError, RecipeError
from tnedit.formats.outputs import atomic_directory, check_output_dir, contained_name, write_json

STAMPS = ".tnedit-steps"
BUILTIN = "builtin"


@dataclass
class ModelSettings:
    name: str = ""
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"


@dataclass
class DataSettings:
    """Parallel sentences: ``builtin`` (the packaged corpus), a TSV/JSONL path or ``hf:NAME``.

    ``{lang}`` in a source is replaced by each target language (one file per language pair).
    identify reads the first ``identify_rows`` rows. evaluate reads ``evaluate_rows`` rows of
    ``evaluate_source``, or of ``source`` after the identify rows when it is not set.
    """

    source: str = "builtin"
    identify_rows: int | None = None
    evaluate_source: str | None = None
    evaluate_rows: int = 200

    def resolve(self, source: str, lang: str) -> str | None:
        """The data argument for one language: None means the built-in corpus."""
        return None if source == BUILTIN else source.replace("{lang}", lang)


@dataclass
class IdentifyStep:
    method: str = "transfer"  # transfer | lape
    type: Any = 1  # 1 | 2 | both
    k: int = 1000
    layers: Any = None  # None = the paper's split; "0-19", "0.0:0.625" or a list
    batch_size: int = 16
    lape_languages: list[str] = field(default_factory=list)


@dataclass
class EditStep:
    """One edited checkpoint, written to ``OUTPUT/edits/NAME`` (``name`` is one plain directory name).

    ``neurons`` is ``LANG:TYPE`` (TYPE 1, 2 or lape: an identify output) or a neurons file path.
    ``layers`` applies before ``top_k``: the edit keeps the first ``top_k`` neurons within ``layers``.
    """

    name: str = ""
    neurons: str = ""
    op: str = "zero"
    factor: float | None = None
    top_k: int | None = None
    layers: Any = None


@dataclass
class EvaluateStep:
    enabled: bool = True
    control: str | None = "random"
    positions: str = "all"
    seed: int = 42
    metrics: list[str] = field(default_factory=lambda: ["representations", "perplexity", "generation", "qa"])
    n_qa: int = 50
    n_gen: int = 3


@dataclass
class PushStep:
    repo: str | None = None
    private: bool = True
    edit: str | None = None  # which edit to push; default: the first


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    model: ModelSettings = field(default_factory=ModelSettings)
    languages: list[str] = field(default_factory=list)
    data: DataSettings = field(default_factory=DataSettings)
    identify: IdentifyStep = field(default_factory=IdentifyStep)
    edits: list[EditStep] = field(default_factory=list)
    evaluate: EvaluateStep = field(default_factory=EvaluateStep)
    output: str = ""
    push: PushStep = field(default_factory=PushStep)


EVALUATE_METRICS = ("representations", "perplexity", "generation", "qa")

# --- validation ----------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0] if errors else f"{where}: unexpected value {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise RecipeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            at = f"{where}: " if where else ""
            raise RecipeError(f"{at}unknown key '{key}'{_suggest(str(key), valid)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _plain_name(name: str, root: Path, where: str) -> None:
    """A name used as one directory under ``root``: no separators, no ``..``, not absolute."""
    try:
        contained_name(root, name, where)
    except InputError as exc:
        raise RecipeError(str(exc)) from None
    if PurePosixPath(name).name != name:
        raise RecipeError(f"{where}: '{name}' must be a single directory name (no '/')")


# An edit's ``neurons`` that names an identify output: LANG:1, LANG:2 or LANG:lape.
_IDENTIFY_REF = re.compile(r"(?P<lang>[A-Za-z][A-Za-z0-9_-]*):(?P<kind>[^:/\\]+)")


def _identify_outputs(recipe: Recipe) -> tuple[list[str], set[str]]:
    """The languages and TYPEs of the neuron sets the identify step writes."""
    if recipe.identify.method == "lape":
        return recipe.identify.lape_languages or ["en", *recipe.languages], {"lape"}
    kind = str(recipe.identify.type)
    return list(recipe.languages), {"1", "2"} if kind == "both" else {kind}


def identify_ref(neurons: str) -> tuple[str, str] | None:
    """(LANG, TYPE) when ``neurons`` has the form of an identify output reference, else None.

    After :func:`resolve_paths` a neurons file is an absolute path, which never has this form.
    """
    match = _IDENTIFY_REF.fullmatch(neurons)
    return (match["lang"], match["kind"]) if match else None


def _check_counts(recipe: Recipe, where: str) -> None:
    counts = {
        "identify.k": (recipe.identify.k, 1),
        "identify.batch_size": (recipe.identify.batch_size, 1),
        "data.identify_rows": (recipe.data.identify_rows, 1),
        "data.evaluate_rows": (recipe.data.evaluate_rows, 2),
        "evaluate.n_qa": (recipe.evaluate.n_qa, 0),
        "evaluate.n_gen": (recipe.evaluate.n_gen, 0),
    }
    counts.update({f"edits[{i}].top_k": (e.top_k, 1) for i, e in enumerate(recipe.edits)})
    for key, (value, least) in counts.items():
        if value is not None and value < least:
            raise RecipeError(f"{where}: {key} must be at least {least}, got {value}")


def _check(recipe: Recipe, where: str) -> Recipe:
    if not recipe.model.name:
        raise RecipeError(f"{where}: key 'model.name' is required (a Hub id or a local directory)")
    if not recipe.languages:
        raise RecipeError(f"{where}: key 'languages' must list at least one target language, e.g. [ja]")
    if recipe.identify.method not in ("transfer", "lape"):
        raise RecipeError(f"{where}: identify.method must be 'transfer' or 'lape', got {recipe.identify.method!r}")
    if str(recipe.identify.type) not in ("1", "2", "both"):
        raise RecipeError(f"{where}: identify.type must be 1, 2 or both, got {recipe.identify.type!r}")
    _check_counts(recipe, where)
    _plain_name(recipe.name, Path("runs"), f"{where}: name")
    ref_langs, ref_kinds = _identify_outputs(recipe)
    names = set()
    for i, edit in enumerate(recipe.edits):
        at = f"{where}: edits[{i}]"
        if not edit.name or not edit.neurons:
            raise RecipeError(f"{at}: keys 'name' and 'neurons' are required")
        _plain_name(edit.name, Path(recipe.output) / "edits", f"{at}.name")
        if edit.name in names:
            raise RecipeError(f"{at}: duplicate edit name '{edit.name}'")
        names.add(edit.name)
        if edit.op not in ("zero", "scale"):
            raise RecipeError(f"{at}.op must be zero or scale, got {edit.op!r}")
        if edit.op == "scale" and edit.factor is None:
            raise RecipeError(f"{at}: op scale needs a factor")
        ref = identify_ref(edit.neurons)
        if ref and (ref[0] not in ref_langs or ref[1] not in ref_kinds):
            raise RecipeError(
                f"{at}.neurons: '{edit.neurons}' names no neuron set the identify step writes (it writes "
                f"LANG:TYPE for LANG in {ref_langs} and TYPE in {sorted(ref_kinds)})"
            )
    unknown = sorted(set(recipe.evaluate.metrics) - set(EVALUATE_METRICS))
    if unknown:
        raise RecipeError(f"{where}: evaluate.metrics: unknown {unknown}; valid: {list(EVALUATE_METRICS)}")
    if recipe.evaluate.positions not in ("all", "last", "prompt"):
        raise RecipeError(f"{where}: evaluate.positions must be all, last or prompt")
    if recipe.evaluate.control not in (None, "random", "none"):
        raise RecipeError(f"{where}: evaluate.control must be random or none, got {recipe.evaluate.control!r}")
    if recipe.push.edit and recipe.push.edit not in names:
        raise RecipeError(f"{where}: push.edit '{recipe.push.edit}' names no edit; edits: {sorted(names)}")
    return recipe


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


def _apply_override(raw: dict[str, Any], path: list[str], value: Any, where: str) -> None:
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


def _read_raw(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise RecipeError(f"{p}: recipe file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not UTF-8 text; expected a YAML recipe") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{p}: not valid YAML{at}") from None
    if raw is None:
        raise RecipeError(f"{p}: the recipe is empty; expected a mapping with at least model.name and languages")
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: expected a mapping of keys at the top level, got a YAML {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override (``--set``), expand ``${VAR}``, validate and resolve the paths of a recipe.

    Nothing is written. Refused here, among malformed values and misspelt keys: an edit or run
    name that is not one plain directory name, and an output that is, contains or lies inside
    the model directory or holds a data or neurons file.
    """
    p = Path(path)
    raw = _read_raw(p)
    overridden = []
    for text in overrides:
        key_path, value = parse_override(text)
        _apply_override(raw, key_path, value, str(p))
        overridden.append(tuple(key_path))
    try:
        recipe = _build(Recipe, expand_environment(raw), "")
    except RecipeError as exc:
        raise RecipeError(f"{p}: {exc}") from None
    if not recipe.name:
        recipe.name = p.stem
    own_output = bool(recipe.output)
    if not own_output:
        recipe.output = str(Path("runs") / recipe.name)
    _check(recipe, str(p))
    resolve_paths(recipe, p.absolute().parent, overridden, own_output)
    check_output_location(recipe, str(p))
    return recipe


# --- paths ---------------------------------------------------------------------------------------


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


def _is_data_path(source: str) -> bool:
    return source != BUILTIN and not source.startswith("hf:")


def resolve_paths(recipe: Recipe, recipe_dir: Path, overridden: list[tuple[str, ...]] = (),
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
        if value is not None and _is_data_path(value):
            setattr(recipe.data, key, _local_path(value, base("data", key)))
    for i, edit in enumerate(recipe.edits):
        where = base("edits", str(i), "neurons")
        if identify_ref(edit.neurons) is None or (where / edit.neurons).is_file():
            edit.neurons = _local_path(edit.neurons, where)
    if own_output or ("output",) in overridden:
        recipe.output = _local_path(recipe.output, base("output"))
    return recipe


def _edit_languages(recipe: Recipe, edit: EditStep) -> list[str]:
    """The languages an edit is evaluated on: its identify reference's, else every recipe language."""
    ref = identify_ref(edit.neurons)
    return [ref[0]] if ref and ref[0] in recipe.languages else list(recipe.languages)


def _data_files(recipe: Recipe) -> list[tuple[str, str]]:
    """(key, file) for every local data file a run reads: one per language where the source has {lang}."""
    r = recipe
    per_language = r.identify.method != "lape" and "{lang}" in r.data.source
    wanted = [("data.source", r.data.source, list(r.languages) if per_language else r.languages[:1])]
    if r.evaluate.enabled and r.edits:
        key = "data.source" if r.data.evaluate_source is None else "data.evaluate_source"
        source = r.data.source if r.data.evaluate_source is None else r.data.evaluate_source
        wanted.append((key, source, sorted({_edit_languages(r, e)[0] for e in r.edits})))
    files: dict[str, str] = {}
    for key, source, langs in wanted:
        if _is_data_path(source):
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


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)


# --- running -------------------------------------------------------------------------------------


def _layer_spec(layers: Any) -> str | list[int] | None:
    """A recipe's ``layers`` as parse_layers takes it: a list stays a list, a YAML number becomes text."""
    return layers if layers is None or isinstance(layers, list) else str(layers)


def settings_hash(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stamp_matches(stamp: Path, directory: Path, digest: str) -> bool:
    if not stamp.is_file() or not directory.exists():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("settings_hash") == digest
    except json.JSONDecodeError:
        return False


def _write_stamp(stamp: Path, digest: str, step: str, seconds: float) -> None:
    write_json(stamp, {"step": step, "settings_hash": digest, "seconds": round(seconds, 2)})


@dataclass
class StepResult:
    step: str
    name: str
    path: str
    skipped: bool
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    recipe: Recipe
    steps: list[StepResult]
    headline: list[dict[str, Any]] = field(default_factory=list)
    report_paths: list[str] = field(default_factory=list)


class RecipeRunner:
    """Runs identify → apply (each edit) → evaluate (each edit) → push, skipping unchanged steps."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        force: bool = False,
        quiet: bool = False,
        log: Callable[[str], None] = print,
        warn: Callable[[str], None] = print,
    ):
        self.recipe = recipe
        self.force = force
        self.quiet = quiet
        self.log = log
        self.warn = warn
        self.out = Path(recipe.output)
        self.steps: list[StepResult] = []

    # Hashes chain: a step's hash covers everything upstream of it.
    def _identify_hash(self) -> str:
        r = self.recipe
        return settings_hash("identify", r.model, r.languages, r.data.source, r.data.identify_rows, r.identify)

    def _edit_hash(self, edit: EditStep) -> str:
        return settings_hash("apply", self._identify_hash(), edit)

    def _evaluate_hash(self, edit: EditStep) -> str:
        r = self.recipe
        return settings_hash("evaluate", self._edit_hash(edit), r.data, r.evaluate)

    def _step(
        self, step: str, name: str, directory: Path, digest: str, work: Callable[[], dict[str, Any]]
    ) -> StepResult:
        # Stamps live beside the outputs, not in them: an edited checkpoint must stay a clean model dir.
        stamp = self.out / STAMPS / f"{step}-{name}.json"
        if not self.force and _stamp_matches(stamp, directory, digest):
            self.log(f"[{step}] {name}: up to date, skipped ({directory})")
            result = StepResult(step, name, str(directory), True, 0.0)
        else:
            self.log(f"[{step}] {name} ...")
            start = time.perf_counter()
            summary = work()
            seconds = time.perf_counter() - start
            _write_stamp(stamp, digest, step, seconds)
            self.log(f"[{step}] {name}: done in {seconds:.1f}s ({directory})")
            result = StepResult(step, name, str(directory), False, seconds, summary)
        self.steps.append(result)
        return result

    def run(self) -> RunResult:
        check_inputs(self.recipe, self.recipe.name)
        check_output_location(self.recipe, self.recipe.name)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "recipe.json", recipe_to_dict(self.recipe))
        identify_dir = self.out / "identify"
        self._step("identify", self.recipe.identify.method, identify_dir, self._identify_hash(), self._identify)
        result = RunResult(self.recipe, self.steps)
        for edit in self.recipe.edits:
            edit_dir = self.out / "edits" / edit.name
            self._step(
                "apply", edit.name, edit_dir, self._edit_hash(edit), lambda e=edit, d=edit_dir: self._apply(e, d)
            )
            if self.recipe.evaluate.enabled:
                report_dir = self.out / "reports" / edit.name
                self._step(
                    "evaluate",
                    edit.name,
                    report_dir,
                    self._evaluate_hash(edit),
                    lambda e=edit, d=edit_dir, o=report_dir: self._evaluate(e, d, o),
                )
                result.report_paths.append(str(report_dir / "report.md"))
                result.headline += self._headline(edit.name, report_dir)
        if self.recipe.push.repo:
            self._push()
        return result

    # --- steps ---

    def _pass_settings(self, langs: list[str], data_lang: str) -> dict[str, Any]:
        """The settings identify and LAPE share (tnedit.identify.PassSettings)."""
        r = self.recipe
        return dict(
            model=r.model.name,
            langs=langs,
            data=r.data.resolve(r.data.source, data_lang),
            layers=r.identify.layers,
            limit=r.data.identify_rows,
            batch_size=r.identify.batch_size,
            dtype=r.model.dtype,
            device=r.model.device,
            revision=r.model.revision,
            quiet=self.quiet,
        )

    def _identify(self) -> dict[str, Any]:
        # Every neuron set of the step appears at once: a step cut short leaves the previous ones.
        with atomic_directory(self.out / "identify", overwrite=True) as directory:
            return self._identify_into(directory)

    def _identify_into(self, directory: Path) -> dict[str, Any]:
        r = self.recipe
        if r.identify.method == "lape":
            from tnedit.lape import LapeSettings, identify_lape

            langs = r.identify.lape_languages or ["en", *r.languages]
            sets = identify_lape(LapeSettings(**self._pass_settings(langs, r.languages[0])))
            for lang, ns in sets.items():
                ns.save(directory / f"neurons-{lang}-lape.json")
            return {"sets": {lang: len(ns) for lang, ns in sets.items()}}
        from tnedit.identify import IdentifySettings, identify

        per_language = "{lang}" in r.data.source
        groups = [[lang] for lang in r.languages] if per_language else [list(r.languages)]
        summaries = []
        for langs in groups:
            settings = IdentifySettings(
                **self._pass_settings(langs, langs[0]),
                type=r.identify.type,
                k=r.identify.k,
                output=directory,
                warn=self.warn,
            )
            summaries.append(identify(settings).summary())
        return {"runs": summaries}

    def _neuron_file(self, edit: EditStep) -> Path:
        ref = identify_ref(edit.neurons)
        if ref is None:
            return Path(edit.neurons)
        lang, kind = ref
        name = f"neurons-{lang}-lape.json" if kind == "lape" else f"neurons-{lang}-type{kind}.json"
        path = self.out / "identify" / name
        if not path.is_file():
            raise RecipeError(f"edit '{edit.name}': the identify step wrote no {path} for neurons '{edit.neurons}'")
        return path

    def _apply(self, edit: EditStep, directory: Path) -> dict[str, Any]:
        from tnedit.edit import apply_to_checkpoint, make_edit_spec
        from tnedit.formats.neurons import load_neurons, parse_layers

        source = self._neuron_file(edit)
        ns = load_neurons(source)
        layers = parse_layers(_layer_spec(edit.layers), ns.model.num_layers if ns.model else None)
        spec = make_edit_spec(ns, edit.op, edit.factor, top_k=edit.top_k, layers=layers)
        result = apply_to_checkpoint(
            self.recipe.model.name,
            spec,
            directory,
            neuron_set=ns,
            neuron_source=str(source),
            revision=self.recipe.model.revision,
            overwrite=True,
            command=f"tnedit run ({self.recipe.name})",
            progress=not self.quiet,
            warn=self.warn,
        )
        return {"n_neurons": len(spec.neurons), "per_layer": spec.per_layer_counts(), "out": str(result.out)}

    def _evaluate(self, edit: EditStep, edit_dir: Path, report_dir: Path) -> dict[str, Any]:
        from tnedit.evaluate import EvaluateSettings, evaluate, update_card, write_report

        r, ev = self.recipe, self.recipe.evaluate
        langs = _edit_languages(r, edit)
        held_out = r.data.evaluate_source is None
        source = r.data.source if held_out else str(r.data.evaluate_source)
        metrics = set(ev.metrics)
        settings = EvaluateSettings(
            original=r.model.name,
            languages=langs,
            # A baked checkpoint edits every position; the paper's last/prompt positions need the hook.
            **self._edit_under_test(edit, edit_dir),
            control=ev.control,
            seed=ev.seed,
            data=r.data.resolve(source, langs[0]),
            skip=(r.data.identify_rows or 0) if held_out else 0,
            n_pairs=r.data.evaluate_rows,
            n_qa=ev.n_qa if "qa" in metrics else 0,
            n_gen=ev.n_gen if "generation" in metrics else 0,
            **({} if "generation" in metrics else {"n_langid": 0}),
            dtype=r.model.dtype,
            device=r.model.device,
            revision=r.model.revision,
        )
        report = evaluate(settings, warn=self.warn, progress=None if self.quiet else self.log)
        write_report(report, report_dir, overwrite=True)
        update_card(report, edit_dir)
        return {"headline": report.data.get("headline")}

    def _edit_under_test(self, edit: EditStep, edit_dir: Path) -> dict[str, Any]:
        positions = self.recipe.evaluate.positions
        if positions == "all":
            return {"edited": str(edit_dir)}
        return {
            "neurons": str(self._neuron_file(edit)),
            "op": edit.op,
            "factor": edit.factor,
            "top_k": edit.top_k,
            "layers": _layer_spec(edit.layers),
            "positions": positions,
        }

    def _headline(self, name: str, report_dir: Path) -> list[dict[str, Any]]:
        path = report_dir / "report.json"
        if not path.is_file():
            return []
        rows = json.loads(path.read_text(encoding="utf-8")).get("headline") or []
        return [{"edit": name, **row} for row in rows]

    def _push(self) -> None:
        from tnedit.hub import PushSettings, push_checkpoint

        push = self.recipe.push
        name = push.edit or self.recipe.edits[0].name
        directory = self.out / "edits" / name
        start = time.perf_counter()
        result = push_checkpoint(
            PushSettings(dir=str(directory), repo=str(push.repo), private=push.private), progress=not self.quiet
        )
        self.steps.append(
            StepResult(
                "push", name, str(push.repo), False, time.perf_counter() - start, {"url": getattr(result, "url", None)}
            )
        )
