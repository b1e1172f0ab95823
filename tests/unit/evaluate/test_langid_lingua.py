"""evaluate.langid with lingua-language-detector: the choice of detector, the restriction to the languages at
hand, and the comparison with the heuristic on the built-in corpus."""

from __future__ import annotations

import sys

import pytest

from tnedit.errors import InputError
from tnedit.evaluate import langid

lingua = pytest.importorskip("lingua")

CORPUS_LANGUAGES = ("en", "ja", "ko", "zh", "fr", "de", "es", "it", "nl", "ru")


@pytest.fixture
def no_lingua(monkeypatch):
    """lingua absent: its import fails."""
    monkeypatch.setitem(sys.modules, "lingua", None)


def test_auto_takes_lingua_when_installed():
    assert langid.resolve_detector("auto") == "lingua"
    assert langid.resolve_detector("lingua") == "lingua"
    assert langid.resolve_detector("heuristic") == "heuristic"


def test_auto_falls_back_to_the_heuristic(no_lingua):
    assert langid.resolve_detector("auto") == "heuristic"
    share = langid.output_language_share(["今日は晴れです。"], "ja", detector="auto", languages=["en", "ja"])
    assert share["detector"] == langid.HEURISTIC_LABEL


def test_lingua_asked_for_but_absent(no_lingua):
    with pytest.raises(InputError, match=r"--langid lingua: lingua-language-detector is not installed"):
        langid.resolve_detector("lingua")


def test_the_result_names_the_detector():
    from importlib.metadata import version

    texts = ["Il gatto è sul tavolo e non dorme.", "The cat is on the mat."]
    with_lingua = langid.output_language_share(texts, "it", detector="lingua", languages=["en", "it"])
    assert with_lingua["detector"] == f"lingua-language-detector {version('lingua-language-detector')}"
    assert with_lingua["counts"] == {"en": 1, "it": 1} and with_lingua["share"] == 0.5
    heuristic = langid.output_language_share(texts, "it", detector="heuristic", languages=["en", "it"])
    assert heuristic["detector"] == langid.HEURISTIC_LABEL


def test_lingua_answers_only_among_the_languages_at_hand():
    italian = "Il gatto è sul tavolo e non dorme."
    among_all = langid.output_language_share([italian], "en", detector="lingua", languages=["en", "it", "ja"])
    among_two = langid.output_language_share([italian], "en", detector="lingua", languages=["en", "ja"])
    assert among_all["counts"] == {"it": 1}
    assert "it" not in among_two["counts"]


def test_no_letters_is_undecided_with_either_detector():
    for detector in ("lingua", "heuristic"):
        share = langid.output_language_share(["1234 !!", ""], "ja", detector=detector, languages=["en", "ja"])
        assert share["n_decided"] == 0 and share["share"] is None, detector


def test_a_single_language_is_told_apart_from_english():
    share = langid.output_language_share(["Het regent vanochtend weer.", "It rains again this morning."], "nl",
                                         detector="lingua", languages=["nl"])
    assert share["counts"] == {"en": 1, "nl": 1}


def test_a_language_lingua_does_not_know_leaves_the_call_to_the_heuristic():
    share = langid.output_language_share(["今日は晴れです。"], "ja", detector="lingua", languages=["en", "ja", "xx"])
    assert share["detector"] == langid.HEURISTIC_LABEL
    assert share["counts"] == {"ja": 1}


def _accuracy(identify, sentences: list[str], lang: str) -> float:
    """Share of ``sentences`` identified as ``lang``; an undecided sentence counts as wrong."""
    return sum(identify(text) == lang for text in sentences) / len(sentences)


def test_lingua_is_at_least_as_accurate_as_the_heuristic_on_every_corpus_language():
    """The built-in corpus (360 parallel sentences in ten languages): lingua restricted to all ten, the
    demanding setting (the heuristic has no restriction: it knows exactly these ten)."""
    from tnedit.corpus import builtin_corpus

    corpus = builtin_corpus()
    with_lingua = langid.lingua_identifier(CORPUS_LANGUAGES)
    assert with_lingua is not None
    for lang in CORPUS_LANGUAGES:
        sentences = list(corpus.column(lang))
        heuristic = _accuracy(langid.identify_language, sentences, lang)
        assert _accuracy(with_lingua, sentences, lang) >= heuristic, lang
