"""The one home of content digests: SHA-256 of bytes, of a sequence of texts and of JSON values.

Each recorded digest keeps the encoding it was first written with (``separator``, ``length``), so files
written before this module existed still compare equal. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
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
