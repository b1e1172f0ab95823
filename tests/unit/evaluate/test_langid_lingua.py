"""evaluate.langid with lingua-language-detector: the choice of detector, the restriction to the languages at
hand, and the comparison with the heuristic on the built-in corpus.

The tests of lingua's absence simulate it (``sys.modules["lingua"] = None``) and run whether or not it is
installed; the others need the ``langid`` extra and are skipped without it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import version

import pytest

from tnedit.errors import InputError
from tnedit.evaluate import langid

needs_lingua = pytest.mark.skipif(importlib.util.find_spec("lingua") is None,
                                  reason="needs lingua-language-detector (pip install 'tnedit[langid]')")

CORPUS_LANGUAGES = ("en", "ja", "ko", "zh", "fr", "de", "es", "it", "nl", "ru")
ITALIAN = "Il gatto è sul tavolo e non dorme."


@pytest.fixture
def no_lingua(monkeypatch):
    """lingua absent: its import fails."""
    monkeypatch.setitem(sys.modules, "lingua", None)


def lingua_label() -> str:
    return f"lingua-language-detector {version('lingua-language-detector')}"


# --- without lingua -------------------------------------------------------------------------------------------


def test_auto_falls_back_to_the_heuristic(no_lingua):
    assert langid.resolve_detector("auto") == "heuristic"
    assert langid.resolve_detector("heuristic") == "heuristic"
    texts = ["今日は晴れです。", "It is sunny today and the sky is blue."]
    for detector in ("auto", "heuristic"):
        share = langid.output_language_share(texts, "ja", detector=detector, languages=["en", "ja"])
        assert share["detector"] == langid.HEURISTIC_LABEL, detector
        assert share["share"] == 0.5 and share["counts"] == {"en": 1, "ja": 1}, detector
    assert langid.output_language_share(texts, "ja")["detector"] == langid.HEURISTIC_LABEL


def test_lingua_asked_for_but_absent(no_lingua):
    expected = "--langid lingua: lingua-language-detector is not installed (pip install 'tnedit[langid]')"
    with pytest.raises(InputError) as raised:
        langid.resolve_detector("lingua")
    assert str(raised.value) == expected
    with pytest.raises(InputError):
        langid.output_language_share(["Hello there."], "en", detector="lingua", languages=["en", "ja"])


def test_an_unknown_detector_is_refused():
    with pytest.raises(InputError, match="--langid must be auto, lingua or heuristic, got 'fasttext'"):
        langid.resolve_detector("fasttext")  # type: ignore[arg-type]


def test_importing_the_module_does_not_import_lingua():
    code = "import sys, tnedit.evaluate.langid; print('lingua' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


# --- with lingua ----------------------------------------------------------------------------------------------


@needs_lingua
def test_auto_takes_lingua_when_installed():
    assert langid.resolve_detector("auto") == "lingua"
    assert langid.resolve_detector("lingua") == "lingua"
    assert langid.resolve_detector("heuristic") == "heuristic"
    assert langid.output_language_share(["今日は晴れです。"], "ja")["detector"] == lingua_label()


@needs_lingua
def test_the_result_names_the_detector():
    texts = [ITALIAN, "The cat is on the mat."]
    with_lingua = langid.output_language_share(texts, "it", detector="lingua", languages=["en", "it"])
    assert with_lingua["detector"] == lingua_label() == langid.detector_label("lingua")
    assert with_lingua["counts"] == {"en": 1, "it": 1} and with_lingua["share"] == 0.5
    assert with_lingua["n"] == 2 and with_lingua["n_decided"] == 2
    heuristic = langid.output_language_share(texts, "it", detector="heuristic", languages=["en", "it"])
    assert heuristic["detector"] == langid.HEURISTIC_LABEL == langid.detector_label("heuristic")


@needs_lingua
def test_lingua_answers_only_among_the_languages_at_hand():
    among_three = langid.output_language_share([ITALIAN], "en", detector="lingua", languages=["en", "it", "ja"])
    among_two = langid.output_language_share([ITALIAN], "en", detector="lingua", languages=["en", "ja"])
    assert among_three["counts"] == {"it": 1}
    assert "it" not in among_two["counts"]
    assert set(among_two["counts"]) <= {"en", "ja", "none"}


@needs_lingua
def test_the_language_asked_about_joins_the_restriction():
    share = langid.output_language_share([ITALIAN], "it", detector="lingua", languages=["en", "ja"])
    assert share["counts"] == {"it": 1} and share["share"] == 1.0


@needs_lingua
def test_no_letters_is_undecided_with_either_detector():
    for detector in ("lingua", "heuristic"):
        share = langid.output_language_share(["1234 !!", ""], "ja", detector=detector, languages=["en", "ja"])
        assert share["n_decided"] == 0 and share["share"] is None, detector
        assert share["counts"] == {"none": 2}, detector


@needs_lingua
def test_lingua_undecided_is_left_out_of_the_share(monkeypatch):
    class Undecided:
        def detect_language_of(self, text: str) -> None:
            return None

    monkeypatch.setattr(langid, "lingua_detector", lambda codes: Undecided())
    share = langid.output_language_share([ITALIAN, "The cat is on the mat."], "it", detector="lingua",
                                         languages=["en", "it"])
    assert share["detector"] == lingua_label()
    assert share["share"] is None and share["n"] == 2 and share["n_decided"] == 0
    assert share["counts"] == {"none": 2}


@needs_lingua
def test_a_single_language_is_told_apart_from_the_others():
    share = langid.output_language_share(["Het regent vanochtend weer.", "It rains again this morning.", ITALIAN],
                                         "nl", detector="lingua", languages=["nl"])
    assert share["counts"] == {"en": 1, "it": 1, "nl": 1}
    alone = langid.output_language_share(["The cat is on the mat.", "今日は晴れです。"], "en", detector="lingua",
                                         languages=["en"])
    assert alone["counts"] == {"en": 1, "ja": 1} and alone["share"] == 0.5


@needs_lingua
def test_detectors_are_built_once_per_set_of_languages():
    assert langid.lingua_languages(["ja", "en"]) == langid.lingua_languages(["en", "ja", "en"]) == ("en", "ja")
    first = langid.lingua_detector(langid.lingua_languages(["ja", "en"]))
    assert langid.lingua_detector(langid.lingua_languages(["en", "ja"])) is first
    assert langid.lingua_detector(langid.lingua_languages(["en", "ko"])) is not first


@needs_lingua
def test_a_language_lingua_does_not_know_leaves_the_call_to_the_heuristic():
    assert langid.lingua_languages(["en", "ja", "xx"]) is None
    assert langid.lingua_identifier(["en", "ja", "xx"]) is None
    share = langid.output_language_share(["今日は晴れです。"], "ja", detector="lingua", languages=["en", "ja", "xx"])
    assert share["detector"] == langid.HEURISTIC_LABEL
    assert share["counts"] == {"ja": 1}


def accuracy(identify, sentences: list[str], lang: str) -> float:
    """Share of ``sentences`` identified as ``lang``; an undecided sentence counts as wrong."""
    return sum(identify(text) == lang for text in sentences) / len(sentences)


@needs_lingua
def test_lingua_is_at_least_as_accurate_as_the_heuristic_on_every_corpus_language():
    """On the built-in corpus (360 parallel rows in ten languages), for each language, lingua's share of its
    sentences identified as that language is at least the heuristic's; undecided counts as wrong for both.

    Lingua is restricted to all ten languages, the demanding setting: an evaluation restricts it to English
    and its targets, fewer rivals than here. The heuristic needs no restriction, it knows exactly these ten.
    """
    from tnedit.corpus import load_corpus

    corpus = load_corpus(None)
    assert tuple(corpus.languages) == CORPUS_LANGUAGES and len(corpus) == 360
    with_lingua = langid.lingua_identifier(CORPUS_LANGUAGES)
    assert with_lingua is not None
    for lang in CORPUS_LANGUAGES:
        sentences = list(corpus.column(lang))
        assert accuracy(with_lingua, sentences, lang) >= accuracy(langid.identify_language, sentences, lang), lang
