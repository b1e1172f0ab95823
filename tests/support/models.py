"""Locate the real small models prepared by ``scripts/make_models.py``.

Usage in a test::

    from tests.support.models import real_model_dir

    def test_something():
        path = real_model_dir("gemma3-270m")  # skips unless `make models` ran
        model = AutoModelForCausalLM.from_pretrained(path)

The cache dir is ``$TNEDIT_MODELS`` when set, else ``<repo>/.cache/models``,
matching the script.  A folder counts only once the script has finished it
(it then holds a ``.tnedit-ready`` marker).
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

from tests.support.paths import REPO

REAL_MODELS = ("gemma3-270m", "smollm2-135m")
MARKER = ".tnedit-ready"
ENV_CACHE = "TNEDIT_MODELS"


def models_cache() -> pathlib.Path:
    """The cache dir the script writes to (it may not exist yet)."""
    env = os.environ.get(ENV_CACHE)
    return pathlib.Path(env).expanduser() if env else REPO / ".cache" / "models"


def real_model_dir(name: str) -> pathlib.Path:
    """Path of the converted model ``name``, or skip the calling test if absent."""
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real model {name!r}; expected one of {REAL_MODELS}")
    path = models_cache() / name
    if not (path / MARKER).is_file():
        pytest.skip(f"real model {name!r} not found in {path.parent}: run `make models`")
    return path


def real_model_info(name: str) -> dict:
    """The script's marker for ``name`` (model_type, sizes, layer-0 down_proj key, ...)."""
    return json.loads((real_model_dir(name) / MARKER).read_text())
