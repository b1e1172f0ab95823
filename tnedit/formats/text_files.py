"""Reading the data files users hand in (corpora, QA sets): UTF-8 (BOM allowed), optionally gzipped.

One reader for both, so they refuse the same inputs with the same messages. Torch-free.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

from tnedit.errors import InputError


def read_text_file(path: Path, shown: str, error: type[InputError] = InputError) -> str:
    """The text of ``path`` (``.gz`` decompressed); ``shown`` names it in the one-line ``error``."""
    if not path.exists():
        raise error(f"{shown}: no such file")
    if not path.is_file():
        raise error(f"{shown}: not a file")
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{shown}: not UTF-8 text (byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise error(f"{shown}: cannot read ({exc})") from None


def numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line; only ``\\n``/``\\r\\n`` end a line."""
    for number, line in enumerate(io.StringIO(text, newline="\n"), 1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line
