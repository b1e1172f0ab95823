"""Checkpoint-directory helpers that several test files share: digests, tnedit's temporaries, a quiet apply."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.hostile import run_cli

DOWN0 = "model.layers.0.mlp.down_proj.weight"  # layer 0's output projection in a tiny llama
ALL_LAYERS = "0:3,1:5,2:7,3:9"  # one neuron in each layer of a tiny model


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temporaries(out: Path) -> list[Path]:
    """tnedit's temporary siblings of the output ``out`` (``.NAME.tnedit-tmp-PID``, ``.NAME.tnedit-old-PID``)."""
    return sorted(out.parent.glob(f".{out.name}.tnedit-*"))


def apply_ok(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``tnedit apply ARGS --quiet``, which must succeed; its stderr."""
    code, _, err = run_cli(["apply", *args, "--quiet"], capsys)
    assert code == 0, err
    return err
