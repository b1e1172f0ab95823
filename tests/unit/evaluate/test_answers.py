"""evaluate.answers: SQuAD-style QA F1 and exact match, per character for CJK."""

from __future__ import annotations

import pytest

from tnedit.evaluate import answers


def test_qa_f1_em_squad_style():
    assert answers.normalize_answer("The  Eiffel Tower!", "en") == "eiffel tower"
    assert answers.exact_match("the Eiffel tower.", "Eiffel Tower", "en") == 1.0
    # pred tokens {paris, france}, gold {paris}: P = 1/2, R = 1 → F1 = 2/3
    assert answers.token_f1("Paris, France", "Paris", "en") == pytest.approx(2 / 3)
    assert answers.token_f1("London", "Paris", "en") == 0.0
    assert answers.qa_scores("Paris", ["Lyon", "paris"], "en") == (1.0, 1.0)
    assert answers.token_f1("", "", "en") == 1.0
    assert answers.token_f1("", "x", "en") == 0.0


def test_qa_f1_cjk_per_character():
    assert answers.answer_tokens("東京都です。", "ja") == ["東", "京", "都", "で", "す"]
    assert answers.answer_tokens("富士山 3776m", "ja") == ["富", "士", "山", "3776m"]
    # pred 東京都 vs gold 東京: common 2, P = 2/3, R = 1 → F1 = 0.8
    assert answers.token_f1("東京都", "東京", "ja") == pytest.approx(0.8)
    assert answers.exact_match("東京。", "東京", "ja") == 1.0
    assert answers.token_f1("서울입니다", "서울", "ko") == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert answers.token_f1("北京", "北京市", "zh") == pytest.approx(0.8)
    # without per-character splitting the same pair would score 0
    assert answers.token_f1("東京都", "東京", "en") == 0.0
