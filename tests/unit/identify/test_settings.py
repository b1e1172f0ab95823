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
