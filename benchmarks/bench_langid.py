#!/usr/bin/env python
"""How accurate, and how fast, are the two output-language identifiers on the built-in corpus?

For each of the corpus's ten languages (360 parallel sentences each): the share identified as that
language (an undecided sentence counts as wrong; how many were undecided is in brackets) by
lingua-language-detector restricted to the ten languages, and by tnedit's script and stop-word heuristic;
then the time per sentence of each, measured in the same run. Lingua's one-off cost (building the detector
and loading its language models, which it does lazily on first use) is measured apart and left out of its
time per sentence. Needs ``pip install 'tnedit[langid]'``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tnedit.corpus import load_corpus  # noqa: E402
from tnedit.evaluate.langid import detector_label, identify_language, lingua_identifier  # noqa: E402

Identify = Callable[[str], "str | None"]


def lingua_built_and_warm(languages: tuple[str, ...]) -> tuple[Identify, float]:
    """Lingua restricted to ``languages``, with every language model loaded, and the seconds that took."""
    start = time.perf_counter()
    identify = lingua_identifier(languages)
    if identify is None:
        raise SystemExit("lingua-language-detector is not installed: pip install 'tnedit[langid]'")
    identify("Warm-up: this loads the language models that lingua reads lazily. これは日本語です。")
    return identify, time.perf_counter() - start


def main() -> None:
    corpus = load_corpus(None)
    languages = tuple(corpus.languages)
    sentences = {lang: list(corpus.column(lang)) for lang in languages}
    with_lingua, setup_seconds = lingua_built_and_warm(languages)
    detectors: dict[str, Identify] = {"lingua": with_lingua, "heuristic": identify_language}
    seconds = dict.fromkeys(detectors, 0.0)
    print(f"built-in corpus, {len(corpus)} sentences per language; lingua = {detector_label('lingua')}, "
          f"restricted to the {len(languages)} languages; accuracy (undecided)")
    print(f"{'lang':<6}{'lingua':>14}{'heuristic':>14}")
    for lang in languages:
        cells = []
        for name, identify in detectors.items():
            start = time.perf_counter()
            found = [identify(text) for text in sentences[lang]]
            seconds[name] += time.perf_counter() - start
            right = sum(answer == lang for answer in found) / len(found)
            # The heuristic's "latin" (no stop-word winner) is its undecided for a Latin-script sentence.
            undecided = sum(answer in (None, "latin") for answer in found)
            cells.append(f"{right:.3f} ({undecided:>3})")
        print(f"{lang:<6}" + "".join(f"{cell:>14}" for cell in cells))
    total = sum(len(column) for column in sentences.values())
    print("per sentence: " + ", ".join(f"{name} {1e6 * s / total:.0f} µs" for name, s in seconds.items())
          + f"; lingua's one-off build and model loading {setup_seconds:.2f} s")


if __name__ == "__main__":
    main()
