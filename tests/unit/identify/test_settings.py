"""identify.settings and formats.layers.parse_layers: layer ranges, types and languages as typed."""

from __future__ import annotations

import pytest

from tnedit.errors import InputError
from tnedit.formats.layers import parse_layers
from tnedit.identify.settings import default_layers, parse_languages, parse_types


def test_parse_layers():
    assert parse_layers("0-11", 32) == list(range(12))
    assert parse_layers("0,3,5-7", 32) == [0, 3, 5, 6, 7]
    assert parse_layers("0.0:0.625", 32) == list(range(20))
    assert parse_layers("0.625:1", 32) == list(range(20, 32))
    assert parse_layers(None, 32) is None
    assert default_layers(1, 32) == list(range(20)) and default_layers(2, 32) == list(range(20, 32))
    assert default_layers(1, 18) == list(range(11))
    for bad, msg in [("0-40", "out of range"), ("a", "not a layer"), ("5-2", "backwards"), ("0.7:0.2", "fraction"),
                     ("", "empty")]:
        with pytest.raises(InputError, match=msg):
            parse_layers(bad, 32)
    assert parse_types("both") == [1, 2] and parse_types(2) == [2]
    with pytest.raises(InputError, match="--type"):
        parse_types("3")
    assert parse_languages(["ja,ko", "it", "ja"]) == ["ja", "ko", "it"]


# --- --centroids ---------------------------------------------------------------------------------


def test_centroids_default_and_choices():
    from tnedit.formats.neurons import CENTROID_SOURCES
    from tnedit.identify.settings import IdentifySettings
    from tnedit.settings import setting_fields

    field = next(f for f in setting_fields(IdentifySettings) if f.name == "centroids")
    assert IdentifySettings().centroids == "layer-outputs" == field.default
    assert field.choices == CENTROID_SOURCES == ("layer-outputs", "hidden-states")  # the file format's values
    assert field.flags == ("--centroids",) and field.info.recipe and field.info.cli


def test_centroids_option_parses_both_values():
    from tnedit.cli.identify import identify_command

    for value in ("layer-outputs", "hidden-states"):
        ctx = identify_command.make_context("identify", ["m", "--centroids", value])
        assert ctx.params["centroids"] == value
    assert identify_command.make_context("identify", ["m"]).params["centroids"] == "layer-outputs"


def test_lape_refuses_hidden_state_centroids():
    from tnedit.identify.settings import IdentifySettings, LapeSettings, lape_settings

    refused = IdentifySettings(model="m", langs=["en", "ja"], method="lape", centroids="hidden-states")
    with pytest.raises(InputError, match=r"^--centroids hidden-states: --method lape has no centroids") as caught:
        refused.check()
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="--method lape has no centroids"):
        lape_settings(refused)  # the CLI's and the recipe runner's way to LAPE
    plain = IdentifySettings(model="m", langs=["en", "ja"], method="lape")
    assert isinstance(lape_settings(plain), LapeSettings)
    transfer = IdentifySettings(model="m", langs=["ja"], centroids="hidden-states")
    transfer.check()  # the transfer method takes either source


def test_centroids_recipe_key(tmp_path):
    from tnedit.identify.settings import IdentifySettings, lape_settings
    from tnedit.recipes import load_recipe

    minimal = "model: {name: some/model}\nlanguages: [ja]\nedits:\n  - {name: e1, neurons: \"ja:1\", op: zero}\n"
    path = tmp_path / "r.yaml"
    path.write_text(minimal + "identify: {centroids: hidden-states}\n", encoding="utf-8")
    recipe = load_recipe(path)
    assert isinstance(recipe.identify, IdentifySettings) and recipe.identify.centroids == "hidden-states"
    assert load_recipe(path, ["identify.centroids=layer-outputs"]).identify.centroids == "layer-outputs"
    path.write_text(minimal, encoding="utf-8")
    assert load_recipe(path).identify.centroids == "layer-outputs"
    path.write_text(minimal + "identify: {centroids: raw}\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"identify\.centroids.*layer-outputs or hidden-states"):
        load_recipe(path)
    path.write_text(minimal.replace('"ja:1"', '"ja:lape"') + "identify: {method: lape, centroids: hidden-states}\n",
                    encoding="utf-8")
    with pytest.raises(InputError, match="--method lape has no centroids"):
        lape_settings(load_recipe(path).identify)
