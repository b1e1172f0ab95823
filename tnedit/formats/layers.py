"""Layer specifications: ``"0-11"``, ``"0,3,5-7"``, ``"0.0:0.625"`` (fractions of the depth), and back.

Used by identify (candidate layers), apply and evaluate (``--layers``) and recipes. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from tnedit.errors import NeuronSetError


def round_half_up(x: float) -> int:
    """0.5 rounds up (Python's round() would send 2.5 to 2): round(0.625·L) as the paper means it."""
    return int(math.floor(x + 0.5))


def parse_layers(
    spec: str | Sequence[int] | None, num_layers: int | None = None, where: str = "--layers"
) -> list[int] | None:
    """``"0-11"``, ``"0,3,5-7"``, a list of ints, or ``"0.0:0.625"`` (fractions of the depth).

    A fraction range ``a:b`` keeps layers round(a·L) .. round(b·L) − 1 (half rounds up), so
    ``0:0.625`` of 32 layers is 0–19. Fractions need ``num_layers``; with it, every layer is
    range-checked. None stays None.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        layers = sorted({int(x) for x in spec})
    else:
        text = spec.strip()
        if not text:
            raise NeuronSetError(f"{where}: empty layer specification")
        if ":" in text:
            layers = _fraction_layers(text, num_layers, where)
        else:
            found: set[int] = set()
            for item in (p.strip() for p in text.split(",")):
                m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", item, re.ASCII)
                if not m:
                    raise NeuronSetError(f"{where}: '{item}' is not a layer or a range like 0-11 (in '{spec}')")
                lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
                if hi < lo:
                    raise NeuronSetError(f"{where}: range '{item}' runs backwards")
                found.update(range(lo, hi + 1))
            layers = sorted(found)
    if num_layers is not None:
        bad = [x for x in layers if not 0 <= x < num_layers]
        if bad:
            raise NeuronSetError(
                f"{where}: layer {bad[0]} is out of range (the model has layers 0..{num_layers - 1})"
            )
    if not layers:
        raise NeuronSetError(f"{where}: no layers selected")
    return layers


def format_layers(layers: Iterable[int]) -> str:
    """The inverse of :func:`parse_layers`: [0, 1, 2, 5] → '0-2,5'."""
    ordered = sorted(set(layers))
    runs: list[str] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return ",".join(runs)


def _fraction_layers(text: str, num_layers: int | None, where: str) -> list[int]:
    parts = text.split(":")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise NeuronSetError(f"{where}: '{text}' is not a fraction range like 0.0:0.625") from None
    if not 0.0 <= lo < hi <= 1.0:
        raise NeuronSetError(f"{where}: fraction range '{text}' must satisfy 0 <= start < end <= 1")
    if num_layers is None:
        raise NeuronSetError(f"{where}: a fraction range needs the model's layer count")
    layers = list(range(round_half_up(lo * num_layers), round_half_up(hi * num_layers)))
    if not layers:
        raise NeuronSetError(f"{where}: '{text}' selects no layer of a {num_layers}-layer model")
    return layers
