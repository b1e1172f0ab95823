"""Typed settings are the single source of every option: the machinery, and every verb against its settings."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Literal

import click
import pytest
from click.testing import CliRunner

from tnedit.cli import VERBS
from tnedit.cli.options import cli_fields, settings_from_options, settings_options
from tnedit.errors import InputError, RecipeError
from tnedit.settings import build_settings, check_choice, literal_choices, setting, setting_fields


@dataclass
class Inner:
    rate: float = setting(0.5, help="A rate.")


@dataclass
class Sample:
    model: str = setting("", help="Model.", cli=False, recipe=False)
    type: Literal[1, 2, "both"] = setting(1, help="Neuron type.", show_default=True)
    k: int = setting(1000, flags=("-k", "--k"), help="Neurons to keep.")
    layers: str | None = setting(None, help="Candidate layers.")
    resume: bool = setting(False, help="Continue.")
    lang: list[str] = setting(default_factory=list, multiple=True, help="Languages.")
    inner: Inner = setting(default_factory=Inner, cli=False, help="Nested.")


@click.command()
@click.argument("model")
@settings_options(Sample)
def sample_command(model: str, **params: object) -> None:
    click.echo(repr(settings_from_options(Sample, params, model=model)))


def test_options_round_trip_to_the_settings():
    result = CliRunner().invoke(sample_command, ["m", "--type", "both", "-k", "5", "--lang", "ja", "--lang", "ko",
                                                 "--resume"])
    assert result.exit_code == 0, result.output
    expected = Sample(model="m", type="both", k=5, resume=True, lang=["ja", "ko"])
    assert result.output.strip() == repr(expected)


def test_a_choice_comes_back_as_its_literal_value_and_defaults_are_the_fields():
    result = CliRunner().invoke(sample_command, ["m", "--type", "2"])
    assert result.output.strip() == repr(Sample(model="m", type=2))
    result = CliRunner().invoke(sample_command, ["m"])
    assert result.output.strip() == repr(Sample(model="m"))


def test_a_bad_choice_is_click_s_usage_error_listing_the_literal_values():
    result = CliRunner().invoke(sample_command, ["m", "--type", "3"])
    assert result.exit_code == 2
    assert "'3' is not one of '1', '2', 'both'" in result.output


def test_help_shows_the_field_help_and_only_cli_fields():
    text = CliRunner().invoke(sample_command, ["--help"]).output
    assert "Neurons to keep." in text and "[default: 1]" in text and "-k, --k" in text
    assert "--model" not in text and "--inner" not in text
    assert [f.name for f in cli_fields(Sample)] == ["type", "k", "layers", "resume", "lang"]


def test_literal_choices_and_check_choice():
    assert literal_choices(Literal["a", "b"] | None) == ("a", "b")
    assert literal_choices(int) is None
    assert check_choice("1", (1, 2, "both"), "--type") == 1
    with pytest.raises(InputError, match=r"--type must be 1, 2 or both, got 3"):
        check_choice(3, (1, 2, "both"), "--type")


def test_build_settings_checks_keys_types_and_nesting():
    built = build_settings(Sample, {"type": "both", "k": 7, "inner": {"rate": 1}, "lang": ["ja"]}, "identify",
                           RecipeError)
    assert built == Sample(type="both", k=7, inner=Inner(rate=1.0), lang=["ja"])
    with pytest.raises(RecipeError, match=r"identify: unknown key 'kk'; did you mean 'k'\?"):
        build_settings(Sample, {"kk": 1}, "identify", RecipeError)
    with pytest.raises(RecipeError, match=r"identify: unknown key 'model'"):  # recipe=False
        build_settings(Sample, {"model": "x"}, "identify", RecipeError)
    with pytest.raises(RecipeError, match=r"identify.k: expected int, got 'many'"):
        build_settings(Sample, {"k": "many"}, "identify", RecipeError)
    with pytest.raises(RecipeError, match=r"identify.inner.rate: expected float"):
        build_settings(Sample, {"inner": {"rate": "fast"}}, "identify", RecipeError)


# --- every verb: its options are its settings' fields ------------------------------------------------


def _verb_commands() -> list[tuple[str, click.Command]]:
    commands = []
    for verb, target in VERBS.items():
        module, attribute = target.split(":")
        commands.append((verb, getattr(importlib.import_module(f"tnedit.cli.{module}"), attribute)))
    return commands


SETTINGS_VERBS = ["identify", "select", "apply", "evaluate", "push"]


@pytest.mark.parametrize("verb", SETTINGS_VERBS)
def test_each_option_s_default_and_help_are_the_settings_field_s(verb):
    command = dict(_verb_commands())[verb]
    classes = getattr(command.callback, "__tnedit_settings__", [])
    assert classes, f"tnedit {verb}: options are not generated from a settings class"
    params = {p.name: p for p in command.params}
    checked = 0
    for cls in classes:
        for field in cli_fields(cls):
            if field.name not in params:
                continue  # a verb may take a subset (only=...)
            param = params[field.name]
            default = None if field.required else field.default
            if isinstance(default, list | tuple):
                default = ()
            assert param.default == default or (param.default in ((), None) and default in ((), None)), field.name
            assert param.help == (field.info.help or None), field.name
            assert list(param.opts)[: len(field.flags)] == list(field.flags) or param.is_flag, field.name
            checked += 1
    assert checked >= 3


def test_every_settings_field_has_help_text():
    missing = []
    for _verb, command in _verb_commands():
        for cls in getattr(command.callback, "__tnedit_settings__", []):
            missing += [f"{cls.__name__}.{f.name}" for f in setting_fields(cls) if f.info.cli and not f.info.help]
    assert not missing


def test_settings_classes_are_dataclasses_with_a_default_for_every_field():
    for _verb, command in _verb_commands():
        for cls in getattr(command.callback, "__tnedit_settings__", []):
            assert dataclasses.is_dataclass(cls)
            cls()  # every field has a default, so recipes can build partial settings
