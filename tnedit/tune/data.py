"""Tune's sentences: the en–L2 pairs and each kept language's text, split into calibration and validation.

The split is a seeded permutation of each source's rows: the first ``validation`` rows are held out of
the search (identify never sees them either), the next ``calibration`` rows are what the search
measures. English kept as a language reads the English side of the same rows as the target, so the
calibration pairs are parallel. Rows past ``--limit`` are never read, which leaves them for evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tnedit.corpus import ParallelCorpus, load_corpus
from tnedit.errors import CorpusError
from tnedit.identify.settings import SHARED_LANGUAGE
from tnedit.tune.settings import TuneSettings


@dataclass
class TuneData:
    """What tune reads: identify's pairs (validation rows removed) and each language's two splits."""

    target: str
    kept: list[str]
    identify_corpus: ParallelCorpus
    calibration: dict[str, list[str]] = field(default_factory=dict)
    validation: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # language -> the source its sentences came from
    digests: dict[str, str] = field(default_factory=dict)  # source -> content sha256

    def describe(self) -> dict[str, object]:
        return {"sources": dict(self.sources), "sha256": dict(self.digests),
                "calibration": {lang: len(s) for lang, s in self.calibration.items()},
                "validation": {lang: len(s) for lang, s in self.validation.items()},
                "identify_pairs": len(self.identify_corpus)}


def _load_sources(settings: TuneSettings) -> list[ParallelCorpus]:
    specs: Sequence[str | None] = list(settings.data) or [None]
    return [load_corpus(spec, None, limit=settings.limit) for spec in specs]


def _holding(corpora: Sequence[ParallelCorpus], *languages: str) -> ParallelCorpus | None:
    return next((c for c in corpora if all(lang in c.languages for lang in languages)), None)


def _split_rows(n_rows: int, settings: TuneSettings, source: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, calibration rows) of a source, from a permutation seeded by ``settings.seed``."""
    need = settings.validation + settings.calibration
    if n_rows < need:
        raise CorpusError(f"{source}: {n_rows} {what} row(s); --validation {settings.validation} + --calibration "
                          f"{settings.calibration} need {need} (lower them or give more data)")
    order = np.random.default_rng(settings.seed).permutation(n_rows)
    return np.sort(order[: settings.validation]), np.sort(order[settings.validation : need])


def _rows(sentences: Sequence[str], rows: np.ndarray) -> list[str]:
    return [sentences[int(i)] for i in rows]


def load_tune_data(settings: TuneSettings) -> TuneData:
    """The target's pairs and the kept languages' sentences from ``settings.data``, split for the search."""
    corpora = _load_sources(settings)
    target, kept = settings.lang.strip(), settings.kept_languages()
    pairs = _holding(corpora, SHARED_LANGUAGE, target)
    if pairs is None:
        shown = ", ".join(f"{c.source} ({'/'.join(c.languages)})" for c in corpora)
        raise CorpusError(f"--data: no source holds {SHARED_LANGUAGE}–{target} pairs for --lang {target}: {shown}")
    validation_rows, calibration_rows = _split_rows(len(pairs), settings, pairs.source, f"{SHARED_LANGUAGE}–{target}")
    held_out = set(validation_rows.tolist())
    identify_rows = [i for i in range(len(pairs)) if i not in held_out]
    columns = {lang: tuple(pairs.columns[lang][i] for i in identify_rows) for lang in (SHARED_LANGUAGE, target)}
    data = TuneData(target, kept, ParallelCorpus(pairs.source, (SHARED_LANGUAGE, target), columns))
    for lang in [target, *kept]:
        source = pairs if lang in pairs.languages else _holding(corpora, lang)
        if source is None:
            raise CorpusError(f"--keep {lang}: no sentences in --data ({', '.join(c.source for c in corpora)}); "
                              f"add a file with a '{lang}' column")
        rows = (validation_rows, calibration_rows) if source is pairs else \
            _split_rows(len(source), settings, source.source, f"'{lang}'")
        data.validation[lang] = _rows(source.columns[lang], rows[0])
        data.calibration[lang] = _rows(source.columns[lang], rows[1])
        data.sources[lang] = source.source
        data.digests[source.source] = source.sha256
    return data
