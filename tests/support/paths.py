"""Where things are: the repository root and the shared data next to it (computed once, from this file)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
TATOEBA = SHARED_DATA / "tatoeba"
