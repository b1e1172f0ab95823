"""The one home of content digests: SHA-256 of bytes, of a sequence of texts and of JSON values.

Each recorded digest keeps the encoding it was first written with (``separator``, ``length``), so files
written before this module existed still compare equal. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any


def sha256_bytes(data: bytes, length: int | None = None) -> str:
    """Hex SHA-256 of ``data``, cut to ``length`` hex digits when given."""
    return hashlib.sha256(data).hexdigest()[:length]


def sha256_texts(texts: Iterable[str], separator: str = "\n", length: int | None = None,
                 terminated: bool = False) -> str:
    """Hex SHA-256 of UTF-8 ``texts`` joined by ``separator`` (after each one when ``terminated``)."""
    digest = hashlib.sha256()
    first = True
    for text in texts:
        if not first and not terminated:
            digest.update(separator.encode("utf-8"))
        digest.update(text.encode("utf-8"))
        if terminated:
            digest.update(separator.encode("utf-8"))
        first = False
    return digest.hexdigest()[:length]


def sha256_json(value: Any, length: int | None = None, **dumps: Any) -> str:
    """Hex SHA-256 of ``json.dumps(value, **dumps)``."""
    return sha256_bytes(json.dumps(value, **dumps).encode("utf-8"), length)


def sha256_json_lines(header: bytes, rows: Iterable[Any]) -> str:
    """Hex SHA-256 of ``header`` then one ``ensure_ascii=False`` JSON line per row (the corpus digest)."""
    digest = hashlib.sha256(header)
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


LEGACY_FINGERPRINT_PREFIX = "sha256:"
FINGERPRINT_PREFIX = "fp2:"


def fingerprint(
    model_type: str, projections: Sequence[tuple[int, str, Sequence[int]]], content_sha256: str | None = None
) -> str:
    """Hash of the MLP output projections, (layer, name relative to the layer, shape) each, and a content digest.

    Names are relative to the decoder layer so that a CausalLM checkpoint and a loaded base model
    (whose keys differ by a prefix) agree. Without ``content_sha256`` this is the shape-only
    fingerprint of tnedit 0.1 (prefix ``sha256:``), still accepted with a warning.
    """
    text = (
        model_type
        + "\n"
        + "\n".join(f"{layer}:{name}:{'x'.join(str(s) for s in shape)}" for layer, name, shape in sorted(projections))
    )
    if content_sha256 is None:
        return LEGACY_FINGERPRINT_PREFIX + sha256_bytes(text.encode(), 32)
    return FINGERPRINT_PREFIX + sha256_bytes(f"{text}\ncontent:{content_sha256}".encode(), 32)
