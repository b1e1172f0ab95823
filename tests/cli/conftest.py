"""Fixtures of the apply, revert and signal cases: one tiny llama (and a sharded copy) per session, copied per
test, and an edit of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.checkpoints import ALL_LAYERS, apply_ok
from tests.support.tiny import load_tiny, make_tiny


@pytest.fixture(scope="session")
def _models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    single = make_tiny("llama", base, subdir="single")
    model, tok = load_tiny(single)
    model.save_pretrained(base / "sharded", max_shard_size="20KB")
    tok.save_pretrained(base / "sharded")
    return {"single": single, "sharded": base / "sharded"}


@pytest.fixture
def model(_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_models["single"], tmp_path / "model"))


@pytest.fixture
def sharded(_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_models["sharded"], tmp_path / "sharded"))


@pytest.fixture
def edited(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "edited"
    apply_ok(capsys, str(model), "--neurons", ALL_LAYERS, "--op", "scale", "--factor", "-2", "-o", str(out))
    return out
