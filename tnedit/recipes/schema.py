"""The recipe tree: what one YAML file may say, checked once when it loads.

A recipe is a :class:`Recipe` of sections. ``model``, ``data`` and ``languages`` are recipe concepts; the
``identify``, ``edits``, ``evaluate`` and ``push`` steps nest the verbs' settings classes, adding only what
a recipe needs besides (an edit's ``name``, whether to evaluate, which metrics). A key a recipe may give
is a settings field not marked ``recipe=False`` and not hidden by :func:`not_in_recipe`: the runner
fills those (the model, the data, the languages, the outputs) from the other sections. :func:`build_recipe`
reuses :func:`tnedit.settings.build_settings` for key names, types and ``Literal`` choices;
:func:`check_recipe` adds the checks across sections. Torch-free.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, TypeVar

from tnedit.edit.settings import ApplySettings
from tnedit.errors import InputError, RecipeError
from tnedit.evaluate.settings import Control, EvaluateSettings
from tnedit.formats.outputs import contained_name
from tnedit.hub import PushSettings
from tnedit.identify.settings import IdentifySettings, PassSettings
from tnedit.settings import (
    SETTING_KEY,
    SettingInfo,
    build_settings,
    recipe_keys,
    setting,
    setting_fields,
    settings_to_dict,
)
from tnedit.tune.settings import TuneSettings

BUILTIN = "builtin"
EVALUATE_METRICS = ("representations", "perplexity", "generation", "qa")

Step = TypeVar("Step")


def recipe_default(cls: type, name: str, default: Any = dataclasses.MISSING) -> Any:
    """The field ``name`` of the settings class ``cls`` (its help and spelling), with the default a recipe has.

    Without ``default`` the field keeps the settings' own default: the recipe declares nothing again.
    """
    inherited = cls.__dataclass_fields__[name]
    if default is dataclasses.MISSING:
        default = inherited.default
    return dataclasses.field(default=default, metadata=inherited.metadata)


@dataclass
class ModelSettings:
    """The model every step reads; ``revision``, ``dtype`` and ``device`` are the identify settings' fields."""

    name: str = setting("", help="A Hub id or a local model directory.")
    revision: str | None = recipe_default(PassSettings, "revision")
    dtype: str = recipe_default(PassSettings, "dtype")
    device: str = recipe_default(PassSettings, "device")


@dataclass
class DataSettings:
    """Parallel sentences: ``builtin`` (the packaged corpus), a TSV/JSONL path or ``hf:NAME``.

    ``{lang}`` in a source is replaced by each target language (one file per language pair).
    identify reads the first ``identify_rows`` rows. evaluate reads ``evaluate_rows`` rows of
    ``evaluate_source``, or of ``source`` after the identify rows when it is not set.
    """

    source: str = BUILTIN
    identify_rows: int | None = None
    evaluate_source: str | None = None
    evaluate_rows: int = 200

    def resolve(self, source: str, lang: str) -> str | None:
        """The data argument for one language: None means the built-in corpus."""
        return None if source == BUILTIN else source.replace("{lang}", lang)


def not_in_recipe(*names: str) -> Callable[[type[Step]], type[Step]]:
    """Class decorator: these inherited settings fields are no keys of this recipe step.

    The runner fills them from the recipe's other sections (the model, the data, the languages, the
    edit under test), or they mean nothing in a recipe (identify's resume and control modes). Only the
    step's own copies of the fields change; the verb's settings class keeps its own.
    """

    def decorate(cls: type[Step]) -> type[Step]:
        own = cls.__dataclass_fields__  # type: ignore[attr-defined]
        for name in names:
            inherited = own[name]
            info = inherited.metadata.get(SETTING_KEY, SettingInfo())
            field_copy = copy.copy(inherited)
            field_copy.metadata = MappingProxyType({**inherited.metadata,
                                                    SETTING_KEY: dataclasses.replace(info, recipe=False)})
            own[name] = field_copy
        return cls

    return decorate


@not_in_recipe("langs", "data", "limit", "dtype", "device", "revision", "seed", "checkpoint_every")
@dataclass
class IdentifyStep(IdentifySettings):
    """The identify step: :class:`IdentifySettings` (``method``, ``type``, ``k``, ``layers``, ``batch_size`` ...).

    The model, the languages and the data come from the recipe's ``model``, ``languages`` and ``data``.
    ``lape_languages``: the languages LAPE measures (default: en and the recipe's languages).
    """

    lape_languages: list[str] = setting(default_factory=list,
                                        help="LAPE's languages; default: en and the recipe's languages.")
    enabled: bool = setting(True, help="Run identify (a recipe that only tunes may skip it).")


