"""The identify plan: the settings resolved once (types, languages, corpus, model, lengths, candidate layers).

The checks run in the order a user meets them: options first, then the data (before the model is
loaded, so a bad ``--data`` or ``--lang`` costs no model load), then what needs the model (its context
length, its layer count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tnedit.corpus import check_tokenizable, load_corpus
from tnedit.errors import InputError
from tnedit.formats.outputs import check_output_file
from tnedit.identify.outputs import check_output_directory
from tnedit.identify.settings import SHARED_LANGUAGE, IdentifySettings, candidate_layers, parse_types
from tnedit.model.loading import LoadedModel, load_model, resolve_max_length


class Corpus(Protocol):
    """What identify and LAPE read of a parallel corpus (:class:`tnedit.corpus.ParallelCorpus` is one)."""

    source: str
    sha256: str
    languages: Sequence[str]

    def column(self, lang: str) -> list[str]: ...

    def pairs(self, a: str, b: str) -> list[tuple[str, str]]: ...


@dataclass
class IdentifyPlan:
    """One identify run, resolved: what to measure, on which model and data, and what to write."""

    settings: IdentifySettings
    types: list[int]
    languages: list[str]
    corpus: Corpus
    lm: LoadedModel
    max_length: int
    candidate_layers: dict[int, list[int]]  # the requested types' candidates
    file_layers: dict[int, list[int]]  # both types' candidates, recorded in the scores files
    out_dir: Path | None

    def output_names(self, language: str) -> list[str]:
        return [f"scores-{language}.safetensors"] + [f"neurons-{language}-type{t}.json" for t in self.types]


def load_identify_corpus(settings: IdentifySettings, languages: Sequence[str]) -> Corpus:
    """The parallel corpus with English plus ``languages`` (via :mod:`tnedit.corpus`)."""
    columns = [SHARED_LANGUAGE] + [lang for lang in languages if lang != SHARED_LANGUAGE]
    return load_corpus(settings.data, columns, limit=settings.limit)


def default_languages(settings: IdentifySettings) -> list[str]:
    """Every non-English language of the data (used when no --lang is given)."""
    corpus = load_corpus(settings.data, None, limit=settings.limit)
    return [lang for lang in corpus.languages if lang != SHARED_LANGUAGE]


def target_languages(settings: IdentifySettings, corpus: Corpus | None) -> tuple[list[str], Corpus]:
    """(target languages, corpus): --lang, else every non-English language of the data."""
    languages = settings.languages()
    if SHARED_LANGUAGE in languages:
        raise InputError(f"--lang: '{SHARED_LANGUAGE}' is the shared language; give the target languages (e.g. ja,ko)")
    if corpus is None:
        if not languages:
            languages = default_languages(settings)
        corpus = load_identify_corpus(settings, languages)
    if not languages:
        languages = [x for x in corpus.languages if x != SHARED_LANGUAGE]
    if not languages:
        raise InputError("no target language: pass --lang (e.g. --lang ja)")
    return languages, corpus


def resolve_plan(settings: IdentifySettings, *, lm: LoadedModel | None = None,
                 corpus: Corpus | None = None) -> IdentifyPlan:
    """Check ``settings``, load the data and the model (unless given) and resolve what they leave open."""
    settings.check()
    types = parse_types(settings.type)
    from_data = corpus is None
    languages, corpus = target_languages(settings, corpus)
    if lm is None:
        lm = load_model(settings.model, revision=settings.revision, dtype=settings.dtype,
                        device=settings.device, device_map=settings.device_map)
    if from_data:
        check_tokenizable(corpus, lm.tokenizer, [SHARED_LANGUAGE, *languages])
    out_dir = Path(settings.output) if settings.output is not None else None
    if out_dir is not None and lm.path is not None:
        check_output_directory(out_dir, lm.path)  # a Hub model's snapshot directory, known only now
    max_length = resolve_max_length(lm, settings.max_length)
    plan = IdentifyPlan(settings, types, languages, corpus, lm, max_length, {}, {}, out_dir)
    if out_dir is not None and settings.data is not None:
        for language in languages:
            for name in plan.output_names(language):
                check_output_file(out_dir / name, overwrite=True, inputs=[settings.data])
    plan.candidate_layers = candidate_layers(types, lm.num_layers, settings.layers)
    plan.file_layers = candidate_layers([1, 2], lm.num_layers, settings.layers)
    return plan
