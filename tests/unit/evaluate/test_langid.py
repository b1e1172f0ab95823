"""evaluate.langid: the script-based language identification of generated text."""

from __future__ import annotations

import pytest

from tnedit.evaluate import langid


def test_script_language_id():
    cases = {
        "私は学生です。": "ja",
        "カタカナ": "ja",
        "我是学生。": "zh",
        "저는 학생입니다.": "ko",
        "Я студент.": "ru",
        "The cat is on the mat and it is happy.": "en",
        "Le chat est sur la table et il dort.": "fr",
        "Die Katze ist nicht auf dem Tisch.": "de",
        "El gato está en la mesa y no duerme.": "es",
        "Il gatto è sul tavolo e non dorme.": "it",
        "De kat is niet op de tafel, het slaapt.": "nl",
        "1234 !!": None,
        "xyzzy": "latin",
        "مرحبا": "other",
    }
    for text, lang in cases.items():
        assert langid.identify_language(text) == lang, text
    counts = langid.script_counts("東京はTokyo")
    assert counts["han"] == 2 and counts["kana"] == 1 and counts["latin"] == 5
    assert langid.stays_in_language("ja", "ja") is True
    assert langid.stays_in_language("latin", "ja") is False
    assert langid.stays_in_language("latin", "en") is None
    assert langid.stays_in_language(None, "ja") is None
    texts = ["今日は晴れです。", "It is sunny today and the sky is blue.", "123", "明日も。"]
    share = langid.output_language_share(texts, "ja")
    assert share["share"] == pytest.approx(2 / 3)
    assert share["n"] == 4 and share["n_decided"] == 3
    assert share["counts"] == {"en": 1, "ja": 2, "none": 1}
