"""Are the weight files of an edited checkpoint the ones its ``tnedit.json`` records?

Push refuses to upload, and evaluate to trust, a directory whose weights were changed after apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tnedit.checkpoint.digests import DigestCache, cached_sha256_files
from tnedit.formats.provenance import PROVENANCE_NAME, Provenance


def missing_weights(path: Path, provenance: Provenance) -> str | None:
    """One line naming the weight files ``tnedit.json`` lists that ``path`` lacks; None when none is missing."""
    missing = [name for name in provenance.weights if not (path / name).is_file()]
    if missing:
        return f"{path}: weight file(s) listed in {PROVENANCE_NAME} are missing: {', '.join(missing)}"
    return None


def weights_problem(
    path: Path,
    provenance: Provenance,
    digests: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], Any] | None = None,
    cache: DigestCache | None = None,
) -> str | None:
    """Why the weight files in ``path`` are not the ones ``tnedit.json`` records, in one line; None if they are.

    ``provenance`` must have been read with ``complete=True`` (every weight has a recorded sha256).
    ``digests`` (file -> SHA-256) saves hashing again when the caller has them; otherwise the
    recorded files are hashed, several at a time (``on_bytes`` gets each chunk's byte count), or read
    from ``cache`` where its entries are trusted (none is used when it is None).
    """
    weights = provenance.weights
    missing = missing_weights(path, provenance)
    if missing:
        return missing
    if digests is None:
        paths = [path / name for name in weights]
        found = cached_sha256_files(paths, cache or DigestCache(None), on_bytes)
        digests = dict(zip(weights, found, strict=True))
    for name, record in weights.items():
        recorded = str(record.sha256)
        if digests[name] != recorded:
            return (
                f"{path / name}: SHA-256 differs from {PROVENANCE_NAME} ({digests[name][:12]}… vs "
                f"{recorded[:12]}…); the checkpoint was modified after apply"
            )
    return None