@not_in_recipe("model", "lang", "data", "limit", "dtype", "device", "revision", "output", "resume")
@dataclass
class TuneStep(TuneSettings):
    """The tune step: :class:`TuneSettings` (``keep``, ``max_neurons``, ``max_ppl_increase`` ...), once per language.

    It reads the recipe's data (the first ``data.identify_rows`` rows, so evaluate's held-out rows stay
    unseen) plus ``keep_data`` for kept languages the data lacks, and writes ``OUTPUT/tune/``; an edit
    names its set ``LANG:selective``.
    """

    enabled: bool = setting(False, help="Run tune for every recipe language.")
    keep_data: list[str] = setting(default_factory=list,
                                   help="More data files (paths relative to the recipe) for kept languages.")


@dataclass
class EditStep(ApplySettings):
    """One edited checkpoint, written to ``OUTPUT/edits/NAME`` (``name`` is one plain directory name).

    ``neurons`` is ``LANG:TYPE`` (TYPE 1, 2 or lape: an identify output) or a neurons file path.
    ``layers`` applies before ``top_k``: the edit keeps the first ``top_k`` neurons within ``layers``.
    """

    name: str = setting("", help="The edited checkpoint's directory under OUTPUT/edits.")


@not_in_recipe("languages", "op", "factor", "top_k", "layers", "data", "skip", "n_pairs", "qa", "dtype", "device",
               "force", "english")
@dataclass
class EvaluateStep(EvaluateSettings):
    """The evaluation of every edit: :class:`EvaluateSettings` (``positions``, ``control``, ``seed``, ``n_qa`` ...).

    The edit under test, the data rows and the model come from the edit and the recipe's other sections.
    A recipe evaluates with a random control unless told otherwise.
    """

    control: Control | None = recipe_default(EvaluateSettings, "control", "random")
    enabled: bool = setting(True, help="Evaluate every edit after applying it.")
    metrics: list[str] = setting(default_factory=lambda: list(EVALUATE_METRICS),
                                 help="Which of representations, perplexity, generation and qa to measure.")


@dataclass
class PushStep(PushSettings):
    """Upload one edited checkpoint: :class:`PushSettings` (``repo``, ``private``, ``revision`` ...).

    No ``repo``, no push. A recipe creates the repo private unless told otherwise.
    """

    repo: str | None = setting(None, help="The Hub repo to upload the edit to (owner/name); none: no push.")
    private: bool = recipe_default(PushSettings, "private", True)
    edit: str | None = setting(None, help="Which edit to push; default: the first.")


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    model: ModelSettings = field(default_factory=ModelSettings)
    languages: list[str] = field(default_factory=list)
    data: DataSettings = field(default_factory=DataSettings)
    identify: IdentifyStep = field(default_factory=IdentifyStep)
    tune: TuneStep = field(default_factory=TuneStep)
    edits: list[EditStep] = field(default_factory=list)
    evaluate: EvaluateStep = field(default_factory=EvaluateStep)
    output: str = ""
    push: PushStep = field(default_factory=PushStep)


#: The steps nested in a recipe, by section name.
STEPS: dict[str, type] = {"identify": IdentifyStep, "tune": TuneStep, "edits": EditStep, "evaluate": EvaluateStep,
                          "push": PushStep}

# Choices whose recipe message predates the settings classes (quotes, no "got"): checked before the build.
_CHOICE_MESSAGES = {
    ("identify", "method"): "identify.method must be 'transfer' or 'lape', got {value!r}",
    ("evaluate", "positions"): "evaluate.positions must be all, last or prompt",
}


# --- building -------------------------------------------------------------------------------------


def _check_choice_messages(raw: Mapping[str, Any]) -> None:
    for (section, key), message in _CHOICE_MESSAGES.items():
        values = raw.get(section)
        if not isinstance(values, Mapping) or key not in values:
            continue
        value = values[key]
        if value is None:
            raise RecipeError(f"{section}.{key}: expected str, got None")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            continue  # not a scalar: the type check of the build says so
        (choices,) = [f.choices for f in setting_fields(STEPS[section]) if f.name == key]
        if str(value) not in [str(choice) for choice in choices]:
            raise RecipeError(message.format(value=str(value)))


def _check_edit_values(raw: Mapping[str, Any]) -> None:
    """What ApplySettings takes from the CLI but a recipe never did: no neurons (None), a factor as text."""
    edits = raw.get("edits")
    for i, edit in enumerate(edits if isinstance(edits, list) else []):
        if not isinstance(edit, Mapping):
            continue
        if "neurons" in edit and edit["neurons"] is None:
            raise RecipeError(f"edits[{i}].neurons: expected str, got None")
        if isinstance(edit.get("factor"), str):
            raise RecipeError(f"edits[{i}].factor: expected float, got {edit['factor']!r}")


def build_recipe(raw: Any) -> Recipe:
    """The :class:`Recipe` of a parsed YAML mapping; unknown keys, wrong types and bad choices are refused."""
    if isinstance(raw, Mapping):
        _check_choice_messages(raw)
        _check_edit_values(raw)
    return build_settings(Recipe, raw, "", RecipeError)


# --- checks across sections ---------------------------------------------------------------------------


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


