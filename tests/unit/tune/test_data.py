"""Tune's data split: disjoint, seeded, parallel for English, and nothing past --limit or in validation leaks."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tnedit.corpus import builtin_corpus
from tnedit.errors import CorpusError
from tnedit.tune.data import load_tune_data
from tnedit.tune.settings import TuneSettings

BASE = TuneSettings(model="m", lang="ja", keep=["en", "ko"], calibration=20, validation=30, output="out")


def test_splits_are_disjoint_sized_and_parallel():
    data = load_tune_data(BASE)
    pairs = dict(builtin_corpus().pairs("ja", "en"))
    for split, size in (("calibration", 20), ("validation", 30)):
        sentences = getattr(data, split)
        assert {lang: len(s) for lang, s in sentences.items()} == {"ja": size, "en": size, "ko": size}
        assert [pairs[ja] for ja in sentences["ja"]] == sentences["en"]  # English is the target's own pairs
    assert not set(data.calibration["ja"]) & set(data.validation["ja"])
    assert not set(data.validation["ja"]) & set(data.identify_corpus.column("ja"))
    assert set(data.calibration["ja"]) <= set(data.identify_corpus.column("ja"))
    assert len(data.identify_corpus) == len(builtin_corpus()) - 30


def test_the_split_follows_the_seed():
    first, again = load_tune_data(BASE), load_tune_data(BASE)
    other = load_tune_data(replace(BASE, seed=7))
    assert first.calibration == again.calibration and first.validation == again.validation
    assert first.calibration["ja"] != other.calibration["ja"]


def test_limit_keeps_later_rows_unread():
    data = load_tune_data(replace(BASE, limit=100))
    later = set(builtin_corpus().column("ja")[100:])
    seen = set(data.identify_corpus.column("ja")) | set(data.validation["ja"])
    assert not seen & later and len(seen) == 100


def test_a_kept_language_from_another_file(tmp_path):
    corpus = builtin_corpus()
    ja, nl = tmp_path / "en-ja.tsv", tmp_path / "en-nl.tsv"
    ja.write_text("en\tja\n" + "".join(f"{a}\t{b}\n" for a, b in corpus.pairs("en", "ja")), encoding="utf-8")
    nl.write_text("en\tnl\n" + "".join(f"{a}\t{b}\n" for a, b in corpus.pairs("en", "nl")), encoding="utf-8")
    data = load_tune_data(replace(BASE, keep=["en", "nl"], data=[str(ja), str(nl)]))
    assert data.sources == {"ja": str(ja), "en": str(ja), "nl": str(nl)}
    assert len(data.calibration["nl"]) == 20
    with pytest.raises(CorpusError, match="--keep nl"):
        load_tune_data(replace(BASE, keep=["en", "nl"], data=[str(ja)]))
