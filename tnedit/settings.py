"""Typed settings: one dataclass per verb is the single source of every default, choice and help text.

A field is declared once with :func:`setting` (PEFT's ``field(metadata={"help": ...})``). From the same fields
``tnedit.cli.options`` generates the click options (mergekit's ``add_merge_options``) and :func:`build_settings`
checks a recipe's mapping (its key names, types and ``Literal`` choices). Torch-free.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Literal

from tnedit.errors import InputError

SETTING_KEY = "tnedit"


@dataclass(frozen=True)
class SettingInfo:
    """What :func:`setting` records about one field, besides its type and default."""

    help: str = ""
    flags: tuple[str, ...] = ()  # CLI spellings; () means --field-name
    cli: bool = True  # generate a click option
    recipe: bool = True  # a recipe step may set it
    metavar: str | None = None
    show_default: bool = False
    click_type: Any = None  # a click ParamType or callable overriding the one derived from the annotation
    multiple: bool = False  # repeatable option, collected into a tuple
    required: bool = False  # the CLI option must be given (click's own "Missing option" error)


def setting(
    default: Any = MISSING,
    *,
    help: str = "",
    flags: Sequence[str] = (),
    default_factory: Callable[[], Any] | Any = MISSING,
    cli: bool = True,
    recipe: bool = True,
    metavar: str | None = None,
    show_default: bool = False,
    click_type: Any = None,
    multiple: bool = False,
    required: bool = False,
) -> Any:
    """A dataclass field with its help text and how the CLI and recipes spell it."""
    info = SettingInfo(help, tuple(flags), cli, recipe, metavar, show_default, click_type, multiple, required)
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={SETTING_KEY: info})
    return dataclasses.field(default=default, metadata={SETTING_KEY: info})


@dataclass(frozen=True)
class SettingField:
    """One settings field resolved: name, type, default and :class:`SettingInfo`."""

    name: str
    type: Any
    default: Any
    info: SettingInfo

    @property
    def flags(self) -> tuple[str, ...]:
        return self.info.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return literal_choices(self.type)

    @property
    def required(self) -> bool:
        return self.default is MISSING


def setting_fields(cls: type) -> list[SettingField]:
    """The fields of a settings dataclass in declaration order (those without :func:`setting` get empty info)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = MISSING
        out.append(SettingField(f.name, hints[f.name], default, f.metadata.get(SETTING_KEY, SettingInfo())))
    return out


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The values of ``Literal[...]`` (also inside ``X | None``), else None."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            found = literal_choices(option)
            if found is not None:
                return found
    return None


def describe_choices(choices: Sequence[Any]) -> str:
    """``1, 2 or both``."""
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_choice(value: Any, choices: Sequence[Any], where: str, error: type[InputError] = InputError) -> Any:
    """``value`` when it is one of ``choices`` (``"1"`` matches ``1``), else a one-line error naming ``where``."""
    for choice in choices:  # True is no 1 and 1.0 no 1 (a recipe's YAML): equal values of the same type only
        if (type(value) is type(choice) and value == choice) or (
            not isinstance(value, bool) and str(value) == str(choice)
        ):
            return choice
    raise error(f"{where} must be {describe_choices(choices)}, got {value!r}")


# --- building settings from a mapping (recipes) ---------------------------------------------------


def suggest_key(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce_union(value: Any, tp: Any, where: str, error: type[InputError]) -> Any:
    options = typing.get_args(tp)
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return coerce(value, option, where, error)
        except error as exc:
            errors.append(str(exc))
    raise error(errors[0] if errors else f"{where}: unexpected value {value!r}")


def coerce(value: Any, tp: Any, where: str, error: type[InputError] = InputError) -> Any:
    """``value`` checked against the annotation ``tp``; nested dataclasses are built with :func:`build_settings`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if all(isinstance(choice, str) for choice in choices):  # a YAML number names a text choice
            value = coerce(value, str, where, error)
        return check_choice(value, choices, where, error)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where, error)
    if dataclasses.is_dataclass(tp):
        return build_settings(tp, value, where, error)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list):
            raise error(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return [coerce(v, item_tp, f"{where}[{i}]", error) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(tp, type):
        return value
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise error(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def recipe_keys(cls: type) -> list[str]:
    """The keys a recipe may give for ``cls``: its fields not marked ``recipe=False``."""
    return [f.name for f in setting_fields(cls) if f.info.recipe]


def build_settings(cls: type, raw: Any, where: str, error: type[InputError] = InputError) -> Any:
    """An instance of the settings dataclass ``cls`` from a mapping; unknown keys are refused with a suggestion."""
    if not isinstance(raw, Mapping):
        raise error(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    by_name = {f.name: f for f in setting_fields(cls) if f.info.recipe}
    kwargs = {}
    for key, value in raw.items():
        if key not in by_name:
            at = f"{where}: " if where else ""
            raise error(f"{at}unknown key '{key}'{suggest_key(str(key), list(by_name))}")
        kwargs[key] = coerce(value, by_name[key].type, f"{where}.{key}" if where else key, error)
    return cls(**kwargs)


def settings_to_dict(settings: Any) -> dict[str, Any]:
    """Field name → value, nested settings as dicts (``dataclasses.asdict`` without deep-copying the leaves)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = settings_to_dict(value) if dataclasses.is_dataclass(value) else value
    return out