def identify_ref(neurons: str) -> tuple[str, str] | None:
    """(LANG, TYPE) when ``neurons`` has the form of an identify output reference, else None.

    After path resolution a neurons file is an absolute path, which never has this form.
    """
    match = _IDENTIFY_REF.fullmatch(neurons)
    return (match["lang"], match["kind"]) if match else None


def lape_languages(recipe: Recipe) -> list[str]:
    """The languages a LAPE identify step measures: ``identify.lape_languages``, else English and the targets."""
    return list(recipe.identify.lape_languages) or ["en", *recipe.languages]


SELECTIVE = "selective"  # an edit's LANG:selective names the tune step's set for LANG


def _identify_outputs(recipe: Recipe) -> tuple[list[str], set[str]]:
    """The languages and TYPEs of the neuron sets the identify and tune steps write."""
    tuned = {SELECTIVE} if recipe.tune.enabled else set()
    if not recipe.identify.enabled:
        return list(recipe.languages), tuned
    if recipe.identify.method == "lape":
        return lape_languages(recipe), {"lape"}
    kind = str(recipe.identify.type)
    return list(recipe.languages), ({"1", "2"} if kind == "both" else {kind}) | tuned


def edit_languages(recipe: Recipe, edit: EditStep) -> list[str]:
    """The languages an edit is evaluated on: its identify reference's, else every recipe language."""
    ref = identify_ref(edit.neurons)
    return [ref[0]] if ref and ref[0] in recipe.languages else list(recipe.languages)


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


def _check_edits(recipe: Recipe, where: str) -> set[str]:
    """Each edit's name and neurons; the names."""
    ref_langs, ref_kinds = _identify_outputs(recipe)
    names: set[str] = set()
    for i, edit in enumerate(recipe.edits):
        at = f"{where}: edits[{i}]"
        if not edit.name or not edit.neurons:
            raise RecipeError(f"{at}: keys 'name' and 'neurons' are required")
        _plain_name(edit.name, Path(recipe.output) / "edits", f"{at}.name")
        if edit.name in names:
            raise RecipeError(f"{at}: duplicate edit name '{edit.name}'")
        names.add(edit.name)
        if edit.op == "scale" and edit.factor is None:
            raise RecipeError(f"{at}: op scale needs a factor")
        ref = identify_ref(edit.neurons)
        if ref and (ref[0] not in ref_langs or ref[1] not in ref_kinds):
            raise RecipeError(
                f"{at}.neurons: '{edit.neurons}' names no neuron set the identify step writes (it writes "
                f"LANG:TYPE for LANG in {ref_langs} and TYPE in {sorted(ref_kinds)})"
            )
    return names


def check_recipe(recipe: Recipe, where: str) -> Recipe:
    """What no single section can check: required keys, counts, names, and references between sections."""
    if not recipe.model.name:
        raise RecipeError(f"{where}: key 'model.name' is required (a Hub id or a local directory)")
    if not recipe.languages:
        raise RecipeError(f"{where}: key 'languages' must list at least one target language, e.g. [ja]")
    _check_counts(recipe, where)
    _plain_name(recipe.name, Path("runs"), f"{where}: name")
    names = _check_edits(recipe, where)
    unknown = sorted(set(recipe.evaluate.metrics) - set(EVALUATE_METRICS))
    if unknown:
        raise RecipeError(f"{where}: evaluate.metrics: unknown {unknown}; valid: {list(EVALUATE_METRICS)}")
    if recipe.tune.enabled:
        _check_tune(recipe, where)
    if recipe.push.edit and recipe.push.edit not in names:
        raise RecipeError(f"{where}: push.edit '{recipe.push.edit}' names no edit; edits: {sorted(names)}")
    return recipe


def _check_tune(recipe: Recipe, where: str) -> None:
    """The tune step's own checks (those that need no model), as recipe errors."""
    fields = {f.name: getattr(recipe.tune, f.name) for f in dataclasses.fields(TuneSettings)}
    settings = TuneSettings(**{**fields, "model": recipe.model.name, "lang": recipe.languages[0],
                               "output": str(Path(recipe.output) / "tune")})
    for lang in recipe.languages:
        try:
            dataclasses.replace(settings, lang=lang).check()
        except InputError as exc:
            raise RecipeError(f"{where}: tune: {exc}") from None


# --- as data ----------------------------------------------------------------------------------------


def step_to_dict(step: Any) -> dict[str, Any]:
    """The keys a recipe may give for this step, with their values."""
    return {key: getattr(step, key) for key in recipe_keys(type(step))}


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as ``recipe.json`` and ``--dry-run`` show it: every section, each step by its recipe keys."""
    out = settings_to_dict(recipe)
    for section in ("identify", "tune", "evaluate", "push"):
        out[section] = step_to_dict(getattr(recipe, section))
    out["edits"] = [step_to_dict(edit) for edit in recipe.edits]
    return out
